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
from tunerkit.checkpointing import checkpointed_layers
from tunerkit.errors import RowFailed

from tunerkit_plugins._helpers.layers import wrap_checkpoint_calls
from tunerkit_plugins._helpers import estimates

GIB = 1024 ** 3


@dataclass
class OffloadOptions:
    scope: Literal["auto", "checkpoints", "all"] = option(
        "auto", "checkpoints: the layer inputs gradient checkpointing keeps; all: every saved activation of the"
                " forward; auto: checkpoints when gradient_checkpointing is on, else all")
    min_bytes: int = option(1 << 20, "offload only saved tensors at least this large (bytes)", min=0)
    prefetch: int = option(
        0, "when the backward takes one offloaded tensor back, start copying this many of the ones saved before it"
           " on a side stream (0: each is copied back on the compute stream when needed)", min=0)


class Parked:
    """One offloaded tensor: its host copy, and the copy back once one was started ahead.

    ``prev`` links to the tensor saved just before it. The backward takes saved tensors back
    roughly in reverse order of saving, so when it takes this one, the next it will need are
    found along ``prev``.
    """

    __slots__ = ("device", "host", "done", "prev", "fetched", "fetched_done")

    def __init__(self, device, host, done, prev):
        self.device, self.host, self.done, self.prev = device, host, done, prev
        self.fetched = self.fetched_done = None


class HostOffloader:
    """Pack/unpack hooks that park saved activations in host memory.

    A CUDA tensor is copied into pinned memory on a side stream (``t.record_stream`` keeps
    its device memory from being reused before the copy ends); an event marks the copy's
    end, and the backward's copy back waits on it. With ``prefetch``, taking one tensor
    back also starts the copies back of the ``prefetch`` tensors saved before it, on a
    second side stream, so the compute stream does not wait for them later (in a profiled
    packed step they were a tenth of its GPU time, on the compute stream: docs/performance.md).
    On a CPU the "copy back" is the host copy itself; the same bookkeeping runs.
    """

    def __init__(self, min_bytes: int, prefetch: int = 0):
        self.min_bytes = min_bytes
        self.prefetch = prefetch
        self.skip_storages: set[int] = set()
        self.streams: dict[torch.device, torch.cuda.Stream] = {}
        self.back_streams: dict[torch.device, torch.cuda.Stream] = {}
        self.last: Parked | None = None  # the newest tensor of the current forward
        self.tensors = 0
        self.bytes = 0
        self.prefetched = 0  # tensors the backward found already copied back

    def skip_parameters_of(self, model) -> None:
        self.skip_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def reset_counts(self) -> None:
        self.tensors = self.bytes = self.prefetched = 0

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
            parked = Parked(t.device, t.detach().clone(), None, self.last)
        else:
            stream = self._stream(self.streams, t.device)
            stream.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(stream):
                host = torch.empty(t.size(), dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            t.record_stream(stream)
            parked = Parked(t.device, host, done, self.last)
        self.last = parked
        return parked

    @staticmethod
    def _stream(streams: dict, device) -> "torch.cuda.Stream":
        if device not in streams:
            streams[device] = torch.cuda.Stream(device)
        return streams[device]

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        self.last = None  # the backward has begun: the next save starts a new chain
        if packed.fetched is not None:
            self.prefetched += 1
            tensor = packed.fetched
            if packed.fetched_done is not None:
                current = torch.cuda.current_stream(packed.device)
                current.wait_event(packed.fetched_done)
                tensor.record_stream(current)  # allocated on the side stream, used on this one
            packed.fetched = packed.fetched_done = None
        else:
            tensor = self._copy_back(packed)
        ahead, nxt = self.prefetch, packed.prev
        packed.prev = None  # only the saves before this one are still to come
        while ahead > 0 and nxt is not None:
            if nxt.fetched is None:
                self._start_copy_back(nxt)
            ahead, nxt = ahead - 1, nxt.prev
        return tensor

    def _copy_back(self, packed: Parked) -> torch.Tensor:
        if packed.done is None:
            return packed.host
        torch.cuda.current_stream(packed.device).wait_event(packed.done)
        return packed.host.to(packed.device, non_blocking=True)

    def _start_copy_back(self, packed: Parked) -> None:
        if packed.done is None:
            packed.fetched = packed.host
            return
        stream = self._stream(self.back_streams, packed.device)
        stream.wait_event(packed.done)
        with torch.cuda.stream(stream):
            packed.fetched = packed.host.to(packed.device, non_blocking=True)
            packed.fetched_done = torch.cuda.Event()
            packed.fetched_done.record(stream)


def offloaded_checkpoint(checkpoint_func, offloader: HostOffloader, function, *args, **kwargs):
    # Only the checkpoint's own saves (the layer inputs) meet these hooks: inside the
    # checkpointed region torch's checkpoint hooks are innermost and keep nothing.
    with offloader.hooks():
        return checkpoint_func(function, *args, **kwargs)


class ActivationOffload(Plugin):
    name = "offload"
    conformance = {"companions": ["lora"]}
    summary = "saved activations wait in pinned host memory (offloaded gradient checkpointing)"
    Options = OffloadOptions
    #: the fast mode (speed = "max"): checkpointed layer inputs in host memory, one copy back in flight
    fast_switch = {"prefetch": 1}
    fast_order = 40

    def __init__(self, options=None):
        super().__init__(options)
        self.offloader = HostOffloader(self.options.min_bytes, self.options.prefetch)
        self.scope = "all"

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        if self.options.scope != "all" and row.settings.gradient_checkpointing:
            estimates.offloaded_checkpoints(estimate, in_flight=self.options.prefetch + 1)

    @hookimpl
    def memory_savings(self, row):
        # moving the checkpointed layer inputs to the host costs little speed where the copies
        # overlap the next layers' compute, so it is tried first
        if self.name in row.plugins:
            return None
        return [{"label": "+ offload", "plugins": [self.name], "settings": {"gradient_checkpointing": True},
                 "order": 10}]

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
            wrap_checkpoint_calls(
                layers, lambda original: functools.partial(offloaded_checkpoint, original, self.offloader), ctx)
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
                "offload_gib_per_step": self.offloader.bytes / GIB,
                "offload_prefetch": self.options.prefetch, "offload_prefetched_per_step": self.offloader.prefetched}
