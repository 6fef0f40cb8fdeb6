"""adapter: a bottleneck after every decoder layer's MLP; everything else frozen.

Each layer's MLP output ``h`` becomes ``h + up(gelu(down(h)))`` with ``down: hidden -> dim``
and ``up: dim -> hidden`` (Houlsby et al. 2019, https://arxiv.org/abs/1902.00751, placed
as in ms-swift's benchmark: after the MLP only). Weights start Xavier-uniform and biases
normal(std 1e-6), as ms-swift initialised them; so, unlike LoRA, the model's output moves
at init (``zero_init_up`` starts the up projection at zero instead).

The bottleneck is registered as a child ``adapter`` of each MLP module and added by a
forward hook on that MLP, so base weights keep their checkpoint keys
(``model.layers.0.mlp.down_proj.weight``) and adapter weights get their own
(``model.layers.0.mlp.adapter.down.weight``). ``save_artifacts`` writes only the adapter
(``adapter/adapter.safetensors`` + ``adapter/adapter_config.json``); :func:`load_adapter`
puts it back on a freshly loaded base model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed
from tunerkit_plugins._helpers.layers import decoder_stack, text_config
from tunerkit_plugins._helpers import estimates

#: Attribute names families use for the feed-forward block of a decoder layer.
MLP_NAMES = ("mlp", "feed_forward", "ffn")
ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"


@dataclass
class AdapterOptions:
    dim: int = option(128, "bottleneck width", min=1)
    zero_init_up: bool = option(False, "start the up projection at zero: the adapter adds nothing at init "
                                       "(false = ms-swift's Xavier init, which moves the output at once)")


class Bottleneck(nn.Module):
    """up(gelu(down(h))): the residual branch added to an MLP's output."""

    def __init__(self, hidden: int, dim: int, *, zero_init_up: bool = False, dtype=None, device=None):
        super().__init__()
        self.down = nn.Linear(hidden, dim, dtype=dtype, device=device)
        self.act = nn.GELU()
        self.up = nn.Linear(dim, hidden, dtype=dtype, device=device)
        for linear in (self.down, self.up):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)
        if zero_init_up:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return self.up(self.act(self.down(h)))


def _add_bottleneck(mlp: nn.Module, args, output):
    return output + mlp.adapter(output)


def _mlp_of(layer: nn.Module) -> nn.Module:
    for name in MLP_NAMES:
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    raise RowFailed(f"adapter: no MLP ({', '.join(MLP_NAMES)}) in {type(layer).__name__}")


def install_adapters(model: nn.Module, dim: int, zero_init_up: bool = False) -> int:
    """Put a bottleneck after every decoder layer's MLP; return how many."""
    owner, attr = decoder_stack(model)
    layers = getattr(owner, attr)
    hidden = text_config(model).hidden_size
    for layer in layers:
        mlp = _mlp_of(layer)
        ref = next(mlp.parameters())
        mlp.adapter = Bottleneck(hidden, dim, zero_init_up=zero_init_up, dtype=ref.dtype, device=ref.device)
        mlp.register_forward_hook(_add_bottleneck)
    return len(layers)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if ".adapter." in name}


def save_adapter(model: nn.Module, out_dir: Path, dim: int, base_model: str = "") -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(out / WEIGHTS_FILE))
    config = {"type": "bottleneck", "dim": dim, "activation": "gelu", "placement": "after each MLP, residual",
              "hidden_size": text_config(model).hidden_size, "base_model": base_model}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Install the bottlenecks saved in ``adapter_dir`` on ``model`` (a base model) and load their weights."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    install_adapters(model, config["dim"])
    weights = load_file(str(adapter_dir / WEIGHTS_FILE))
    expected = set(adapter_state_dict(model))
    if set(weights) != expected:
        raise ValueError(f"adapter weights in {adapter_dir} do not match this model's layers "
                         f"({len(weights)} tensors saved, {len(expected)} expected)")
    model.load_state_dict(weights, strict=False)
    return model


class Adapter(Plugin):
    name = "adapter"
    conformance = {"reload": "its bottleneck modules are tunerkit's own: plain transformers loads the base and ignores them"}
    summary = "bottleneck adapter after each MLP (hidden -> dim -> hidden, GELU); base frozen"
    Options = AdapterOptions
    slot = "tuner"

    @hookimpl
    def apply_tuner(self, ctx):
        ctx.model.requires_grad_(False)
        install_adapters(ctx.model, self.options.dim, self.options.zero_init_up)  # new modules train by default

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        estimates.bottlenecks(estimate, shape, self.options.dim)

    @hookimpl
    def save_artifacts(self, ctx, out_dir):
        if ctx.is_main_process:
            save_adapter(ctx.unwrapped_model(), Path(out_dir) / ADAPTER_DIR, self.options.dim, ctx.settings.model)
