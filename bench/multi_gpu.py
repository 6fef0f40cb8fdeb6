"""Multi-GPU bench: DDP scaling, Ulysses sequence parallelism, the longest sequence that trains.

    bash bench/multi_gpu.sh                 # wheels, then this script for the GPUs visible (2 or 4); ~8 min
    python bench/multi_gpu.py               # the same without the wheel setup
    python bench/multi_gpu.py --smoke       # tiny shapes, 2 CPU processes over gloo: the plumbing only

What runs (every figure from tunerkit's own loop, ``tunerkit.loop.run_row``):

1. DDP: LoRA (ALL linear) + packing on the qwen-7b-chat preset, 2048-token rows, batch 1,
   grad-accum 4: on 1 GPU and on all GPUs; tokens/s of all GPUs together and per GPU,
   peak memory per GPU (ms-swift's "lora+packing+ddp" row: 35.65GiB*2).
2. ms-swift's Sequence Parallel table shape: chatglm3-6b-32k preset, LoRA, samples of 8055
   tokens (long-alpaca-12k), batch 1, no accumulation: gpu=2/sp=1 (DDP) and gpu=2/sp=2 on
   two GPUs; gpu=4/sp=1, gpu=4/sp=2 and gpu=4/sp=4 on four. Optimizer steps/s (ms-swift's
   iter/s; a step trains gpus/sp samples), tokens/s per GPU, peak memory per GPU.
3. The longest sequence LoRA on qwen-7b-chat trains (one optimizer step), doubling the
   length until it runs out of memory: 1 GPU (two-GPU host), SP=2 (two-GPU host), SP=4
   (four-GPU host); liger's fused linear cross-entropy on when liger is installed. A length
   whose step takes longer than --step-cap-s ends the search without an OOM ("time cap").

Each group of configurations is one launch (torchrun for several GPUs, a plain process for
one): a rank that runs out of memory exits at once, torchrun stops the others, and the next
launch starts clean, so an OOM never hangs a collective. Tables are printed as launches
finish; JSON goes to $OUT/multi_gpu.json (and --json) after every launch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout
    sys.path.insert(0, str(REPO))

GIB = 1024 ** 3
# ms-swift's Sequence Parallel table (A100, chatglm3-6b-32k, long-alpaca-12k).
SEED_SP = {(2, 1): "0.30 it/s, 27G*2", (2, 2): "0.5 it/s, 20G*2", (4, 4): "1 it/s, 18G*4", (4, 2): "0.45 it/s, 21G*4"}


# -----------------------------------------------------------------------------------------
# Plugins: entry points when installed, else the checkout's pyproject table
# -----------------------------------------------------------------------------------------


def ensure_plugins() -> None:
    """Make tunerkit's plugins discoverable even when the checkout is not pip-installed."""
    from tunerkit import plugins

    if "deepspeed" in plugins.registry():
        return
    import importlib
    import tomllib

    table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["tunerkit.plugins"]
    found = {}
    for name, target in table.items():
        module, _, attr = target.partition(":")
        try:
            found[name] = getattr(importlib.import_module(module), attr)
        except Exception as err:  # a plugin whose library is missing stays out, like a broken entry point
            found[name] = plugins._broken(name, target, err)
    plugins._REGISTRY = found


# -----------------------------------------------------------------------------------------
# Configurations
# -----------------------------------------------------------------------------------------


def synthetic(dist: str, rows: int, length: int | None = None) -> str:
    spec = f"synthetic:lengths?dist={dist}&rows={rows}"
    if length is not None:
        spec += f"&mean={length}&min={length}&max={length}&sd=0"
    return spec


def models(smoke: bool) -> dict:
    if smoke:
        return {"ddp": "tiny-qwen2", "sp": "tiny-llama", "long": "tiny-qwen2"}
    return {"ddp": "qwen-7b-chat", "sp": "chatglm3-6b-32k", "long": "qwen-7b-chat"}


def ddp_job(args, gpus: int) -> dict:
    smoke = args.smoke
    # ms-swift's rule: samples over max_length are deleted (about 70 % of cls-fudan-news-zh at 2048).
    table = dict(model=models(smoke)["ddp"], dataset=synthetic("cls-fudan-news-zh", 200 if smoke else 1000),
                 max_length=2048, batch_size=1,
                 gradient_accumulation_steps=4, max_steps=3 if smoke else args.steps,
                 timing_warmup_steps=1 if smoke else 2, evaluate=[], gpus=gpus, lora={"targets": "ALL"})
    plugins = ["lora"] + (["packing"] if "packing" in available() else [])
    return {"kind": "measure", "part": "ddp", "label": f"lora+{'packing+' if 'packing' in plugins else ''}"
            f"{'ddp' if gpus > 1 else '1gpu'} x{gpus}", "gpus": gpus, "sp": 1, "plugins": plugins, "table": table}


def sp_job(args, gpus: int, sp: int) -> dict:
    smoke = args.smoke
    data = synthetic("long-alpaca-12k", 16, 200) if smoke else synthetic("long-alpaca-12k", 8 * args.steps)
    table = dict(model=models(smoke)["sp"], dataset=data, max_length=256 if smoke else 8192, batch_size=1,
                 gradient_accumulation_steps=1, max_steps=3 if smoke else args.steps,
                 timing_warmup_steps=1 if smoke else 2, evaluate=[], gpus=gpus)
    plugins = ["lora"]
    if sp > 1:
        plugins.append("sequence_parallel")
        table["sequence_parallel"] = {"sp_size": sp}
    return {"kind": "measure", "part": "sp", "label": f"gpu={gpus}/sp={sp}", "gpus": gpus, "sp": sp,
            "plugins": plugins, "table": table}


def longest_job(args, gpus: int, sp: int) -> dict:
    smoke = args.smoke
    plugins = ["lora"]
    table = dict(model=models(smoke)["long"], batch_size=1, gradient_accumulation_steps=1, max_steps=1,
                 timing_warmup_steps=0, evaluate=[], gpus=gpus)
    if "liger" in available() and not smoke:
        plugins.append("liger")
        table["liger"] = {"rope": False, "rms_norm": False, "swiglu": False, "fused_linear_cross_entropy": True}
    if sp > 1:
        plugins.append("sequence_parallel")
        table["sequence_parallel"] = {"sp_size": sp}
    start = 128 if smoke else args.start_length
    cap = 1024 if smoke else args.max_length
    lengths = []
    while start <= cap:
        lengths.append(start)
        start *= 2
    return {"kind": "longest", "part": "longest", "label": "1 GPU" if gpus == 1 else f"SP={sp} ({gpus} GPUs)",
            "gpus": gpus, "sp": sp, "plugins": plugins, "table": table, "lengths": lengths,
            "step_cap_s": args.step_cap_s}


def plan(args, gpus: int) -> list[dict]:
    """Launches for a host with ``gpus`` GPUs: [{"world": n, "jobs": [...]}, ...]."""
    launches = []
    if gpus == 2 or args.smoke:
        launches.append({"world": 2, "jobs": [sp_job(args, 2, 1), sp_job(args, 2, 2), ddp_job(args, 2),
                                              longest_job(args, 2, 2)]})
        launches.append({"world": 1, "jobs": [ddp_job(args, 1), longest_job(args, 1, 1)]})
    elif gpus >= 4:
        launches.append({"world": 4, "jobs": [sp_job(args, 4, 1), sp_job(args, 4, 2), sp_job(args, 4, 4),
                                              ddp_job(args, 4), longest_job(args, 4, 4)]})
    else:
        raise SystemExit(f"this bench needs 2 or 4 GPUs (found {gpus}); --smoke runs on CPU")
    return launches


_AVAILABLE: set[str] | None = None


def available() -> set[str]:
    """Plugins that load here (packing and liger are optional for this bench)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        ensure_plugins()
        from tunerkit.plugins import registry

        _AVAILABLE = {n for n, c in registry().items() if not getattr(c, "load_error", None)}
        if "liger" in _AVAILABLE:
            import importlib.util

            if importlib.util.find_spec("liger_kernel") is None:
                _AVAILABLE.discard("liger")
    return _AVAILABLE


# -----------------------------------------------------------------------------------------
# Worker: runs one launch's jobs inside torchrun (or alone)
# -----------------------------------------------------------------------------------------


def build_row(job: dict, **overrides):
    from tunerkit.recipe import make_row
    from tunerkit.validation import validate_row

    table = {**job["table"], **overrides}
    row = make_row(job["label"].replace(" ", "_"), list(job["plugins"]), **table)
    validate_row(row, file="<bench>")
    return row


def summarize(metrics: dict, job: dict, world: int) -> dict:
    """The figures the tables show; per-GPU throughput whether or not the loop reports it itself."""
    keep = ("optimizer_steps", "timed_steps", "train_samples", "train_tokens", "train_seconds", "samples_per_s",
            "tokens_per_s", "tokens_per_s_per_gpu", "samples_per_s_per_gpu", "memory", "attention", "world_size",
            "effective_dp_size", "sp_size", "trainable_params", "packing_efficiency", "liger_kernels")
    out = {k: metrics[k] for k in keep if k in metrics}
    dp = world // job["sp"]
    if "tokens_per_s" in metrics and "tokens_per_s_per_gpu" not in metrics:
        # A loop that reports rank 0's own figures: rank 0 counted its data-parallel group's samples.
        out["tokens_per_s"] = metrics["tokens_per_s"] * dp
        out["samples_per_s"] = metrics.get("samples_per_s", 0.0) * dp
        out["tokens_per_s_per_gpu"] = out["tokens_per_s"] / world
        out["samples_per_s_per_gpu"] = out["samples_per_s"] / world
        out["throughput_note"] = "derived from rank 0's figures x data-parallel width"
    if out.get("samples_per_s") and "packing" not in job["plugins"]:
        # Optimizer steps per second, ms-swift's it/s: a step trains dp x accumulation x batch samples.
        per_step = dp * job["table"]["gradient_accumulation_steps"] * job["table"]["batch_size"]
        out["steps_per_s"] = out["samples_per_s"] / per_step
    return out


class Recorder:
    """This launch's entries, rewritten to disk by rank 0 whenever one changes (a killed launch keeps them)."""

    def __init__(self, path: str, rank: int):
        self.path, self.rank, self.entries = Path(path), rank, []

    def start(self, job: dict, **fields) -> dict:
        entry = {**{k: job[k] for k in ("part", "label", "gpus", "sp")}, "status": "running", **fields}
        self.entries.append(entry)
        self.flush()
        return entry

    def flush(self) -> None:
        if self.rank == 0:
            self.path.write_text(json.dumps(self.entries, default=str))


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    ensure_plugins()
    from tunerkit.loop import run_row

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    rec = Recorder(spec["results"], rank)
    scratch = Path(tempfile.mkdtemp(prefix="multi_gpu_"))

    def failed(entry: dict, err: BaseException, field: str = "reason") -> None:
        entry["status"] = "oom" if is_oom(err) else "failed"
        text = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        entry[field] = ("OOM: " if is_oom(err) else "") + text
        if rank == 0 and not is_oom(err):
            traceback.print_exc()
        rec.flush()
        if world > 1:
            # Another rank may sit in a collective this one will never join: leave now and let
            # torchrun stop the others (the record is on disk already).
            sys.stdout.flush()
            os._exit(3)
        release_memory()

    for job in spec["jobs"]:
        if job["kind"] == "measure":
            entry = rec.start(job)
            try:
                row = build_row(job)
                entry.update(summarize(run_row(row, scratch / row.name), job, world), status="ok")
            except Exception as err:
                failed(entry, err)
                continue
            rec.flush()
            release_memory()
            continue
        # longest: double the length until OOM, the step-time cap or the last length
        entry = rec.start(job, trained=[], stopped_by="last length")
        for length in job["lengths"]:
            entry["attempting"] = length
            rec.flush()
            try:
                data = synthetic("long-alpaca-12k", 4 * job["gpus"], length)
                row = build_row(job, max_length=length, dataset=data)
                m = run_row(row, scratch / f"{row.name}_{length}")
            except Exception as err:
                entry["stopped_by"] = "OOM" if is_oom(err) else "error"
                entry["first_failure"] = length
                entry["status"] = "ok" if entry["trained"] else "failed"
                failed(entry, err, field="failure")
                entry["status"] = "ok" if entry["trained"] else entry["status"]
                break
            entry["trained"].append({"length": length, "step_seconds": m.get("train_seconds"),
                                     "memory": m.get("memory"), "liger_kernels": m.get("liger_kernels")})
            entry.pop("attempting", None)
            rec.flush()
            release_memory()
            if (m.get("train_seconds") or 0) > job["step_cap_s"]:
                entry["stopped_by"] = f"time cap ({m['train_seconds']:.0f} s/step > {job['step_cap_s']:.0f} s)"
                break
        entry["status"] = "ok" if entry["trained"] else "failed"
        rec.flush()


# -----------------------------------------------------------------------------------------
# Driver: launches, tables, JSON
# -----------------------------------------------------------------------------------------


def launch(spec: dict, world: int, timeout: float, smoke: bool) -> tuple[list[dict], str]:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, results = Path(tmp) / "spec.json", Path(tmp) / "results.json"
        spec_path.write_text(json.dumps({**spec, "results": str(results)}))
        script = str(Path(__file__).resolve())
        if world == 1:
            cmd = [sys.executable, script, "--worker", str(spec_path)]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                   script, "--worker", str(spec_path)]
        env = dict(os.environ)
        if smoke:
            env.setdefault("OMP_NUM_THREADS", "1")
        try:
            done = subprocess.run(cmd, env=env, timeout=max(timeout, 30), text=True, capture_output=True)
            status = f"exit {done.returncode}"
            tail = (done.stdout + done.stderr)[-4000:]
        except subprocess.TimeoutExpired as err:
            status = f"timed out after {timeout:.0f} s"
            tail = ((err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace"))[-4000:]
        rows = json.loads(results.read_text()) if results.exists() else []
    if status != "exit 0":
        print(f"  launch of {world} process(es): {status}", flush=True)
        if not rows or rows[-1].get("status") == "failed":
            print("  " + tail.replace("\n", "\n  "), flush=True)
    for r in rows:
        if r["status"] == "running":  # this rank's job when another rank ended the launch
            r.update(status="failed", reason=f"launch ended ({status}): another rank failed, most likely out of memory")
        if r.get("attempting"):
            r.setdefault("stopped_by", "launch ended")
            r["stopped_by"] = f"launch ended at {r['attempting']} ({status}), most likely out of memory"
            r["first_failure"] = r.pop("attempting")
            r["status"] = "ok" if r.get("trained") else "failed"
    done_labels = {r["label"] for r in rows}
    for job in spec["jobs"]:
        if job["label"] not in done_labels:
            rows.append({**{k: job[k] for k in ("part", "label", "gpus", "sp")}, "status": "not run",
                         "reason": f"launch ended early ({status})"})
    return rows, status


def gib(memory: list[dict] | None, key: str = "peak_allocated_gib") -> str:
    if not memory:
        return "-"
    values = [m.get(key, m.get("peak_rss_gib")) for m in memory]
    return " / ".join(f"{v:.1f}" for v in values if v is not None)


def fmt(value, spec=".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_tables(results: list[dict]) -> None:
    ddp = [r for r in results if r["part"] == "ddp"]
    if ddp:
        one = next((r for r in ddp if r["gpus"] == 1 and r["status"] == "ok"), None)
        print("\n### DDP: LoRA ALL + packing, qwen-7b-chat shape\n")
        print("| config | GPUs | tokens/s (all GPUs) | tokens/s per GPU | per-GPU vs 1 GPU | peak alloc GiB per GPU |"
              " peak reserved GiB per GPU | status |")
        print("|---|---|---|---|---|---|---|---|")
        for r in ddp:
            per = r.get("tokens_per_s_per_gpu")
            base = one.get("tokens_per_s_per_gpu") if one else None
            ratio = f"{per / base:.2f}" if per and base else "-"
            print(f"| {r['label']} | {r['gpus']} | {fmt(r.get('tokens_per_s'))} | {fmt(per)} | {ratio} | "
                  f"{gib(r.get('memory'))} | {gib(r.get('memory'), 'peak_reserved_gib')} | {status(r)} |")
    sp = [r for r in results if r["part"] == "sp"]
    if sp:
        print("\n### Sequence parallel: chatglm3-6b-32k shape, LoRA, 8055-token samples, batch 1\n")
        print("| gpus/sp | data-parallel width | optimizer steps/s | samples/s | tokens/s per GPU |"
              " peak alloc GiB per GPU | peak reserved GiB per GPU | ms-swift (A100) | status |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in sp:
            print(f"| {r['label']} | {r['gpus'] // r['sp']} | {fmt(r.get('steps_per_s'), '.3f')} | "
                  f"{fmt(r.get('samples_per_s'), '.3f')} | {fmt(r.get('tokens_per_s_per_gpu'))} | "
                  f"{gib(r.get('memory'))} | {gib(r.get('memory'), 'peak_reserved_gib')} | "
                  f"{SEED_SP.get((r['gpus'], r['sp']), '-')} | {status(r)} |")
    longest = [r for r in results if r["part"] == "longest"]
    if longest:
        print("\n### Longest sequence trained: LoRA, qwen-7b-chat shape, one optimizer step\n")
        print("| config | longest trained (tokens) | first failing length | stopped by | step s at longest |"
              " peak alloc GiB per GPU at longest | peak reserved GiB per GPU at longest |")
        print("|---|---|---|---|---|---|---|")
        for r in longest:
            best = (r.get("trained") or [None])[-1]
            print(f"| {r['label']} | {best['length'] if best else '-'} | {r.get('first_failure', '-')} | "
                  f"{r.get('stopped_by') or status(r)} | {fmt(best and best.get('step_seconds'), '.1f')} | "
                  f"{gib(best and best.get('memory'))} | {gib(best and best.get('memory'), 'peak_reserved_gib')} |")


def status(r: dict) -> str:
    return r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"[:160]


def environment() -> dict:
    import importlib.metadata as md

    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
           "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    for pkg in ("transformers", "peft", "accelerate", "deepspeed", "liger-kernel"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--gpus", type=int, help="GPUs to use (default: all visible)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (gloo), plumbing only")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per measured row (2 of them warm-up)")
    parser.add_argument("--start-length", type=int, default=16384, help="first length of the longest-sequence search")
    parser.add_argument("--max-length", type=int, default=262144, help="last length of the longest-sequence search")
    parser.add_argument("--step-cap-s", type=float, default=30.0, help="stop doubling once a step takes longer")
    parser.add_argument("--time-limit", type=float, default=480.0, help="seconds for the whole bench")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0

    import torch

    started = time.perf_counter()
    gpus = args.gpus or (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if args.smoke:
        gpus = 2
    env = environment()
    print(f"multi-GPU bench: {env['device']} x{env['gpus']}, torch {env['torch']}, transformers "
          f"{env['transformers']}, accelerate {env['accelerate']}, deepspeed {env['deepspeed']}, "
          f"liger-kernel {env['liger-kernel']}; plugins: {', '.join(sorted(available()))}", flush=True)
    missing = {"deepspeed", "sequence_parallel"} - available()
    if missing:
        print(f"warning: plugins not loadable here: {', '.join(sorted(missing))} (is deepspeed installed?)")
    out_path = Path(os.environ["OUT"]) / "multi_gpu.json" if os.environ.get("OUT") else None
    payload = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "launches": [],
               "results": []}
    for spec in plan(args, gpus):
        left = args.time_limit - (time.perf_counter() - started)
        labels = ", ".join(j["label"] for j in spec["jobs"])
        if left < 30:
            print(f"\nskipped (time limit): {labels}", flush=True)
            payload["results"] += [{**{k: j[k] for k in ("part", "label", "gpus", "sp")}, "status": "not run",
                                    "reason": "time limit"} for j in spec["jobs"]]
            continue
        print(f"\nlaunch: {spec['world']} process(es): {labels}", flush=True)
        t0 = time.perf_counter()
        rows, state = launch(spec, spec["world"], left, args.smoke)
        payload["launches"].append({"world": spec["world"], "jobs": labels, "status": state,
                                    "seconds": time.perf_counter() - t0})
        payload["results"] += rows
        print_tables(rows)
        for path in (out_path, args.json):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(payload, indent=1, default=str))
    print("\n## All results", flush=True)
    print_tables(payload["results"])
    print(f"\n{time.perf_counter() - started:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
