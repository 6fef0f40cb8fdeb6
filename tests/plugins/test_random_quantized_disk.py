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
