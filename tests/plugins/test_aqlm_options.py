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
