"""Sequence parallelism on 2 GPUs (NCCL) trains what one GPU trains: same per-step losses, same eval loss.

    BENCH=bench/check_sp_gpu.py bash bench/multi_gpu.sh     # wheels, then this check (~2 min)
    python bench/check_sp_gpu.py                             # when deepspeed already imports

The CPU tests (tests/test_multi_gpu_engines.py) check the same over gloo, where every sample
must have one length. Here the samples have different, odd lengths (the plugin pads each to
a multiple of sp_size; NCCL gathers uneven pieces) and half of them carry labels only in
their second half, so one piece of those holds no label token. fp32 weights keep the
comparison tight. Rows: Ulysses alone (DeepSpeed without ZeRO) and Ulysses under ZeRO-3, on
two processes (torchrun), against the same samples on one GPU, all through tunerkit's loop.
Exit code 0 when every row matches.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4  # fp32 on GPU: reductions run in a different order on 1 and 2 GPUs

RECIPE = """
[recipe]
name = "sp-check"

[defaults]
model = "tiny-llama"
dtype = "fp32"
attention = "sdpa"
dataset = "{data}"
max_length = 512
learning_rate = 1e-3
lr_scheduler = "constant"
warmup_ratio = 0.0
max_steps = 4
batch_size = 1
gradient_accumulation_steps = 2
gradient_checkpointing = true
eval_dataset = "{data}"
evaluate = ["eval_loss"]
gpus = {gpus}

{rows}
"""

SP_ROWS = """
[[row]]
name = "ulysses"
plugins = ["full", "sequence_parallel"]
sequence_parallel = { sp_size = 2 }

[[row]]
name = "ulysses-zero3"
plugins = ["full", "deepspeed", "sequence_parallel"]
deepspeed = { zero_stage = 3 }
sequence_parallel = { sp_size = 2 }
"""

BASE_ROWS = """
[[row]]
name = "one-gpu"
plugins = ["full"]
"""


def write_tokens(path: Path, rows: int = 24) -> None:
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(rows):
            n = rng.randrange(101, 400) | 1  # odd: every sample needs the plugin's padding
            ids = [rng.randrange(10, 40000) for _ in range(n)]
            labels = list(ids) if i % 2 else [-100] * (n * 2 // 3) + ids[n * 2 // 3:]
            fh.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")


def run(folder: Path, recipe: str, world: int, env: dict) -> dict:
    """Every row of ``recipe`` through tunerkit's loop on ``world`` processes; rank 0's metrics by row name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.toml").write_text(recipe)
    worker = [str(Path(__file__).resolve()), "--worker", str(folder)]
    if world == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", *worker]
    done = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True)
    if done.returncode:
        print((done.stdout + done.stderr)[-4000:], flush=True)
    results = folder / "results.json"
    return json.loads(results.read_text()) if results.exists() else {}


def worker(folder: Path) -> None:
    """Inside the launch: run the rows, rank 0 writes their metrics (or failure reasons)."""
    sys.path.insert(0, str(REPO / "bench"))
    from multi_gpu import ensure_plugins  # plugins found even when the checkout is not pip-installed

    ensure_plugins()
    from tunerkit.loop import run_row
    from tunerkit.recipe import load_recipe

    out = {}
    for row in load_recipe(folder / "recipe.toml").rows:
        try:
            out[row.name] = {"status": "ok", **run_row(row, folder / "runs" / row.name)}
        except Exception as err:  # every rank fails alike here (or the launch hangs and times out)
            out[row.name] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:300]}
    if os.environ.get("RANK", "0") == "0":
        (folder / "results.json").write_text(json.dumps(out, default=str))


def close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * max(abs(a), abs(b))


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]))
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "tokens.jsonl"
        write_tokens(data)
        first_gpu = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        base = run(tmp / "one", RECIPE.format(data=data, gpus=1, rows=BASE_ROWS), 1,
                   {**env, "CUDA_VISIBLE_DEVICES": first_gpu}).get("one-gpu")
        pair = run(tmp / "two", RECIPE.format(data=data, gpus=2, rows=SP_ROWS), 2, env)
    if not base or base["status"] != "ok":
        print(f"FAIL: the one-GPU baseline failed: {base and base['reason']}")
        return 1
    ok = True
    print(f"\none GPU: losses {base['train_loss_curve']}, eval {base['eval_loss']:.6f}")
    for name in ("ulysses", "ulysses-zero3"):
        m = pair.get(name)
        if m is None or m["status"] != "ok":
            print(f"FAIL {name}: {m and m['reason']}")
            ok = False
            continue
        same = (len(m["train_loss_curve"]) == len(base["train_loss_curve"])
                and all(close(a, b) for a, b in zip(m["train_loss_curve"], base["train_loss_curve"]))
                and close(m["eval_loss"], base["eval_loss"]))
        same = same and m.get("effective_dp_size") == 1 and len(m["memory"]) == 2
        labels = (m.get("train_label_tokens"), base.get("train_label_tokens"))
        print(f"{'PASS' if same else 'FAIL'} {name}: losses {m['train_loss_curve']}, eval {m['eval_loss']:.6f}, "
              f"label tokens {labels[0]} vs {labels[1]}, memory per GPU "
              f"{[round(e.get('peak_allocated_gib', 0), 2) for e in m['memory']]} GiB")
        ok = ok and same and labels[0] == labels[1]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
