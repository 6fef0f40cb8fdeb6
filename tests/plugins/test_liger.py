"""liger: refused where its Triton kernels cannot run; the patch is applied and undone per row."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch

from tunerkit.errors import RowFailed, UserError
from tunerkit.recipe import make_row
from tunerkit.validation import validate_row
from tunerkit_plugins.speed.liger import Liger, LigerOptions

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@no_cuda
def test_validate_rejects_liger_without_cuda(tiny_row):
    row = tiny_row("lora", "liger")
    reason = Liger().validate(row)
    assert "CUDA" in reason and "\n" not in reason
    with pytest.raises(UserError, match="liger's Triton kernels need a CUDA GPU") as err:
        validate_row(row, file="recipe.toml")
    assert "\n" not in str(err.value)


@no_cuda
def test_liger_row_on_cpu_fails_with_its_reason(tiny_row, run_tiny):
    with pytest.raises(RowFailed, match="CUDA"):
        run_tiny(tiny_row("lora", "liger", evaluate=[]))


def test_options_default_to_every_kernel():
    o = LigerOptions()
    assert (o.rope, o.rms_norm, o.swiglu, o.fused_linear_cross_entropy) == (True, True, True, True)


@pytest.fixture
def fake_liger(monkeypatch):
    """A stand-in liger-kernel that rebinds a module-level name like the real one does."""
    from transformers.models.llama import modeling_llama

    calls = []

    def apply_liger_kernel_to_llama(rope=True, cross_entropy=False, fused_linear_cross_entropy=True,
                                    rms_norm=True, swiglu=True, model=None):
        calls.append(dict(rope=rope, cross_entropy=cross_entropy, rms_norm=rms_norm, swiglu=swiglu,
                          fused_linear_cross_entropy=fused_linear_cross_entropy, model=model))
        modeling_llama.apply_rotary_pos_emb = "liger rope"

    root = types.ModuleType("liger_kernel")
    root.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None)
    sub = types.ModuleType("liger_kernel.transformers")
    sub.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama
    root.transformers = sub
    monkeypatch.setitem(sys.modules, "liger_kernel", root)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", sub)
    return calls


def test_modify_model_patches_the_instance_and_teardown_restores(fake_liger, tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    from tunerkit.loop import build_context
    from tunerkit.models.presets import PRESETS

    original_rope = modeling_llama.apply_rotary_pos_emb
    row = make_row("r", ["lora", "liger"], model="tiny-llama", liger={"swiglu": False})
    ctx = build_context(row, tmp_path)
    ctx.device = torch.device("cuda")  # the glue only reads the device; nothing runs
    ctx.model = AutoModelForCausalLM.from_config(PRESETS["tiny-llama"].config())
    ctx.hook.modify_model(ctx=ctx)
    (call,) = fake_liger
    assert call["model"] is ctx.model
    assert (call["rope"], call["rms_norm"], call["swiglu"], call["fused_linear_cross_entropy"]) == (True, True, False, True)
    assert call["cross_entropy"] is False  # fused linear CE replaces it
    assert modeling_llama.apply_rotary_pos_emb == "liger rope"
    assert not ctx.close()
    assert modeling_llama.apply_rotary_pos_emb is original_rope


def test_unsupported_architecture_is_refused(fake_liger, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunerkit.loop import build_context
    from tunerkit.models.presets import PRESETS

    row = make_row("r", ["lora", "liger"], model="tiny-qwen2")  # the fake only knows llama
    ctx = build_context(row, tmp_path)
    ctx.device = torch.device("cuda")
    ctx.model = AutoModelForCausalLM.from_config(PRESETS["tiny-qwen2"].config())
    with pytest.raises(RowFailed, match="no kernels for model type 'qwen2'"):
        ctx.hook.modify_model(ctx=ctx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger's kernels run on CUDA only")
def test_liger_loss_matches_plain_and_honours_num_items_in_batch(tmp_path):
    """On a GPU: the fused loss equals transformers' loss, token-summed and divided by num_items_in_batch."""
    pytest.importorskip("liger_kernel")
    from transformers import AutoModelForCausalLM

    from tunerkit.loop import build_context
    from tunerkit.models.presets import PRESETS

    torch.manual_seed(0)
    device = torch.device("cuda")
    plain = AutoModelForCausalLM.from_config(PRESETS["tiny-qwen2"].config()).to(device).train()
    patched = AutoModelForCausalLM.from_config(PRESETS["tiny-qwen2"].config()).to(device).train()
    patched.load_state_dict(plain.state_dict())
    ctx = build_context(make_row("r", ["lora", "liger"], model="tiny-qwen2"), tmp_path)
    ctx.device, ctx.model = device, patched
    try:
        ctx.hook.modify_model(ctx=ctx)
        ids = torch.randint(10, 1000, (2, 64), device=device)
        labels = ids.clone()
        labels[:, :8] = -100
        n = int((labels[:, 1:] != -100).sum())
        for items in (n, 2 * n):
            items_t = torch.tensor(items, device=device)
            want = plain(input_ids=ids, labels=labels, num_items_in_batch=items_t).loss
            got = patched(input_ids=ids, labels=labels, num_items_in_batch=items_t).loss
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    finally:
        assert not ctx.close()


def test_liger_in_layer_kernels_with_compile_are_refused_with_the_measured_reason(tmp_path):
    # Refused while the recipe is checked, before the machine-dependent checks: on CPU and GPU alike.
    row = make_row("r", ["lora", "liger", "compile"], model="tiny-qwen2", liger={"rope": False})
    with pytest.raises(UserError, match=r"in-layer kernels \(rms_norm, swiglu\) do not trace under torch.compile") as err:
        validate_row(row, file=str(tmp_path / "r.toml"))
    message = str(err.value)
    assert "\n" not in message and "liger = { rope = false, rms_norm = false, swiglu = false }" in message


def test_liger_fused_cross_entropy_alone_may_run_with_compile():
    # The fused loss runs in the causal-LM forward, outside the compiled decoder layers.
    flce_only = Liger(LigerOptions(rope=False, rms_norm=False, swiglu=False))
    row = make_row("r", ["lora", "liger", "compile"], model="tiny-qwen2")
    reason = flce_only.validate(row=row)
    assert reason is None or "torch.compile" not in reason  # on a CPU: the no-GPU reason, not the compile one
    assert flce_only.kernels() == ["fused_linear_cross_entropy"]


def loss_entry(chunk_param=True):
    """A stand-in for liger's functional fused linear cross-entropy: records what it was called with."""
    seen = []
    if chunk_param:
        def liger_fused_linear_cross_entropy(input, weight, target, reduction="mean", chunk_mem_const=1):
            seen.append(chunk_mem_const)
    else:
        def liger_fused_linear_cross_entropy(input, weight, target, reduction="mean"):
            seen.append(None)
    return liger_fused_linear_cross_entropy, seen


def patched_context(tmp_path, fake_liger, monkeypatch, liger_options, chunk_param=True):
    from transformers import AutoModelForCausalLM

    from tunerkit.loop import build_context
    from tunerkit.models.presets import PRESETS

    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy, seen = loss_entry(chunk_param)
    sys.modules["liger_kernel.transformers"].functional = functional
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    row = make_row("r", ["lora", "liger"], model="tiny-llama", liger=liger_options)
    ctx = build_context(row, tmp_path)
    ctx.device = torch.device("cuda")  # the glue only reads the device; nothing runs
    ctx.model = AutoModelForCausalLM.from_config(PRESETS["tiny-llama"].config())
    return ctx, functional, seen


def test_chunk_mem_const_reaches_every_fused_loss_call_of_the_row_and_is_undone(fake_liger, monkeypatch, tmp_path):
    import inspect

    ctx, functional, seen = patched_context(tmp_path, fake_liger, monkeypatch, {"chunk_mem_const": 4})
    original = functional.liger_fused_linear_cross_entropy
    ctx.hook.modify_model(ctx=ctx)
    # liger's causal-LM loss looks the function up on its module and filters its kwargs by the signature
    assert "chunk_mem_const" in inspect.signature(functional.liger_fused_linear_cross_entropy).parameters
    functional.liger_fused_linear_cross_entropy(None, None, None, reduction="sum")
    assert seen == [4]
    assert ctx.hook.collect_metrics(ctx=ctx)[0]["liger_chunk_mem_const"] == 4
    assert not ctx.close()
    assert functional.liger_fused_linear_cross_entropy is original


def test_chunk_mem_const_at_its_default_leaves_liger_alone(fake_liger, monkeypatch, tmp_path):
    ctx, functional, seen = patched_context(tmp_path, fake_liger, monkeypatch, {})
    original = functional.liger_fused_linear_cross_entropy
    ctx.hook.modify_model(ctx=ctx)
    assert functional.liger_fused_linear_cross_entropy is original
    assert not ctx.close()


def test_chunk_mem_const_on_a_liger_without_it_fails_the_row(fake_liger, monkeypatch, tmp_path):
    ctx, _, _ = patched_context(tmp_path, fake_liger, monkeypatch, {"chunk_mem_const": 4}, chunk_param=False)
    with pytest.raises(RowFailed, match="no chunk_mem_const"):
        ctx.hook.modify_model(ctx=ctx)
    assert not ctx.close()


def test_chunk_mem_const_below_one_is_a_recipe_error():
    with pytest.raises(UserError, match="chunk_mem_const"):
        make_row("r", ["lora", "liger"], model="tiny-llama", liger={"chunk_mem_const": 0})
