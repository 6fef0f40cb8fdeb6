"""aqlm (GPU only): its options agree with themselves, its preset format has AQLM's shapes, and a
row is refused in one line where no CUDA GPU is visible."""

import pytest
import torch

from tunerkit.errors import UserError
from tunerkit.recipe import make_row
from tunerkit_plugins.quant import aqlm


def test_bits_must_follow_from_codebooks_and_group_size():
    assert aqlm.AqlmOptions(bits=2, codebooks="2x8").num_codebooks == 2
    with pytest.raises(ValueError, match="give 4 bits"):
        aqlm.AqlmOptions(bits=2, codebooks="2x16")
    with pytest.raises(ValueError, match="look like 1x16"):
        aqlm.AqlmOptions(codebooks="sixteen")


def test_preset_tensors_have_aqlms_shapes():
    fmt = aqlm.aqlm_format(aqlm.AqlmOptions())
    t = fmt.tensors(64, 32)
    assert t["codes"].shape == (32, 64 // 8, 1) and t["codes"].dtype == torch.int16
    assert t["codebooks"].shape == (1, 2 ** 16, 1, 8) and t["scales"].shape == (32, 1, 1, 1)
    assert fmt.config["nbits_per_codebook"] == 16 and fmt.config["in_group_size"] == 8


def test_row_is_refused_without_cuda_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    row = make_row("a", ["lora", "aqlm"], model="tiny-llama")
    reason = aqlm.Aqlm(row.options["aqlm"]).validate(row)
    assert reason and ("CUDA GPU" in reason or "not installed" in reason) and "\n" not in reason
    with pytest.raises(UserError, match="needs one of lora"):
        make_row("a", ["aqlm"], model="tiny-llama")


def test_the_loading_config_keeps_the_head_and_embeddings_unquantized_under_transformers_rule():
    # transformers decides which linears become AQLM layers by matching module names against
    # linear_weights_not_to_quantize; AQLM checkpoints list weights ("lm_head.weight"), which
    # under transformers 5 left the head to be swapped for a 2-bit layer with no codes stored.
    pytest.importorskip("transformers.quantizers.quantizers_utils")
    from transformers.quantizers.quantizers_utils import should_convert_module

    row = make_row("a", ["lora", "aqlm"], model="tiny-llama")
    kept = aqlm.Aqlm(row.options["aqlm"]).quantization_config(None).linear_weights_not_to_quantize
    assert not should_convert_module("lm_head", kept)
    assert not should_convert_module("model.embed_tokens", kept)
    assert should_convert_module("model.layers.0.self_attn.q_proj", kept)
    assert "lm_head.weight" in kept  # the checkpoint's own spelling stays for older transformers


def test_the_checkpoint_config_transformers_follows_keeps_the_head(tmp_path, monkeypatch):
    """transformers loads a pre-quantized checkpoint by the quantization config stored with it
    (the one passed to from_pretrained is dropped), so the head must be kept there: a checkpoint
    stored with weight names only, as AQLM's published checkpoints and tunerkit's presets before
    this fix are, got its head swapped for a 2-bit layer (the 2026-12-07 H100 run counted 225
    quantized linears for 224 decoder linears)."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.quantizers.auto import AutoHfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    from tunerkit.models.loading import ModelSource
    from tunerkit.models.presets import get_preset
    from tunerkit_plugins.quant import random_quantized

    monkeypatch.setenv("TUNERKIT_CACHE", str(tmp_path))
    plugin = aqlm.Aqlm(make_row("a", ["lora", "aqlm"], model="tiny-llama").options["aqlm"])
    fmt = plugin.format()
    stored_like_published = random_quantized.Format(fmt.tag, {**fmt.config, "linear_weights_not_to_quantize":
                                                              ["model.embed_tokens.weight", "lm_head.weight"]},
                                                    fmt.tensors)
    path = random_quantized.checkpoint(get_preset("tiny-llama"), stored_like_published, torch.float32)
    seen = {}
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda p, **kw: seen.update(kw) or torch.nn.Linear(1, 1))
    ctx = SimpleNamespace(model_source=ModelSource("local", str(path), path=path), dtype=torch.float32,
                          device=torch.device("cpu"), settings=SimpleNamespace(attention="sdpa"))
    random_quantized.load_quantized(ctx, fmt, plugin.quantization_config(ctx), plugin.amend_checkpoint_config)
    used = AutoHfQuantizer.merge_quantization_configs(seen["config"].quantization_config, seen["quantization_config"])
    assert not should_convert_module("lm_head", used.linear_weights_not_to_quantize)
    assert should_convert_module("model.layers.0.mlp.down_proj", used.linear_weights_not_to_quantize)
    # the presets written from now on store both spellings themselves
    assert not should_convert_module("lm_head", fmt.config["linear_weights_not_to_quantize"])
