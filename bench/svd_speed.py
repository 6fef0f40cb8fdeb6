"""How long GaLore's projector refresh takes: torch.linalg.svd of the matrices GaLore projects.

galore-torch computes, for every projected matrix, ``torch.linalg.svd(grad.float(),
full_matrices=False)`` on its first step and every ``update_proj_gap`` steps after. On the
qwen-7b-chat shape that is 224 matrices (q, k, v, o: 4096 x 4096; gate, up: 11008 x 4096;
down: 4096 x 11008), and a whole GaLore row did not finish its first steps within five
minutes on one H200. This script times one SVD of each shape under each cuSOLVER driver
torch offers and under each linear-algebra backend, and multiplies by the count, so the
first step's refresh cost is a measurement, not a guess.

    python bench/svd_speed.py                      # the qwen-7b-chat shape, GPU
    python bench/svd_speed.py --model tiny-llama   # any preset (a CPU run times the CPU's LAPACK)

Results: a table on stdout, JSON in $OUT/svd_speed.json when $OUT is set (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import torch


def projected_shapes(model: str) -> Counter:
    """Shape -> count of the matrices GaLore projects (every linear layer of the decoder)."""
    from transformers import AutoModelForCausalLM

    from tunerkit.models.presets import get_preset

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(get_preset(model).config())
    shapes = Counter()
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            shapes[tuple(module.weight.shape)] += 1
    return shapes


def time_svd(shape: tuple[int, int], device: str, driver: str | None, repeats: int) -> float:
    """Median seconds of one reduced SVD of a random float32 matrix of ``shape``."""
    g = torch.Generator(device=device).manual_seed(0)
    m = torch.randn(shape, device=device, dtype=torch.float32, generator=g)
    kwargs = {"full_matrices": False}
    if driver is not None:
        kwargs["driver"] = driver
    torch.linalg.svd(m, **kwargs)  # warm-up: handles, workspaces
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.linalg.svd(m, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def subspace_agreement(shape: tuple[int, int], device: str, driver: str | None, rank: int) -> dict:
    """How well ``driver`` finds the leading ``rank`` singular vectors GaLore keeps, against gesvd.

    The matrix has a gradient-like decaying spectrum (s_i = 1/i, random singular vectors):
    a Gaussian matrix's flat spectrum leaves the top-``rank`` subspace ill-defined. Reported:
    the smallest cosine of the principal angles between the two rank-``rank`` subspaces on the
    projected side (1 = the same subspace) and the relative difference of the rank-``rank``
    approximations' errors.
    """
    g = torch.Generator(device=device).manual_seed(1)
    m, n = shape
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, device=device, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, k, device=device, generator=g))
    s = 1.0 / torch.arange(1, k + 1, device=device, dtype=torch.float32)
    a = (u * s) @ v.T
    kwargs = {"full_matrices": False}
    ref = torch.linalg.svd(a, **kwargs, **({"driver": "gesvd"} if device == "cuda" else {}))
    got = torch.linalg.svd(a, **kwargs, **({"driver": driver} if driver else {}))
    # galore-torch's "std" projection keeps U (left) when m < n, else V (right)
    side = (lambda r: r[0][:, :rank]) if m < n else (lambda r: r[2][:rank].T)
    cos = torch.linalg.svdvals(side(ref).T @ side(got)).min().item()
    def err(r):
        return torch.linalg.matrix_norm(a - (r[0][:, :rank] * r[1][:rank]) @ r[2][:rank]).item()
    return {"min_principal_cos": cos, "rank_approx_error_rel_diff": abs(err(got) - err(ref)) / err(ref)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen-7b-chat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", type=int, default=128, help="GaLore rank whose subspace is compared (ms-swift's 128)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = projected_shapes(args.model)
    variants: list[tuple[str, str | None]] = [("default", None)]
    if device == "cuda":
        variants = [(f"{lib}/{drv or 'default'}", drv) for lib in ("cusolver", "magma")
                    for drv in (None, "gesvd", "gesvdj", "gesvda")]
    print(f"svd speed: {args.model} on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}; projected matrices: "
          + ", ".join(f"{n} x {s[0]}x{s[1]}" for s, n in shapes.items()), flush=True)
    rows = []
    for label, driver in variants:
        if device == "cuda":
            torch.backends.cuda.preferred_linalg_library(label.split("/")[0])
            if label.startswith("magma") and driver is not None:
                continue  # the driver keyword selects cuSOLVER methods; MAGMA has one path
        row = {"variant": label, "per_shape_s": {}, "status": "ok"}
        try:
            for shape in shapes:
                row["per_shape_s"][f"{shape[0]}x{shape[1]}"] = time_svd(shape, device, driver, args.repeats)
            row["refresh_all_s"] = sum(row["per_shape_s"][f"{s[0]}x{s[1]}"] * n for s, n in shapes.items())
            first = next(iter(shapes))
            row["agreement"] = subspace_agreement(first, device, driver, min(args.rank, min(first)))
        except Exception as err:  # noqa: BLE001 - one driver failing must not end the table
            row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        rows.append(row)
        per = "  ".join(f"{k} {v:.3f} s" for k, v in row["per_shape_s"].items())
        total = f"all {sum(shapes.values())}: {row['refresh_all_s']:.1f} s" if row["status"] == "ok" else row["status"]
        agree = row.get("agreement")
        agree = (f"  top-{min(args.rank, min(next(iter(shapes))))} subspace vs gesvd: min cos "
                 f"{agree['min_principal_cos']:.6f}, rank-r error rel diff {agree['rank_approx_error_rel_diff']:.1e}"
                 if agree else "")
        print(f"{label:<20} {per}  {total}{agree}", flush=True)
    if device == "cuda":
        torch.backends.cuda.preferred_linalg_library("default")
    payload = {"model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "torch": torch.__version__, "shapes": {f"{s[0]}x{s[1]}": n for s, n in shapes.items()}, "rows": rows}
    out = args.json or (Path(os.environ["OUT"]) / "svd_speed.json" if os.environ.get("OUT") else None)
    if out:
        out.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
