"""A quantized preset checkpoint is sized before it is written, and refused where the disk cannot hold it."""

import collections
import json

import pytest
import torch

from tunerkit.errors import RowFailed
from tunerkit.models.presets import get_preset
from tunerkit_plugins.quant import random_quantized
from tunerkit_plugins.quant.gptq import GptqOptions, gptq_format


def test_the_size_counted_on_meta_is_what_the_written_checkpoint_holds(tmp_path, monkeypatch):
    from safetensors import safe_open

    monkeypatch.setenv("TUNERKIT_CACHE", str(tmp_path))
    preset, fmt = get_preset("tiny-llama"), gptq_format(GptqOptions(bits=4))
    counted = random_quantized.checkpoint_bytes(preset, fmt, torch.float32)
    path = random_quantized.checkpoint(preset, fmt, torch.float32)
    written = 0
    for shard in set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values()):
        with safe_open(str(path / shard), "pt") as f:
            written += sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert counted == written > 0


def test_a_checkpoint_the_disk_cannot_hold_fails_the_row_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERKIT_CACHE", str(tmp_path))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(random_quantized.shutil, "disk_usage", lambda path: usage(64 << 30, 63 << 30, 1 << 20))
    with pytest.raises(RowFailed, match=r"needs .* GiB of disk .* TUNERKIT_CACHE"):
        random_quantized.checkpoint(get_preset("tiny-llama"), gptq_format(GptqOptions(bits=8)), torch.float32)
    assert not any(p for p in (tmp_path / "models").iterdir())  # nothing half-written


def test_qwen_72b_int8_needs_more_than_a_64_gib_disk_and_int4_less():
    gib = {bits: random_quantized.checkpoint_bytes(get_preset("qwen-72b-chat"), gptq_format(GptqOptions(bits=bits)),
                                                   torch.bfloat16) / 2 ** 30 for bits in (4, 8)}
    assert gib[4] < 64 < gib[8]


def _free_between_sparse_and_dense(monkeypatch, preset, fmt):
    dense = random_quantized.checkpoint_bytes(preset, fmt, torch.float32)
    sparse = random_quantized.checkpoint_bytes(preset, fmt, torch.float32, zero_codes=True)
    assert sparse < dense
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(random_quantized.shutil, "disk_usage",
                        lambda path: usage(64 << 30, 0, (sparse + dense) // 2))
    return dense, sparse


def test_a_checkpoint_too_large_for_the_disk_is_written_sparse_with_zero_codes(tmp_path, monkeypatch):
    """qwen-72b's int8 GPTQ preset (71.2 GiB) cannot be written to a 64 GiB disk; its packed codes
    left as holes (zeros, no blocks) it takes 6.2 GiB. The codes read back as zeros, everything
    else as drawn, and the scales make the weights random (std 0.02) all the same."""
    from safetensors import safe_open

    monkeypatch.setenv("TUNERKIT_CACHE", str(tmp_path))
    if not random_quantized.holes_supported(tmp_path):
        pytest.skip("this filesystem allocates blocks for unwritten ranges")
    preset, fmt = get_preset("tiny-llama"), gptq_format(GptqOptions(bits=8, group_size=32))
    dense, sparse = _free_between_sparse_and_dense(monkeypatch, preset, fmt)
    path = random_quantized.checkpoint(preset, fmt, torch.float32)
    assert path.name.endswith("-zerocodes") and json.loads((path / "config.json").read_text())["tunerkit_zero_codes"]
    shards = sorted(path.glob("*.safetensors"))
    weights = []
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if key.endswith("qweight"):
                    assert not t.any()
                if key.endswith("scales"):
                    weights.append(-128 * t.float())  # code 0 minus the zero point 128, times the scale
                if key.endswith("g_idx"):
                    assert torch.equal(t, torch.arange(t.numel(), dtype=torch.int32) // 32)
    assert abs(float(torch.cat([w.flatten() for w in weights]).std()) - 0.02) < 0.002
    assert random_quantized.checkpoint(preset, fmt, torch.float32) == path  # found again, not rewritten


def test_a_sparse_file_allocates_no_blocks_for_its_holes_and_reads_back_zeros(tmp_path):
    from safetensors.torch import load_file

    if not random_quantized.holes_supported(tmp_path):
        pytest.skip("this filesystem allocates blocks for unwritten ranges")
    small = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    path = tmp_path / "s.safetensors"
    random_quantized.save_sparse({"a": small, "codes": random_quantized.Hole((4096, 1024), torch.int32),
                                  "b": torch.ones(3, dtype=torch.float16)}, path)
    assert path.stat().st_size > 16 << 20 and path.stat().st_blocks * 512 < 1 << 20
    back = load_file(str(path))
    assert torch.equal(back["a"], small) and torch.equal(back["b"], torch.ones(3, dtype=torch.float16))
    assert back["codes"].shape == (4096, 1024) and back["codes"].dtype == torch.int32 and not back["codes"].any()


def test_a_lora_row_trains_on_a_sparse_gptq_preset(tiny_row, tmp_path, monkeypatch):
    pytest.importorskip("gptqmodel")
    monkeypatch.setenv("TUNERKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    if not random_quantized.holes_supported(tmp_path / "cache"):
        pytest.skip("this filesystem allocates blocks for unwritten ranges")
    from tunerkit.loop import run_row

    _free_between_sparse_and_dense(monkeypatch, get_preset("tiny-llama"), gptq_format(GptqOptions(bits=8, group_size=32)))
    row = tiny_row("lora", "gptq", gptq={"bits": 8, "group_size": 32}, max_steps=2, evaluate=[],
                   dataset="synthetic:lengths?mean=32&sd=0&min=32&max=32&rows=8", val_size=0, max_length=32)
    metrics = run_row(row, tmp_path / "run")
    assert metrics["preset_zero_codes"] == 1 and metrics["quantized_linears"] == 28
    assert all(torch.isfinite(torch.tensor(metrics["train_loss_curve"])))
