"""speed = "max": the switches a row takes depend on the machine, each refusal is recorded
with its reason, memory_budget_gib picks among the variants by their prediction, and the
choice travels with the row's recorded config."""

from __future__ import annotations

import json

import pytest
import torch

from tunerkit.fast_mode import switches

FAST = dict(dataset="synthetic:lengths?mean=32&sd=0&min=32&max=32&rows=8", val_size=0, evaluate=[], speed="max")


def test_every_switch_is_either_added_or_refused_with_a_reason(tiny_row):
    plain = tiny_row("lora", **{**FAST, "speed": "plain"})
    fast = tiny_row("lora", **FAST)
    assert not plain.fast_mode and plain.plugins == ["lora"]
    record = fast.fast_mode
    assert [p for p in fast.plugins if p not in plain.plugins] == [n for n in record["added"] if n != "autocast"]
    offered = {name for name, _ in switches()} | {"autocast"}
    assert set(record["added"]) | set(record["refused"]) == offered
    assert not set(record["added"]) & set(record["refused"])
    assert all(isinstance(r, str) and r and "\n" not in r for r in record["refused"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA is refused")
def test_without_cuda_the_gpu_only_switches_are_refused_and_say_so(tiny_row):
    fast = tiny_row("lora", **FAST)
    assert "CUDA" in fast.fast_mode["refused"]["autocast"]
    assert "CUDA" in fast.fast_mode["refused"]["liger"]
    assert not fast.settings.autocast and "liger" not in fast.plugins


def test_with_cuda_autocast_joins_and_liger_is_no_longer_refused_for_the_device(tiny_row, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fast = tiny_row("lora", **FAST)
    assert "autocast" in fast.fast_mode["added"] and fast.settings.autocast
    assert "CUDA" not in fast.fast_mode["refused"].get("liger", "")


def test_a_budget_nothing_fits_is_recorded_and_a_roomy_one_drops_checkpointing(tiny_row):
    tight = tiny_row("lora", **FAST, gradient_checkpointing=True, memory_budget_gib=0.001)
    assert "no variant is predicted under 0.001 GiB" in tight.fast_mode["budget"]
    roomy = tiny_row("lora", **FAST, gradient_checkpointing=True, memory_budget_gib=64.0)
    # without checkpointing nothing is recomputed: predicted faster, and it fits
    assert roomy.fast_mode["budget"].startswith("no checkpointing")
    assert not roomy.settings.gradient_checkpointing
    assert roomy.fast_mode["added"] and "refused" in roomy.fast_mode


def test_a_budget_between_the_variants_keeps_checkpointing(tiny_row):
    from tunerkit.estimate import estimate_row

    row = tiny_row("lora", **{**FAST, "speed": "plain"}, gradient_checkpointing=True, batch_size=8, max_length=32)
    low = estimate_row(tiny_row("lora", **FAST, gradient_checkpointing=True, batch_size=8))["peak_alloc_gib"]
    high = estimate_row(tiny_row("lora", **FAST, gradient_checkpointing=True, batch_size=8,
                                 memory_budget_gib=64.0))["peak_alloc_gib"]
    assert low < high, "checkpointing must be predicted to save memory on this row"
    mid = tiny_row("lora", **FAST, gradient_checkpointing=True, batch_size=8, memory_budget_gib=(low + high) / 2)
    assert mid.settings.gradient_checkpointing and mid.fast_mode["budget"].startswith("checkpointing as written")
    assert row.settings.gradient_checkpointing


def test_the_choice_is_in_the_rows_recorded_config(tiny_row):
    fast = tiny_row("lora", **FAST, memory_budget_gib=64.0)
    config = json.loads(json.dumps(fast.config(), default=str))  # as the store writes it
    assert config["fast_mode"] == json.loads(json.dumps(fast.fast_mode))
    assert "budget" in config["fast_mode"]
