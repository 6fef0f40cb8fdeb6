"""Where a training step's time goes: GPU kernel time by kind, and the GPU's idle share.

Used by ``bench/fast_path.py --profile CONFIGS``: in a separate short run of each config,
torch.profiler records ``--profile-steps`` steps after its warm-up (the timed run is never
profiled, so its timing is not perturbed), and this module sums the recorded
CUDA kernels into a few kinds (matmuls, attention, fused Triton kernels, optimizer,
copies, other elementwise work). The window's wall time minus the union of kernel
intervals is time the GPU sat idle — launch overhead and host-side work, the part kernel
fusion and CUDA graphs remove. Nothing here is a timing source for the speed table.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

#: (kind, pattern on the kernel name), first match wins. Names are those CUDA reports:
#: cuBLAS/CUTLASS gemms (nvjet, sm90_xmma, cutlass), cuDNN/flash attention, Triton kernels
#: (liger's and inductor's), torch's fused optimizer and its elementwise/reduce kernels.
KINDS: list[tuple[str, re.Pattern]] = [
    ("copy", re.compile(r"memcpy|memset|Memcpy|Memset", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|attn|sdpa|varlen", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|matmul|splitK|cublas", re.I)),
    ("optimizer", re.compile(r"multi_tensor|adam|fused_optim", re.I)),
    ("triton", re.compile(r"^triton_|_kernel_\d*$|rms_norm|swiglu|rope|cross_entropy|liger", re.I)),
    ("elementwise", re.compile(r"elementwise|reduce|vectorized|unrolled|index|cat|copy_|fill", re.I)),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


@dataclass
class Kernel:
    name: str
    start_us: float
    end_us: float


def union_us(kernels: list[Kernel]) -> float:
    """Microseconds during which at least one kernel ran (overlapping streams counted once)."""
    total, cur_start, cur_end = 0.0, None, None
    for k in sorted(kernels, key=lambda k: k.start_us):
        if cur_end is None or k.start_us > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = k.start_us, k.end_us
        else:
            cur_end = max(cur_end, k.end_us)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def breakdown(kernels: list[Kernel], wall_s: float, steps: int, top: int = 12) -> dict:
    """Per-step milliseconds by kind, the GPU's busy and idle share of the window, the top kernels."""
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for k in kernels:
        us = max(k.end_us - k.start_us, 0.0)
        by_kind[kind_of(k.name)] += us
        by_name[k.name][0] += us
        by_name[k.name][1] += 1
    steps = max(steps, 1)
    wall_ms = wall_s * 1e3
    busy_ms = union_us(kernels) / 1e3
    largest_first = sorted(by_kind.items(), key=lambda kv: -kv[1])
    per_step = {kind: round(us / 1e3 / steps, 3) for kind, us in largest_first}
    kernel_ms = sum(by_kind.values()) / 1e3
    return {
        "steps": steps,
        "wall_ms_per_step": round(wall_ms / steps, 3),
        "gpu_busy_ms_per_step": round(busy_ms / steps, 3),
        "gpu_idle_pct": round(100 * max(wall_ms - busy_ms, 0.0) / wall_ms, 1) if wall_ms > 0 else None,
        "kernel_ms_per_step_by_kind": per_step,
        "kernel_pct_by_kind": {kind: round(100 * us / 1e3 / kernel_ms, 1) for kind, us in largest_first}
        if kernel_ms else {},
        "kernels_per_step": round(len(kernels) / steps, 1),
        "top_kernels": [{"name": n[:120], "ms_per_step": round(v[0] / 1e3 / steps, 3), "calls_per_step": v[1] / steps}
                        for n, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]],
    }


@dataclass
class HostOp:
    name: str
    self_cpu_us: float  # host time in the op itself, its children's left out
    calls: int


def host_breakdown(ops: list[HostOp], steps: int, top: int = 12) -> dict:
    """Where the host's time goes: the ops with the most self CPU time per step. A step the GPU
    idles through (a large ``gpu_idle_pct``) waits on these; the profiler's own overhead per
    recorded op inflates them, so read them against each other."""
    steps = max(steps, 1)
    ranked = sorted(ops, key=lambda op: -op.self_cpu_us)
    return {"host_self_ms_per_step": round(sum(op.self_cpu_us for op in ops) / 1e3 / steps, 3),
            "top_host_ops": [{"name": op.name[:120], "self_ms_per_step": round(op.self_cpu_us / 1e3 / steps, 3),
                              "calls_per_step": op.calls / steps} for op in ranked[:top]]}


class StepProfiler:
    """start() before the first profiled step, stop(steps) after the last: records CUDA kernels."""

    def __init__(self):
        self.prof = None
        self.began = 0.0
        self.result: dict | None = None

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        cuda = torch.cuda.is_available()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        if cuda:
            torch.cuda.synchronize()
        self.prof = profile(activities=activities, record_shapes=False, with_stack=False)
        self.prof.__enter__()
        self.began = time.perf_counter()

    def stop(self, steps: int) -> dict:
        if self.prof is None:
            return {}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.began
        self.prof.__exit__(None, None, None)
        kernels = [Kernel(e.name, e.time_range.start, e.time_range.end) for e in self.prof.events()
                   if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
        host = [HostOp(a.key, a.self_cpu_time_total, a.count) for a in self.prof.key_averages()]
        self.prof = None
        if kernels:
            self.result = {**breakdown(kernels, wall, steps), **host_breakdown(host, steps)}
        else:
            self.result = {"steps": steps, "wall_ms_per_step": round(wall * 1e3 / max(steps, 1), 3),
                           "note": "no CUDA kernels recorded (not a GPU run): wall time only"}
        return self.result
