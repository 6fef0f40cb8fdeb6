"""Small helpers shared by the plugin tests."""

from __future__ import annotations

import torch


def fresh_base(model: str = "tiny-llama"):
    """The row's base model loaded again, independently: presets are seeded, so it equals the original."""
    from tunerkit.models import loading

    model = loading.load_pretrained(loading.resolve_model(model), torch.float32, torch.device("cpu"), "sdpa")
    return model.eval()


def sample_ids(batch: int = 2, length: int = 12, vocab: int = 1000, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=ids).logits


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
