"""Peak GPU memory and speed of the optimizer-side tuners (GaLore, Q-GaLore, LISA) against full AdamW.

One process, one GPU, the qwen-7b-chat shape with random bf16 weights, gradient checkpointing
on, batch 1, synthetic samples of at most 2048 tokens (ms-swift's cls-fudan-news-zh length
distribution cut to 2048, mean ~1820, as in docs of the GPU host), no gradient accumulation (per-parameter GaLore frees gradients
only on the last micro-batch of a window, so accumulation would hide what it saves), a handful
of optimizer steps per row. Every row is a real tunerkit row (tunerkit.recipe.make_row) run
through tunerkit.loop.run_row; memory is freed between rows and an out-of-memory row is
recorded as such while the others go on.

    python bench/optimizer_memory.py                       # the default rows, qwen-7b-chat shape, one GPU
    python bench/optimizer_memory.py --rows full+lisa_2,full+lisa_2+frozen_embeddings
    python bench/optimizer_memory.py --model tiny-llama --max-length 128 --steps 3   # a CPU dry run

Needs galore-torch (GaLore rows) and q-galore-torch + bitsandbytes (quantized rows) importable;
a row whose library is missing is reported as skipped with the reason. Results: a table on
stdout and JSON in $OUT/optimizer_memory.json (when $OUT is set) or --json, rewritten after
every row so an interrupted run keeps what it measured.

Numbers to compare with (docs/tuners/galore.md, docs/tuners/lisa.md): per-parameter GaLore
<= 24 GiB allocated, LISA-2 <= 31 GiB reserved (ms-swift's figure), quantized GaLore below
unquantized.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

GALORE = {"rank": 128, "update_proj_gap": 200}  # ms-swift's benchmark settings

#: name -> (plugins, plugin option tables); the bench's tokenizer stub is added to every row
ROWS = {
    "full": (["full"], {}),
    "full+lisa_2": (["full", "lisa"], {"lisa": {"activated_layers": 2}}),
    "full+lisa_4": (["full", "lisa"], {"lisa": {"activated_layers": 4}}),
    "full+galore128": (["full", "galore"], {"galore": GALORE}),
    "full+galore_perparam": (["full", "galore"], {"galore": {**GALORE, "per_parameter": True}}),
    "full+galore128+quantize": (["full", "galore"], {"galore": {**GALORE, "quantize": True}}),
    # not in the default set: extra evidence for the docs' memory accounting
    "full+galore128+quantize+proj_quant": (["full", "galore"], {"galore": {**GALORE, "quantize": True, "proj_quant": True}}),
    # liger's fused cross-entropy: the tokens x vocab logits (and their float32 loss copies) never exist
    "full+galore_perparam+liger": (["full", "galore", "liger"], {"galore": {**GALORE, "per_parameter": True}}),
    "full+galore_emb": (["full", "galore"], {"galore": {**GALORE, "with_embedding": True}}),
    "full+lisa_2+frozen_embeddings": (["full", "lisa"], {"lisa": {"activated_layers": 2, "train_embeddings": False}}),
    "full+lisa_2+frozen_embeddings_head": (["full", "lisa"], {"lisa": {"activated_layers": 2, "train_embeddings": False,
                                                                       "train_head": False}}),
}
DEFAULT_ROWS = ["full", "full+lisa_2", "full+lisa_4", "full+galore128", "full+galore_perparam", "full+galore128+quantize"]

TARGETS = [  # (row, metric, limit, what the issue asks)
    ("full+galore_perparam", "peak_allocated_gib", 24.0, "per-parameter GaLore <= 24 GiB allocated"),
    ("full+lisa_2", "peak_reserved_gib", 31.0, "LISA-2 <= 31 GiB reserved (ms-swift's 31.11)"),
]


def register_tokenizer_stub() -> str:
    """Rows train on synthetic token ids and need no tokenizer; a stub keeps the host free of the bundled one."""
    from tunerkit import Plugin, hookimpl
    from tunerkit.plugins import registry

    class BenchTokenizer(Plugin):
        name = "bench_tokenizer"
        summary = "bench only: a pad-id-only tokenizer for rows of synthetic token ids"

        @hookimpl
        def load_tokenizer(self, ctx):
            return types.SimpleNamespace(pad_token_id=0, eos_token_id=0)

    registry()[BenchTokenizer.name] = BenchTokenizer
    return BenchTokenizer.name


def settings(args) -> dict:
    rows = max(args.steps * 2, 16)
    return dict(model=args.model, dtype="bf16" if torch.cuda.is_available() else "fp32",
                dataset=f"synthetic:lengths?dist=cls-fudan-news-zh&rows={rows}",
                max_length=args.max_length, truncation_strategy="truncation_right", batch_size=1, gradient_accumulation_steps=1, learning_rate=5e-5,
                weight_decay=0.01, max_grad_norm=1.0, warmup_ratio=0.0, gradient_checkpointing=True,
                attention="flash", max_steps=args.steps, timing_warmup_steps=min(2, args.steps - 1),
                evaluate=[], val_size=0, seed=42)


def build_row(name: str, args, stub: str):
    from tunerkit.recipe import make_row

    plugins, tables = ROWS[name]
    tables = {k: dict(v) for k, v in tables.items()}
    if "lisa" in tables:
        tables["lisa"]["step_interval"] = args.lisa_interval
    return make_row(name, [*plugins, stub], **settings(args), **tables)


def run_one(name: str, args, stub: str, device: torch.device) -> dict:
    from tunerkit.errors import UserError
    from tunerkit.loop import run_row
    from tunerkit.validation import validate_row

    result = {"row": name, "status": "ok", "note": ""}
    try:
        row = build_row(name, args, stub)
        validate_row(row, file="bench/optimizer_memory.py")
    except UserError as err:
        return {**result, "status": "skipped", "note": str(err)}
    out_dir = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    start = time.perf_counter()
    try:
        metrics = run_row(row, out_dir)
    except torch.OutOfMemoryError as err:
        result.update(status="OOM", note=str(err).splitlines()[0][:160])
        if device.type == "cuda":
            result["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        metrics = None
    except Exception as err:  # one broken row must not lose the others
        result.update(status="failed", note=f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
        metrics = None
    result["wall_s"] = time.perf_counter() - start
    if metrics is not None:
        memory = metrics["memory"][0]
        result.update({k: v for k, v in memory.items() if k != "device"})
        keep = ("tokens_per_s", "samples_per_s", "optimizer_steps", "timed_steps", "train_seconds", "train_tokens",
                "trainable_params_m", "trainable_pct", "total_params", "attention")
        result.update({k: metrics.get(k) for k in keep})
        result.update({k: v for k, v in metrics.items() if k.startswith(("galore_", "lisa_"))})
        result["optimizer_state_gib"] = metrics.get("galore_optimizer_state_gib", metrics.get("lisa_optimizer_state_gib"))
    return result


def fmt(value, spec=".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[dict]) -> str:
    memory_keys = ("peak_allocated_gib", "peak_reserved_gib") if torch.cuda.is_available() else ("peak_rss_gib", None)
    head = f"{'row':38} {'status':8} {'tokens/s':>9} {'alloc GiB':>9} {'reserved':>9} {'opt state':>9} {'train M':>9} {'wall s':>7}  note"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['row']:38} {r['status']:8} {fmt(r.get('tokens_per_s'), '.0f'):>9} "
                     f"{fmt(r.get(memory_keys[0])):>9} {fmt(r.get(memory_keys[1]) if memory_keys[1] else None):>9} "
                     f"{fmt(r.get('optimizer_state_gib'), '.2f'):>9} {fmt(r.get('trainable_params_m'), '.0f'):>9} "
                     f"{fmt(r.get('wall_s'), '.0f'):>7}  {r.get('note', '')}")
    return "\n".join(lines)


def verdicts(results: list[dict]) -> list[str]:
    by_name = {r["row"]: r for r in results if r["status"] == "ok"}
    out = []
    for row, key, limit, what in TARGETS:
        if row in by_name and by_name[row].get(key) is not None:
            value = by_name[row][key]
            out.append(f"{'PASS' if value <= limit else 'MISS'}  {what}: {value:.1f} GiB")
    q, g = by_name.get("full+galore128+quantize"), by_name.get("full+galore128")
    if q and g and q.get("peak_allocated_gib") is not None:
        ok = q["peak_allocated_gib"] < g["peak_allocated_gib"]
        out.append(f"{'PASS' if ok else 'MISS'}  quantized GaLore below unquantized: "
                   f"{q['peak_allocated_gib']:.1f} vs {g['peak_allocated_gib']:.1f} GiB allocated")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--model", default="qwen-7b-chat")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per row (the first 2 are not timed)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--lisa-interval", type=int, default=2,
                        help="LISA step_interval: short so that switches happen inside the run (ms-swift: 20)")
    parser.add_argument("--json", default=None, help="where to write the JSON (default: $OUT/optimizer_memory.json)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if args.steps < 2:
        parser.error("--steps must be >= 2")

    from tunerkit.metrics import environment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    json_path = Path(args.json) if args.json else (Path(os.environ["OUT"]) / "optimizer_memory.json"
                                                   if os.environ.get("OUT") else None)
    stub = register_tokenizer_stub()
    report = {"settings": {**settings(args), "lisa_step_interval": args.lisa_interval, "galore": GALORE},
              "environment": environment(device), "rows": []}
    for name in names:
        print(f"== {name}", flush=True)
        result = run_one(name, args, stub, device)
        report["rows"].append(result)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(table([result]).splitlines()[-1], flush=True)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(table(report["rows"]))
    warm = settings(args)["timing_warmup_steps"]
    print(f"tokens/s leave out the first {warm} step(s), which hold GaLore's first SVD refresh (then one every"
          f" update_proj_gap={GALORE['update_proj_gap']} steps); 'opt state' is the optimizer state the plugin measured"
          " at the end; 'train M' the parameters training at the end (LISA: the active set).")
    for line in verdicts(report["rows"]):
        print(line)
    if json_path is not None:
        print(f"JSON: {json_path}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
