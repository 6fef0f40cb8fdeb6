"""export: after training, the adapter merged into a fresh copy of the base, the merged model
quantized (GPT-QModel's GPTQ/AWQ), loaded back by plain transformers and its decoding timed."""

from __future__ import annotations

import shutil

import pytest
import torch

import tunerkit.quantize as quantize_module
from tunerkit_plugins.quant import export as export_plugin


@pytest.fixture
def stand_in_quantizer(monkeypatch):
    """GPT-QModel's quantize replaced by a copy of the merged checkpoint: the row's own wiring
    (save, merge, quantize with the options, reload, time) runs where GPT-QModel is missing."""
    calls = []

    def fake(model, method, bits, calibration, out, *, samples, max_length, group_size):
        calls.append(dict(model=model, method=method, bits=bits, calibration=calibration, samples=samples,
                          max_length=max_length, group_size=group_size))
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        calls[-1]["merged_logits"] = merged(torch.arange(1, 9).unsqueeze(0)).logits.detach()
        shutil.copytree(model, out)
        return out

    monkeypatch.setattr(export_plugin, "gptqmodel_installed", lambda: True)
    monkeypatch.setattr(quantize_module, "quantize", fake)
    return calls


def test_a_row_merges_quantizes_with_its_options_and_times_the_result(tiny_row, tiny_context, stand_in_quantizer):
    row = tiny_row("lora", "export", lora={"targets": "ALL"}, evaluate=[], infer_prompts=1, infer_new_tokens=4,
                   export={"method": "gptq", "bits": 8, "calibration": "builtin:arithmetic", "samples": 3,
                           "group_size": 32})
    ctx = tiny_context(row)
    model = ctx.unwrapped_model()
    with torch.no_grad():  # a trained-looking adapter: LoRA's B starts at zero, which would merge to nothing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    expected = model(torch.arange(1, 9).unsqueeze(0)).logits.detach()
    with model.disable_adapter():
        base = model(torch.arange(1, 9).unsqueeze(0)).logits.detach()
    assert not torch.allclose(base, expected, atol=0.05)  # the adapter changes the outputs
    metrics = {}
    for result in ctx.hook.evaluate(ctx=ctx):
        metrics.update(result or {})

    (call,) = stand_in_quantizer
    assert {k: call[k] for k in ("method", "bits", "calibration", "samples", "max_length", "group_size")} == \
        dict(method="gptq", bits=8, calibration="builtin:arithmetic", samples=3, max_length=row.settings.max_length,
             group_size=32)
    # What was quantized is the trained model merged: the same outputs as base + adapter (bf16 weights).
    torch.testing.assert_close(call["merged_logits"], expected, atol=0.05, rtol=0.05)
    assert metrics["export_method"] == "gptq" and metrics["export_bits"] == 8
    assert metrics["infer_tokens"] == 4 and metrics["infer_tokens_per_s"] > 0
    assert metrics["export_gib"] > 0
    assert not list(ctx.out_dir.glob(".export-*")) and not (ctx.out_dir / "quantized").exists()


def test_save_keeps_the_quantized_checkpoint(tiny_row, tiny_context, stand_in_quantizer):
    row = tiny_row("lora", "export", evaluate=[], infer_prompts=1, infer_new_tokens=2, save=True,
                   export={"calibration": "builtin:arithmetic", "samples": 2})
    ctx = tiny_context(row)
    metrics = {}
    for result in ctx.hook.evaluate(ctx=ctx):
        metrics.update(result or {})
    kept = ctx.out_dir / "quantized"
    assert metrics["export_path"] == str(kept) and (kept / "config.json").exists()
    assert not list(ctx.out_dir.glob(".export-*"))


def test_options_and_refusals(tiny_row, monkeypatch):
    from tunerkit.testing import validation_error

    with pytest.raises(ValueError, match="4 bits"):
        export_plugin.ExportOptions(method="awq", bits=8)
    assert export_plugin.ExportOptions().method == "awq" and export_plugin.ExportOptions().samples == 256
    monkeypatch.setattr(export_plugin, "gptqmodel_installed", lambda: False)
    assert "pip install 'tunerkit[gptq]'" in validation_error(tiny_row("lora", "export"))
    from tunerkit.errors import UserError

    with pytest.raises(UserError, match="'export' needs one of lora"):  # nothing to merge without an adapter
        tiny_row("full", "export")


@pytest.mark.slow
def test_the_real_quantizer_on_the_real_model(tmp_path):
    """The cpu profile's GPTQ row end to end: GPT-QModel's GPTQ on the merged SmolLM2, loaded by transformers."""
    pytest.importorskip("gptqmodel")
    pytest.importorskip("optimum")
    from pathlib import Path

    from tunerkit.recipe import load_recipe
    from tunerkit.loop import run_row

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "export.toml", "cpu",
                         select=["gptq-pileval"])
    (row,) = recipe.rows
    metrics = run_row(row, tmp_path)
    assert metrics["export_method"] == "gptq" and metrics["infer_tokens_per_s"] > 0
    assert 0 < metrics["export_gib"] < 0.25  # 4-bit SmolLM2 (the fp32 original is 0.5 GiB)
