"""The varlen attention kernels alone: forward and backward time of packed rows, and agreement.

    python bench/attention_kernels.py                          # qwen-7b's heads, rows of 6k and 16k tokens
    python bench/attention_kernels.py --kernels torch_varlen,sdpa:cudnn --rows 6144
    python bench/attention_kernels.py --device cpu --kernels sdpa --rows 256 --heads 2 --repeats 1   # smoke

Rows are filled best-fit with samples whose lengths follow ms-swift's cls-fudan-news-zh
statistics cut to 2048 tokens (what a packed training row holds), q, k and v random bf16
in the (1, heads, tokens, head_dim) layout the packing plugin's attention function gets.
Every kernel runs the same rows through :mod:`varlen_attention`'s own kernel call (the one
a training step's attention function makes); ``sdpa:BACKEND`` is the
per-sample SDPA kernel with torch's SDPA pinned to one backend (cuDNN, FlashAttention-2,
memory-efficient, math). The first kernel named is the reference the others' outputs and
input gradients are compared with. Times are CUDA
event spans of ``--repeats`` calls after ``--warmup``; TFLOP/s counts causal attention's
useful work (forward 2 * 2 * L^2 / 2 * head_dim per head and sample, backward 2.5 times
that). Prints one JSON line per kernel and row size; ``--json`` writes them all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from check_packing_gpu import varlen_module  # noqa: E402

from tunerkit.data.packing import best_fit_decreasing  # noqa: E402
from tunerkit.data.synthetic import DISTRIBUTIONS, sample_lengths  # noqa: E402
from tunerkit.loop import sdpa_kernels  # noqa: E402


def packed_row(capacity: int, longest: int, seed: int) -> list[int]:
    """The sample lengths of the fullest best-fit row of ``capacity`` tokens."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(sample_lengths(DISTRIBUTIONS["cls-fudan-news-zh"], 400, rng), longest).tolist()
    bins = best_fit_decreasing([int(n) for n in lengths], capacity)
    best = max(bins, key=lambda b: sum(lengths[i] for i in b))
    return [int(lengths[i]) for i in best]


def causal_flops(lengths: list[int], heads: int, head_dim: int) -> float:
    """Useful forward FLOPs of causal attention over these samples (QK^T and PV, half the square)."""
    return sum(2 * 2 * n * n / 2 * head_dim * heads for n in lengths)


class Timer:
    """Milliseconds of a span: on the GPU's timeline by CUDA events (the kernels' own time, as
    the profiles of fast_path measure it), on a CPU by the wall clock."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3


def measure(va, kernel: str, q, k, v, cu, max_len: int, repeats: int, warmup: int, device) -> dict:
    """Forward and forward+backward ms of one kernel, and its output and input gradients.
    ``sdpa:BACKEND`` is the per-sample SDPA kernel with torch's SDPA pinned to that backend."""
    kernel, _, backend = kernel.partition(":")
    with sdpa_kernels([backend] if backend else None):  # the row setting's own pinning
        result = _measure(va, kernel, q, k, v, cu, max_len, repeats, warmup, device)
    if backend:
        result["resolved"] += f" ({backend})"
    return result


def _measure(va, kernel: str, q, k, v, cu, max_len: int, repeats: int, warmup: int, device) -> dict:
    resolved = va.resolve_kernel(kernel, device, q.dtype)
    call = {"flash_attn": va._flash, "torch_varlen": va._torch_varlen,
            "sdpa": lambda q, k, v, cu, m, s, d, g: va._sdpa_per_sample(q, k, v, cu, s, d, g)}[resolved]
    scale = q.shape[-1] ** -0.5
    grad_out = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], device=device, dtype=q.dtype,
                           generator=torch.Generator(device).manual_seed(1))
    for _ in range(warmup):
        q.grad = k.grad = v.grad = None
        out = call(q, k, v, cu, max_len, scale, 0.0, 1)
        out.backward(grad_out)
    with torch.no_grad(), Timer(device) as fwd:
        for _ in range(repeats):
            call(q, k, v, cu, max_len, scale, 0.0, 1)
    with Timer(device) as both:
        for _ in range(repeats):
            q.grad = k.grad = v.grad = None
            out = call(q, k, v, cu, max_len, scale, 0.0, 1)
            out.backward(grad_out)
    return {"kernel": kernel, "resolved": va.describe_kernel(resolved), "fwd_ms": fwd.ms / repeats,
            "fwd_bwd_ms": both.ms / repeats, "out": out.detach().float().clone(),
            "grads": [t.grad.detach().float().clone() for t in (q, k, v)]}


def compare(result: dict, reference: dict) -> dict:
    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    return {"out_rel_err": rel(result["out"], reference["out"]),
            "grad_rel_err": max(rel(a, b) for a, b in zip(result["grads"], reference["grads"]))}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="torch_varlen,sdpa:cudnn,sdpa:flash",
                        help="comma-separated; the first is the reference; sdpa:BACKEND pins SDPA per sample to a backend")
    parser.add_argument("--rows", default="6144,16384", help="comma-separated packed row capacities in tokens")
    parser.add_argument("--longest", type=int, default=2048, help="samples cut to this many tokens")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    va = varlen_module()
    results = []
    for capacity in [int(r) for r in args.rows.split(",")]:
        lengths = packed_row(capacity, min(args.longest, capacity), args.seed)
        tokens = sum(lengths)
        gen = torch.Generator(device).manual_seed(args.seed)
        q, k, v = (torch.randn(1, args.heads, tokens, args.head_dim, device=device, dtype=dtype, generator=gen)
                   .requires_grad_() for _ in range(3))
        cu = torch.tensor(np.cumsum([0, *lengths]), device=device, dtype=torch.int32)
        flops = causal_flops(lengths, args.heads, args.head_dim)
        reference = None
        for kernel in [k.strip() for k in args.kernels.split(",") if k.strip()]:
            line = {"row_tokens": tokens, "samples": len(lengths), "kernel": kernel}
            try:
                r = measure(va, kernel, q, k, v, cu, max(lengths), args.repeats, args.warmup, device)
            except Exception as err:  # a kernel this machine lacks is a result, not the end of the run
                line.update(status="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
                print(json.dumps(line), flush=True)
                results.append(line)
                continue
            line.update(status="ok", resolved=r["resolved"], fwd_ms=round(r["fwd_ms"], 3),
                        fwd_bwd_ms=round(r["fwd_bwd_ms"], 3),
                        fwd_tflops=round(flops / r["fwd_ms"] / 1e9, 1),
                        fwd_bwd_tflops=round(3.5 * flops / r["fwd_bwd_ms"] / 1e9, 1))
            if reference is None:
                reference = r
                line["reference"] = True
            else:
                line.update({key: float(f"{val:.3g}") for key, val in compare(r, reference).items()})
                line["fwd_bwd_speedup"] = round(reference["fwd_bwd_ms"] / r["fwd_bwd_ms"], 3)
            print(json.dumps(line), flush=True)
            results.append(line)
    if args.json:
        env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}
        args.json.write_text(json.dumps({"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1))
    return 0 if any(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
