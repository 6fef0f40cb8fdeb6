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
    # Qwen-7B-Chat has 7.72 B parameters (the seed's "7721.3245 M" for full fine-tuning)
    assert abs(PRESETS["qwen-7b-chat"].num_params() / 1e6 - 7721.3245) / 7721.3245 < 0.001
