"""bnb: base linears quantized to 4 bits on load, the head kept, only adapters train, quantized bytes never move."""

from __future__ import annotations

import pytest
import torch

from tunerkit.errors import UserError

from .modelside_helpers import fresh_base, logits, sample_ids

bnb = pytest.importorskip("bitsandbytes")


def test_every_linear_but_the_head_is_4bit_nf4_and_lora_wraps_them(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", "bnb", lora={"targets": "ALL"}))
    model = ctx.unwrapped_model()
    base = fresh_base()
    plain = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    quantized = {n.removeprefix("base_model.model."): m for n, m in model.named_modules()
                 if isinstance(m, bnb.nn.Linear4bit)}
    # PEFT names the wrapped quantized layer '<linear>.base_layer'.
    assert sorted(n.removesuffix(".base_layer") for n in quantized) == sorted(plain)
    assert all(m.weight.quant_state.quant_type == "nf4" for m in quantized.values())
    assert all(m.weight.dtype == torch.uint8 for m in quantized.values())  # two 4-bit weights a byte
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear


def test_quantized_model_keeps_the_original_counts_and_shrinks_the_weights(tiny_row, tiny_context):
    from tunerkit.metrics import count_parameters

    ctx = tiny_context(tiny_row("lora", "bnb", lora={"targets": "ALL"}))
    base = fresh_base()
    base_total = sum(p.numel() for p in base.parameters())
    counts = count_parameters(ctx.model)
    lora = sum(p.numel() for n, p in ctx.model.named_parameters() if "lora_" in n)
    assert counts["trainable_params"] == lora > 0
    assert counts["total_params"] == base_total + lora  # packed 4-bit storage counted as the weights it holds
    # The decoder's linear weights: fp32 in the original, one byte per two weights here
    # (plus the block scales): about an eighth. (Embeddings and head stay as they were.)
    plain = sum(m.weight.numel() * m.weight.element_size() for n, m in base.named_modules()
                if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    packed = sum(m.weight.numel() * m.weight.element_size() for m in ctx.model.modules()
                 if isinstance(m, bnb.nn.Linear4bit))
    assert packed == plain // 8
    assert ctx.unwrapped_model().get_memory_footprint() < base.get_memory_footprint()


def test_outputs_stay_close_to_the_full_precision_model(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", "bnb"))
    ids = sample_ids()
    want = logits(fresh_base(), ids)
    got = logits(ctx.model, ids)
    rel = ((got - want).norm() / want.norm()).item()
    # NF4 with 64-weight blocks on Gaussian weights: a few percent of error per matmul, never a broken model.
    assert 0 < rel < 0.3


def test_row_trains_adapters_only_and_quantized_bytes_never_change(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", "bnb", lora={"targets": "ALL"}))
    model = ctx.model
    quantized = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    start = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    ids = sample_ids()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is not None for p in trainable.values())
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        opt.step()
        opt.zero_grad()
    assert all(not torch.equal(p, start[n]) for n, p in trainable.items())
    for n, m in model.named_modules():
        if n in quantized:
            assert torch.equal(m.weight, quantized[n]), n


def test_bnb_row_runs_through_the_loop(tiny_row, run_tiny):
    m = run_tiny(tiny_row("lora", "bnb", max_steps=2))
    assert m["quantized_bits"] == 4 and m["quantized_linears"] > 0
    assert m["weights_gib"] > 0 and m["train_loss"] > 0
    assert m["trainable_params"] > 0 and m["trainable_pct"] < 10


@pytest.mark.parametrize("plugins, expect", [
    (["bnb"], "needs one of lora"),
    (["full", "bnb"], "cannot run with 'full'"),
])
def test_combinations_without_an_adapter_are_refused(tiny_row, plugins, expect):
    with pytest.raises(UserError, match=expect):
        tiny_row(*plugins)


def test_options_are_checked(tiny_row):
    with pytest.raises(UserError, match="bits must be 4 or 8"):
        tiny_row("lora", "bnb", bnb={"bits": 3})


def _quantized_layers(model):
    return {n.removeprefix("base_model.model.").removesuffix(".base_layer"): m for n, m in model.named_modules()
            if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}


def test_in_memory_preset_has_the_layers_and_storage_of_transformers_quantizer(tiny_row, tiny_context, monkeypatch):
    from tunerkit.models import loading

    ctx_disk = tiny_context(tiny_row("lora", "bnb", lora={"targets": "ALL"}, bnb={"preset_weights": "checkpoint"}))

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("the in-memory path wrote or read a bf16 checkpoint")

    monkeypatch.setattr(loading, "preset_checkpoint", no_checkpoint)
    ctx_mem = tiny_context(tiny_row("lora", "bnb", lora={"targets": "ALL"}, bnb={"preset_weights": "in_memory"}))
    disk, mem = _quantized_layers(ctx_disk.unwrapped_model()), _quantized_layers(ctx_mem.unwrapped_model())
    assert sorted(disk) == sorted(mem) and disk
    for name, layer in mem.items():
        ref = disk[name]
        assert layer.weight.dtype == ref.weight.dtype == torch.uint8
        assert layer.weight.shape == ref.weight.shape
        assert layer.weight.quant_state.quant_type == ref.weight.quant_state.quant_type == "nf4"
        assert (layer.weight.quant_state.nested is True) == (ref.weight.quant_state.nested is True)
    assert type(ctx_mem.unwrapped_model().get_output_embeddings()) is torch.nn.Linear
    assert getattr(ctx_mem.unwrapped_model(), "is_loaded_in_4bit", False)
    mem_bytes = ctx_mem.unwrapped_model().get_memory_footprint()
    assert mem_bytes == ctx_disk.unwrapped_model().get_memory_footprint()


def test_in_memory_preset_trains_adapters_only_and_keeps_its_quantized_bytes(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", "bnb", lora={"targets": "ALL"}, bnb={"preset_weights": "in_memory"}))
    model = ctx.model
    frozen = {n: m.weight.detach().clone() for n, m in _quantized_layers(model).items()}
    trainable = [p for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    ids = sample_ids()
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert all(torch.equal(m.weight, frozen[n]) for n, m in _quantized_layers(model).items())


def test_auto_draws_in_memory_when_the_bf16_checkpoint_would_not_fit(tiny_row, run_tiny, monkeypatch):
    import shutil
    from collections import namedtuple

    from tunerkit.models import loading

    monkeypatch.setattr(loading, "preset_checkpoint_exists", lambda preset, dtype: False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))
    m = run_tiny(tiny_row("lora", "bnb", max_steps=1))
    assert m["bnb_preset_weights"] == "in_memory" and m["quantized_linears"] > 0


@pytest.mark.parametrize("bits, stored", [(4, torch.uint8), (8, torch.int8)])
def test_each_in_memory_layer_leaves_bitsandbytes_quantized(bits, stored):
    # Int8Params quantizes only on a move from the CPU; the helper must end with packed integers either way.
    from types import SimpleNamespace

    from tunerkit_plugins.quant.random_bnb import _quantize_in_place

    options = SimpleNamespace(bits=bits, double_quant=True, quant_type="nf4")
    if bits == 8:
        layer = bnb.nn.Linear8bitLt(64, 32, bias=True, has_fp16_weights=False, threshold=6.0, device="meta")
    else:
        layer = bnb.nn.Linear4bit(64, 32, bias=True, compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
    _quantize_in_place(layer, options, torch.bfloat16, torch.device("cpu"))
    assert layer.weight.dtype == stored and not layer.weight.requires_grad
    assert layer.bias.shape == (32,) and not layer.bias.is_meta


def quantized_bytes(model) -> int:
    """Every base tensor's bytes: plain parameters, and each 4-bit layer's packed weight with
    its quantization state (block scales, and their own scales when double-quantized)."""
    total = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)
    for m in model.modules():
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        while state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            state = getattr(state, "state2", None)
    return total


def test_the_estimate_counts_the_quantized_base_as_loaded(tiny_row, tiny_context):
    # embeddings and head stay in the row's dtype (prepare_model_for_kbit_training makes them
    # fp32): the estimate once counted them at 4 bits, 22 % under the qwen-7b row on one H100
    from tunerkit.estimate import estimate_row

    for dtype, prepare in (("fp32", True), ("bf16", True), ("bf16", False)):
        row = tiny_row("lora", "bnb", bnb={"prepare": prepare}, dtype=dtype)
        ctx = tiny_context(row)
        predicted = estimate_row(row, tflops=1.0, gpu=False)["parts_gib"]["weights"] * 2 ** 30
        assert predicted == pytest.approx(quantized_bytes(ctx.unwrapped_model()), rel=0.05), (dtype, prepare)
