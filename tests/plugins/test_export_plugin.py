"""export: after training, the adapter merged into a copy of the trained model (or of the base
read again from its checkpoint), the merged model quantized (GPT-QModel's GPTQ/AWQ), loaded
back by plain transformers and its decoding timed."""

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


def trained_looking(model, base_shift: float = 0.0):
    """LoRA's B drawn non-zero (it starts at zero, which would merge to nothing); ``base_shift``
    moves one frozen base weight too, as a base the checkpoint on disk would not give back
    (a random preset drawn on the GPU and drawn again on the CPU)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
            elif base_shift and name.endswith("layers.0.mlp.down_proj.base_layer.weight"):
                p.add_(base_shift)
    model.eval()
    return model(torch.arange(1, 9).unsqueeze(0)).logits.detach()


def export_metrics(ctx) -> dict:
    metrics = {}
    for result in ctx.hook.evaluate(ctx=ctx):
        metrics.update(result or {})
    return metrics


@pytest.mark.parametrize("merge_from", ["trained", "checkpoint"])
def test_a_row_merges_quantizes_with_its_options_and_times_the_result(tiny_row, tiny_context, stand_in_quantizer,
                                                                     merge_from):
    row = tiny_row("lora", "export", lora={"targets": "ALL"}, evaluate=[], infer_prompts=1, infer_new_tokens=4,
                   export={"method": "gptq", "bits": 8, "calibration": "builtin:arithmetic", "samples": 3,
                           "group_size": 32, "merge_from": merge_from})
    ctx = tiny_context(row)
    model = ctx.unwrapped_model()
    expected = trained_looking(model)
    with model.disable_adapter():
        base = model(torch.arange(1, 9).unsqueeze(0)).logits.detach()
    assert not torch.allclose(base, expected, atol=0.05)  # the adapter changes the outputs
    metrics = export_metrics(ctx)

    (call,) = stand_in_quantizer
    assert {k: call[k] for k in ("method", "bits", "calibration", "samples", "max_length", "group_size")} == \
        dict(method="gptq", bits=8, calibration="builtin:arithmetic", samples=3, max_length=row.settings.max_length,
             group_size=32)
    # What was quantized is the trained model merged: the same outputs as base + adapter (bf16 weights).
    torch.testing.assert_close(call["merged_logits"], expected, atol=0.05, rtol=0.05)
    assert metrics["export_method"] == "gptq" and metrics["export_bits"] == 8
    assert metrics["export_merged_from"] == merge_from
    assert metrics["infer_tokens"] == 4 and metrics["infer_tokens_per_s"] > 0
    assert metrics["export_gib"] > 0
    assert not list(ctx.out_dir.glob(".export-*")) and not (ctx.out_dir / "quantized").exists()


def test_the_trained_merge_keeps_the_weights_trained_on_and_leaves_the_model_as_it_was(tiny_row, tiny_context,
                                                                                     stand_in_quantizer):
    """A base the checkpoint would not give back (a random preset drawn again on another device)
    merges as trained; the trained model keeps its adapter unmerged for whatever reads it next."""
    ctx = tiny_context(tiny_row("lora", "export", lora={"targets": "ALL"}, evaluate=[], infer_prompts=1,
                                infer_new_tokens=2, export={"calibration": "builtin:arithmetic", "samples": 2}))
    model = ctx.unwrapped_model()
    expected = trained_looking(model, base_shift=0.5)
    adapter_names = sorted(n for n, _ in model.named_parameters() if "lora_" in n)
    assert export_metrics(ctx)["export_merged_from"] == "trained"
    torch.testing.assert_close(stand_in_quantizer[0]["merged_logits"], expected, atol=0.05, rtol=0.05)
    assert sorted(n for n, _ in model.named_parameters() if "lora_" in n) == adapter_names
    torch.testing.assert_close(model(torch.arange(1, 9).unsqueeze(0)).logits, expected, rtol=0, atol=0)
    with model.disable_adapter():  # unmerged: switching the adapter off still gives the shifted base alone
        assert not torch.allclose(model(torch.arange(1, 9).unsqueeze(0)).logits, expected, atol=0.05)


def test_without_room_for_a_copy_the_merge_reads_the_checkpoint(tiny_row, tiny_context, stand_in_quantizer,
                                                               monkeypatch, capsys):
    ctx = tiny_context(tiny_row("lora", "export", evaluate=[], infer_prompts=1, infer_new_tokens=2,
                                export={"calibration": "builtin:arithmetic", "samples": 2}))
    monkeypatch.setattr(export_plugin, "room_for_copy", lambda model, device: "a copy needs 9.0 GiB, 1.0 GiB free")
    assert export_metrics(ctx)["export_merged_from"] == "checkpoint"
    assert "a copy needs 9.0 GiB" in capsys.readouterr().out


def test_room_for_copy_counts_the_models_bytes(tiny_row, tiny_context, monkeypatch):
    model = tiny_context(tiny_row("lora")).unwrapped_model()
    # the PeftModel's footprint is its base's parameters, the adapters among them, and buffers
    assert model.get_memory_footprint() == sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    assert export_plugin.room_for_copy(model, torch.device("cpu")) is None  # a tiny model fits any host
    with monkeypatch.context() as m:  # a host with exactly one footprint free: no room for the merge on top
        footprint = model.get_memory_footprint()
        m.setattr(export_plugin.os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else footprint)
        assert "a copy needs" in export_plugin.room_for_copy(model, torch.device("cpu"))
    model.config.quantization_config = {"quant_method": "gptq"}
    assert "quantized" in export_plugin.room_for_copy(model, torch.device("cpu"))


def test_save_keeps_the_quantized_checkpoint(tiny_row, tiny_context, stand_in_quantizer):
    row = tiny_row("lora", "export", evaluate=[], infer_prompts=1, infer_new_tokens=2, save=True,
                   export={"calibration": "builtin:arithmetic", "samples": 2})
    ctx = tiny_context(row)
    metrics = export_metrics(ctx)
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
