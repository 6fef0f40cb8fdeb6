"""offload: keep saved activations in (pinned) host memory between forward and backward.

Built on autograd's saved-tensor hooks (``torch.autograd.graph.saved_tensors_hooks``, the
mechanism behind ``torch.autograd.graph.save_on_cpu``): every activation autograd saves
for the backward is copied to host memory when it is saved and copied back when the
backward needs it. Two scopes:

- ``checkpoints`` (offloaded gradient checkpointing): with gradient checkpointing on, the
  only activations a layer keeps are its inputs, held for the recompute. The hooks are
  installed around each layer's checkpoint call, so exactly those inputs leave the GPU
  (``layers x tokens x hidden`` bytes: 4 GiB for a 32-layer, 4096-wide model at 16k
  tokens) and the rest of the step is untouched. transformers >= 5.17 offers the same with
  ``gradient_checkpointing_enable(offload=True)`` using ``save_on_cpu``, whose blocking
  copies stall the forward once per layer; here the device-to-host copies run on a side
  stream and overlap the next layer's compute.
- ``all``: the hooks wrap the whole forward (the ``compute_loss`` call), so every saved
  activation of at least ``min_bytes`` moves; for runs without gradient checkpointing.

Weights are never moved (saved tensors that share a parameter's storage stay put). On a
machine without CUDA the copies are plain host copies: nothing is saved, but the same
code path runs, which is what the CPU tests check.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed

from ._layers import checkpointed_layers, restore_checkpoint_calls, wrap_checkpoint_calls

GIB = 1024 ** 3


@dataclass
class OffloadOptions:
    scope: Literal["auto", "checkpoints", "all"] = option(
        "auto", "checkpoints: the layer inputs gradient checkpointing keeps; all: every saved activation of the"
                " forward; auto: checkpoints when gradient_checkpointing is on, else all")
    min_bytes: int = option(1 << 20, "offload only saved tensors at least this large (bytes)")

    def __post_init__(self):
        if self.min_bytes < 0:
            raise ValueError(f"min_bytes must be >= 0, got {self.min_bytes}")


class HostOffloader:
    """Pack/unpack hooks that park saved activations in host memory.

    A CUDA tensor is copied into pinned memory on a side stream (``t.record_stream`` keeps
    its device memory from being reused before the copy ends); an event marks the copy's
    end, and the backward's copy back waits on it.
    """

    def __init__(self, min_bytes: int):
        self.min_bytes = min_bytes
        self.skip_storages: set[int] = set()
        self.streams: dict[torch.device, torch.cuda.Stream] = {}
        self.tensors = 0
        self.bytes = 0

    def skip_parameters_of(self, model) -> None:
        self.skip_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def reset_counts(self) -> None:
        self.tensors = self.bytes = 0

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def wanted(self, t: torch.Tensor) -> bool:
        if isinstance(t, torch.nn.Parameter) or t.layout != torch.strided:
            return False
        if t.numel() * t.element_size() < self.min_bytes:
            return False
        return t.untyped_storage().data_ptr() not in self.skip_storages

    def pack(self, t: torch.Tensor):
        if not self.wanted(t):
            return t
        self.tensors += 1
        self.bytes += t.numel() * t.element_size()
        if t.device.type != "cuda":
            return (t.device, t.detach().clone(), None)
        stream = self.streams.get(t.device)
        if stream is None:
            stream = self.streams[t.device] = torch.cuda.Stream(t.device)
        stream.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(stream):
            host = torch.empty(t.size(), dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        t.record_stream(stream)
        return (t.device, host, done)

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host, done = packed
        if done is None:
            return host
        torch.cuda.current_stream(device).wait_event(done)
        return host.to(device, non_blocking=True)


def offloaded_checkpoint(checkpoint_func, offloader: HostOffloader, function, *args, **kwargs):
    # Only the checkpoint's own saves (the layer inputs) meet these hooks: inside the
    # checkpointed region torch's checkpoint hooks are innermost and keep nothing.
    with offloader.hooks():
        return checkpoint_func(function, *args, **kwargs)


class ActivationOffload(Plugin):
    name = "offload"
    summary = "saved activations wait in pinned host memory (offloaded gradient checkpointing)"
    Options = OffloadOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.offloader = HostOffloader(self.options.min_bytes)
        self.patched: list[tuple[object, object]] = []
        self.scope = "all"

    @hookimpl
    def validate(self, row):
        if self.options.scope == "checkpoints" and not row.settings.gradient_checkpointing:
            return "offload scope 'checkpoints' needs gradient_checkpointing = true (or use scope 'all')"
        return None

    @hookimpl
    def on_train_begin(self, ctx):
        model = ctx.unwrapped_model()
        self.offloader.skip_parameters_of(model)
        scope = self.options.scope
        if scope == "auto":
            scope = "checkpoints" if ctx.settings.gradient_checkpointing else "all"
        self.scope = scope
        if scope == "checkpoints":
            layers = checkpointed_layers(model)
            if not layers:
                raise RowFailed("offload scope 'checkpoints' found no checkpointed layer "
                                "(gradient_checkpointing off, or the model does not support it)")
            self.patched = wrap_checkpoint_calls(
                layers, lambda original: functools.partial(offloaded_checkpoint, original, self.offloader))
        ctx.log(f"activation offload: scope {scope}")

    @hookimpl
    def on_step_begin(self, ctx):
        self.offloader.reset_counts()

    @hookimpl(wrapper=True)
    def compute_loss(self, ctx, model, batch):
        if self.scope != "all":
            return (yield)
        with self.offloader.hooks():
            return (yield)

    @hookimpl
    def collect_metrics(self, ctx):
        return {"offload_scope": self.scope, "offload_tensors_per_step": self.offloader.tensors,
                "offload_gib_per_step": self.offloader.bytes / GIB}

    @hookimpl
    def teardown(self, ctx):
        restore_checkpoint_calls(self.patched)
