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


def test_tf32_off_leaves_a_rows_identity_as_it_was_before_the_setting_existed(tiny_row):
    """Rows stored before ``tf32`` existed must still match their hash (``--resume``)."""
    import hashlib
    import json

    row = tiny_row("lora", max_steps=1)
    config = row.config()
    assert "tf32" not in config["settings"]
    before = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert row.config_hash() == before
    assert tiny_row("lora", max_steps=1, tf32=True).config()["settings"]["tf32"] is True
    assert tiny_row("lora", max_steps=1, tf32=True).config_hash() != row.config_hash()


def test_an_added_later_list_option_at_its_default_is_left_out_of_the_identity():
    """Lists and dicts get a default factory; their default must be recognised too."""
    from dataclasses import dataclass

    from tunerkit.options import identity, option

    @dataclass
    class Options:
        kept: int = option(1, "an option results were stored with")
        later: list = option(["a"], "an option added after them", added_later=True)

    assert identity(Options()) == {"kept": 1}
    assert identity(Options(later=["b"])) == {"kept": 1, "later": ["b"]}
