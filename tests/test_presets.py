"""Presets: analytic parameter counts match the built models; every preset is documented."""

from pathlib import Path

import pytest
import torch

from tunerkit.models.presets import PRESETS

DOC = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()


@pytest.mark.parametrize("name", list(PRESETS))
def test_analytic_param_count_matches_built_model(name):
    from transformers import AutoModelForCausalLM

    preset = PRESETS[name]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(preset.config())
    assert sum(p.numel() for p in model.parameters()) == preset.num_params()
    assert model.config.num_hidden_layers == preset.layers
    assert f"`{name}`" in DOC


def test_qwen7b_preset_has_the_originals_size():
    # Qwen-7B-Chat has 7.72 B parameters (ms-swift's "7721.3245 M" for full fine-tuning)
    assert abs(PRESETS["qwen-7b-chat"].num_params() / 1e6 - 7721.3245) / 7721.3245 < 0.001


def test_preset_checkpoint_holds_the_presets_own_weights_and_is_written_once(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from tunerkit.models import loading

    monkeypatch.setenv("TUNERKIT_CACHE", str(tmp_path))
    source = loading.resolve_model("tiny-llama")
    path = loading.preset_checkpoint(source.preset, torch.float32)
    stamp = (path / "config.json").stat().st_mtime_ns
    assert loading.preset_checkpoint(source.preset, torch.float32) == path
    assert (path / "config.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".preset-")]  # no half-written folder left
    saved = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    fresh = loading.load_pretrained(source, torch.float32, torch.device("cpu"), "sdpa").state_dict()
    assert saved.keys() == fresh.keys()
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)
