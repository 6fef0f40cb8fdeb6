"""tf32: a row can put fp32 matmuls on TF32 tensor cores; torch's setting is its own again after the row."""

from __future__ import annotations

import torch

from tunerkit import hookimpl


class SeePrecision:
    """Records torch's fp32 matmul precision while the row trains."""

    def __init__(self):
        self.seen = None

    @hookimpl
    def on_train_begin(self, ctx):
        self.seen = torch.get_float32_matmul_precision()


def test_tf32_row_trains_with_high_precision_matmuls_and_restores_the_setting(tiny_row, tmp_path):
    from tunerkit.loop import run_row

    before = torch.get_float32_matmul_precision()
    spy = SeePrecision()
    m = run_row(tiny_row("lora", tf32=True, evaluate=[], max_steps=1), tmp_path / "on", extra_plugins=[spy])
    assert spy.seen == "high" and m["tf32"] is True
    assert torch.get_float32_matmul_precision() == before

    spy = SeePrecision()
    m = run_row(tiny_row("lora", evaluate=[], max_steps=1), tmp_path / "off", extra_plugins=[spy])
    assert spy.seen == before and "tf32" not in m
