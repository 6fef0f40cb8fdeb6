"""gptq/awq: a pre-quantized checkpoint (random packed integers in the library's layout) loads
through GPT-QModel's layers, LoRA wraps them, only adapters train, quantized bytes never move."""

from __future__ import annotations

import json

import pytest
import torch

from tunerkit.errors import UserError

from .modelside_helpers import sample_ids

pytest.importorskip("gptqmodel")
pytest.importorskip("optimum")

ROWS = {
    "gptq4": ("gptq", {"bits": 4, "group_size": 32}),
    "gptq8": ("gptq", {"bits": 8, "group_size": 32}),
    "awq4": ("awq", {"bits": 4, "group_size": 32}),
}


@pytest.fixture
def quant_row(tiny_row):
    def build(key, **overrides):
        plugin, options = ROWS[key]
        return tiny_row("lora", plugin, lora={"targets": "ALL"}, **{plugin: options}, **overrides)

    return build


def quantized_modules(model):
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, BaseQuantLinear)}


@pytest.mark.parametrize("key", ["gptq4", "gptq8", "awq4"])
def test_checkpoint_is_the_libraries_format_and_every_linear_but_the_head_is_quantized(key, quant_row, tiny_context):
    from tunerkit.models.loading import cache_dir

    ctx = tiny_context(quant_row(key))
    model = ctx.unwrapped_model()
    quantized = quantized_modules(model)
    # 4 layers x 7 projections, each wrapped by LoRA ('<linear>.base_layer')
    assert len(quantized) == 28 and all(n.endswith(".base_layer") for n in quantized)
    assert all(m.qweight.dtype == torch.int32 for m in quantized.values())
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    written = cache_dir() / "models" / f"preset-tiny-llama-{key}g32-float32"
    config = json.loads((written / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == ROWS[key][0] and config["bits"] == ROWS[key][1]["bits"]


@pytest.mark.parametrize("key", ["gptq4", "gptq8", "awq4"])
def test_parameter_counts_are_the_models_weights_not_its_packed_storage(key, quant_row, tiny_context):
    # GPT-QModel keeps packed integers, scales and zeros as buffers: counting tensors read
    # qwen-7b's GPTQ model as 1.25 B parameters (trainable % six times too high)
    from transformers import AutoModelForCausalLM

    from tunerkit.metrics import count_parameters
    from tunerkit.models.presets import get_preset

    ctx = tiny_context(quant_row(key))
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(get_preset("tiny-llama").config())
    counts = count_parameters(ctx.model)
    adapters = sum(p.numel() for n, p in ctx.model.named_parameters() if "lora_" in n)
    assert counts["trainable_params"] == adapters > 0
    assert counts["total_params"] == sum(p.numel() for p in plain.parameters()) + adapters


@pytest.mark.parametrize("key", ["gptq4", "awq4"])
def test_row_trains_adapters_only_and_quantized_bytes_never_change(key, quant_row, tiny_context):
    ctx = tiny_context(quant_row(key))
    model = ctx.model
    quantized = {n: {k: v.detach().clone() for k, v in m.state_dict().items()}
                 for n, m in quantized_modules(model).items()}
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
    for n, m in quantized_modules(model).items():
        for k, v in m.state_dict().items():
            assert torch.equal(v, quantized[n][k]), (n, k)


def test_row_runs_through_the_loop_and_saves_a_peft_adapter(quant_row, run_tiny, tmp_path):
    m = run_tiny(quant_row("gptq4", max_steps=2, save=True))
    assert m["quantized_bits"] == 4 and m["quantized_linears"] == 28 and m["random_weights"] == 1
    assert m["train_loss"] > 0 and 0 < m["trainable_pct"] < 50
    saved = list(tmp_path.rglob("adapter_config.json"))
    assert saved and json.loads(saved[0].read_text())["peft_type"] == "LORA"


@pytest.mark.parametrize("plugins, expect", [
    (["gptq"], "needs one of lora"),
    (["full", "gptq"], "cannot run with 'full'"),
])
def test_combinations_without_an_adapter_are_refused(tiny_row, plugins, expect):
    with pytest.raises(UserError, match=expect):
        tiny_row(*plugins)


def test_options_are_checked(tiny_row):
    with pytest.raises(UserError, match="bits must be 4 or 8"):
        tiny_row("lora", "gptq", gptq={"bits": 3})
    with pytest.raises(UserError, match="bits must be 4"):
        tiny_row("lora", "awq", awq={"bits": 8})
