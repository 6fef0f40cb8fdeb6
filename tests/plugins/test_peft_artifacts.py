"""LoRA-family adapters saved by the row reload with plain PEFT and give identical outputs."""

import json

import pytest
import torch

from .modelside_helpers import fresh_base, lora_layers, logits, sample_ids


def perturb_adapters(model, seed: int = 0) -> None:
    """Give every adapter tensor non-init values, as training would (B = 0 would hide a bad reload)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("tuner,flag", [("lora", None), ("rslora", "use_rslora"), ("dora", "use_dora")])
def test_saved_adapter_reloads_with_peft(tiny_row, tiny_context, tmp_path, tuner, flag):
    from peft import PeftModel

    ctx = tiny_context(tiny_row(tuner, **{tuner: {"targets": "ALL", "rank": 4}}))
    perturb_adapters(ctx.model)
    ctx.hook.save_artifacts(ctx=ctx, out_dir=tmp_path)
    saved = tmp_path / "model"
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    if flag:
        assert config[flag] is True
    reloaded = PeftModel.from_pretrained(fresh_base(), saved)
    assert len(lora_layers(reloaded)) == len(lora_layers(ctx.model))
    ids = sample_ids()
    torch.testing.assert_close(logits(reloaded, ids), logits(ctx.model, ids), rtol=0, atol=1e-6)
