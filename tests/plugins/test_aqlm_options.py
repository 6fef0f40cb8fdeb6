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
