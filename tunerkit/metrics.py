"""Measuring a row honestly: peak memory per device, throughput over timed steps, environment."""

from __future__ import annotations

import math
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass, field

import torch

GIB = 1024 ** 3


def held_memory_gib(device: torch.device) -> float | None:
    """GiB the device's allocator holds for live tensors now (None off CUDA)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.memory_allocated(device) / 2**30, 3)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # Linux resets the process's peak RSS (VmHWM) when "5" is written to clear_refs.
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass


def peak_memory(device: torch.device) -> dict:
    """Peak memory since the last reset: allocated and reserved on a GPU, RSS on CPU (GiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"device": str(device), "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}
    rss = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    return {"device": "cpu", "peak_rss_gib": rss}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: input shapes (micro-batch ``input_ids`` sizes, with the model's attention geometry) this
#: process has trained on. Kernels that plan per shape, as cuDNN attention does, pay that plan
#: once per process for each shape, in whichever row meets it first; rows count theirs so a
#: slow first row can be told apart.
_SHAPES_MET: set[tuple] = set()


def attention_geometry(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head width) of a model config: an attention kernel's plan
    is for one of these as much as for one sequence length, so a row of another model meets
    every length anew."""
    heads = getattr(config, "num_attention_heads", None) or 0
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 0)
    return heads, getattr(config, "num_key_value_heads", None) or heads, head_dim


def new_input_shapes(window: list[dict], geometry: tuple = ()) -> int:
    """How many micro-batches of ``window`` have an input shape this process had not met yet
    with a model of this attention ``geometry``."""
    new = 0
    for batch in window:
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if ids is None:
            continue
        shape = (geometry, tuple(ids.shape))
        if shape not in _SHAPES_MET:
            _SHAPES_MET.add(shape)
            new += 1
    return new


@dataclass
class Throughput:
    """Samples and tokens trained, timed over optimizer steps after the warm-up ones."""

    warmup_steps: int
    steps: int = 0
    timed_steps: int = 0
    timed_seconds: float = 0.0
    timed_samples: int = 0
    timed_tokens: int = 0
    total_samples: int = 0
    total_tokens: int = 0
    total_label_tokens: int = 0
    step_seconds: list[float] = field(default_factory=list)
    new_shapes: int = 0  # micro-batches whose input shape the process met first here
    timed_new_shapes: int = 0

    def add_step(self, seconds: float, samples: int, tokens: int, label_tokens: int, new_shapes: int = 0) -> None:
        self.steps += 1
        self.new_shapes += new_shapes
        self.total_samples += samples
        self.total_tokens += tokens
        self.total_label_tokens += label_tokens
        self.step_seconds.append(seconds)
        if self.steps > self.warmup_steps:
            self.timed_steps += 1
            self.timed_seconds += seconds
            self.timed_samples += samples
            self.timed_tokens += tokens
            self.timed_new_shapes += new_shapes

    def summary(self) -> dict:
        out = {"optimizer_steps": self.steps, "timed_steps": self.timed_steps,
               "train_samples": self.total_samples, "train_tokens": self.total_tokens,
               "train_label_tokens": self.total_label_tokens, "train_seconds": sum(self.step_seconds),
               "timing_warmup_steps": self.warmup_steps, "step_seconds": list(self.step_seconds),
               "new_input_shapes": self.new_shapes, "timed_new_input_shapes": self.timed_new_shapes}
        if self.timed_seconds > 0:
            out["samples_per_s"] = self.timed_samples / self.timed_seconds
            out["tokens_per_s"] = self.timed_tokens / self.timed_seconds
        return out


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


class StepClock:
    """Times optimizer steps, in one of two ways.

    ``overlap=False`` (the loop's default): the device is synchronised at each step's start
    and end, so a step's time is its own wall time and the host's work between steps (the
    next batch, progress, checks) is left out.

    ``overlap=True`` on a GPU: nothing waits for the GPU at step boundaries, so the host
    queues step n+1 while the GPU still runs step n, as a training job runs between its log
    lines. A CUDA event recorded after each step's queued work marks its end on the GPU's
    timeline; the previous step's end (or the first step's start, or a resume after a
    pause) marks its start. The steps' times then add up to the GPU timeline they took,
    idle gaps while the GPU waited for the host included. Read once, at the end. On a CPU,
    where work is synchronous, both ways time the same wall clock.
    """

    def __init__(self, device: torch.device, overlap: bool = False):
        self.device = device
        self.events = overlap and device.type == "cuda"
        self.spans: list[tuple] = []
        self._start = None

    def _mark(self):
        if self.events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        synchronize(self.device)
        return time.perf_counter()

    def step_begins(self) -> None:
        if self._start is None or not self.events:
            self._start = self._mark()

    def step_ends(self) -> None:
        end = self._mark()
        self.spans.append((self._start, end))
        self._start = end if self.events else None

    def pause(self) -> None:
        """Work that is not a step follows (evaluation): the next step starts its own span."""
        self._start = None

    def seconds(self) -> list[float]:
        if self.events:
            torch.cuda.synchronize(self.device)
            return [start.elapsed_time(end) / 1000 for start, end in self.spans]
        return [end - start for start, end in self.spans]


def _git_revision() -> str | None:
    """HEAD's short hash, with ``+dirty`` when tracked files differ from it (a row run from an
    edited or copied checkout must not claim to be exactly that commit)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        if not head:
            return None
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str | None:
    """The host CPU's model name (Linux), which ``platform`` leaves empty on most machines."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def host_op_us(device: torch.device, ops: int = 2000) -> float:
    """Microseconds the host takes to issue one tiny tensor operation on ``device``.

    A batch-1 row on a large GPU waits on the host's launches, so two machines with one GPU
    model but different host CPUs time the same row differently (docs/performance.md has
    repeats 1.9x apart). Issuing a stream of one-element adds and waiting for the last
    measures that cost directly: the kernels are too small for the GPU to be the limit.
    """
    x = torch.zeros(1, device=device)
    for _ in range(50):  # warm the allocator and the kernel cache
        x.add_(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(ops):
        x.add_(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / ops * 1e6


def environment(device: torch.device) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("tunerkit", "torch", "transformers", "peft", "accelerate", "trl", "galore-torch",
                "liger-kernel", "deepspeed", "flash-attn"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    env = {"python": platform.python_version(), "platform": platform.platform(), "versions": versions,
           "git_revision": _git_revision(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cpu_model": cpu_model(), "host_op_us": round(host_op_us(device), 3)}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["gpu_count"] = torch.cuda.device_count()
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def logical_numel(p) -> int:
    """Elements a parameter stands for, not what its storage holds: DeepSpeed ZeRO-3 keeps a
    partition (``ds_numel`` is the whole), bitsandbytes packs two 4-bit weights a byte
    (``quant_state.shape`` is the original)."""
    if hasattr(p, "ds_numel"):
        return int(p.ds_numel)
    state = getattr(p, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return int(math.prod(state.shape))
    return p.numel()


def packed_linear_numel(module) -> int | None:
    """The weights a quantized linear layer stands for (``in_features x out_features``, plus
    its bias), or None for any other module.

    GPTQ and AWQ layers keep their packed integers, scales and zero points as buffers, and
    AQLM layers keep codes and codebooks as parameters of other shapes, so counting their
    tensors reports the storage (a 7.7 B model read as 1.25 B parameters). A layer is taken
    for a quantized linear when it is a leaf that names ``in_features`` and ``out_features``
    but holds no floating-point weight of that many elements (a plain ``nn.Linear`` does)."""
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if not (isinstance(n_in, int) and isinstance(n_out, int)) or next(module.children(), None) is not None:
        return None
    own = list(module.parameters(recurse=False))
    if any(p.is_floating_point() and logical_numel(p) == n_in * n_out for p in own):
        return None
    bias = getattr(module, "bias", None)
    return n_in * n_out + (logical_numel(bias) if isinstance(bias, torch.Tensor) else 0)


def count_parameters(model) -> dict:
    """Trainable and total parameters as the model's weights count them, whatever their storage
    (ZeRO-3 partitions, bitsandbytes' packed bytes, GPTQ/AWQ/AQLM packed layers)."""
    trainable = sum(logical_numel(p) for p in model.parameters() if p.requires_grad)
    total, packed = 0, set()
    for module in model.modules():
        n = packed_linear_numel(module)
        if n is not None:
            total += n
            packed.update(id(p) for p in module.parameters(recurse=False))
    total += sum(logical_numel(p) for p in model.parameters() if id(p) not in packed)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_params_m": trainable / 1e6, "trainable_pct": 100.0 * trainable / max(total, 1)}
