"""tunerkit's best configurations beside the strongest peers, in one process, on the same samples.

    PYTHONUNBUFFERED=1 python bench/peers.py                   # every entry; none starts after --time-limit
    python bench/peers.py --list                                # entry names
    python bench/peers.py --entries peer/hf_peft,tunerkit/batch1
    python bench/peers.py --smoke                               # tiny shapes on a CPU: the bookkeeping only
    python bench/peers.py --render peers.json                   # a results file as Markdown

Every entry trains the qwen-7b-chat preset's shape (random bf16 weights) with LoRA r8 on
q, k, v, on the samples of ``bench/fast_path.py``: ms-swift's cls-fudan-news-zh length
statistics, each sample cut to its first 2048 tokens.

Peers, as their users run them:
- ``peer/hf_peft``: plain transformers + PEFT at batch 1, gradient checkpointing, SDPA,
  fused AdamW (``fast_path.run_baseline``, no tunerkit code in its training path).
- ``peer/trl_*``: TRL's ``SFTTrainer`` with ``padding_free=True`` and ``use_liger_kernel=True``
  (gradient checkpointing, bf16, fused AdamW), at batch 1 and at batch 8 (one flattened row
  of ~15k tokens a step, what padding-free batching is for). Timed between consecutive
  ``on_step_end`` callbacks, so data loading and the Trainer's own work are inside a step.
- ``peer/unsloth_*``: unsloth's FastLanguageModel through the ``unsloth`` plugin (bf16, LoRA
  dropout 0: the setting its fused LoRA kernels need), batch 1 with its offloaded
  checkpointing, and packed 6k rows (tunerkit's packing feeds per-sample position ids and
  varlen boundaries; unsloth's own attention forward replaces the varlen one, so samples
  may attend across boundaries: its speed is an upper bound). unsloth patches transformers
  for the whole process when imported, so its entries run last; TRL's liger patching also
  reaches the whole process, so TRL's entries run after tunerkit's. ``--entries`` keeps the
  order it is given.
tunerkit: its best rows of ``recipes/beyond_seed/fast_path.toml`` (``TUNERKIT`` names them).

Counting is the same for every entry: tokens/s and samples/s count the real tokens and
samples of the timed steps (every token is a label), peaks are over the whole entry
(weights included; memory is freed and the peaks reset between entries).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fast_path as fp  # noqa: E402  (inserts the repository root into sys.path)

QKV = ["q_proj", "k_proj", "v_proj"]
GIB_15 = 15.0
SPEED_TARGET = 1.5


@dataclass
class Entry:
    name: str
    kind: str  # "hf_peft" | "trl" | "unsloth" | "tunerkit"
    batch: int = 1
    row: str | None = None  # tunerkit and unsloth entries: a row of recipes/beyond_seed/fast_path.toml
    note: str = ""

    @property
    def peer(self) -> bool:
        return self.kind != "tunerkit"


#: tunerkit's best configurations (rows of recipes/beyond_seed/fast_path.toml): the <= 15 GiB
#: point, packed 20k rows at the <= 19.1 GiB target, and the fastest one (packed 6k rows, no
#: checkpointing).
TUNERKIT = {
    "tunerkit/batch1": "7b/lora+compile_cpp+liger_flce+offload_prefetch1+autocast",
    "tunerkit/packed8k": "7b/lora+packing8k+compile+liger_flce+offload_prefetch",
    "tunerkit/packed20k": "7b/lora+packing20k+compile+liger_flce_chunk+offload_prefetch+autocast[liger.chunk_mem_const=1]",
    "tunerkit/packed6k_no_ckpt": "7b/lora+packing6k+compile+liger_flce_chunk4+no_checkpointing+autocast",
}

# Order matters: TRL's use_liger_kernel patches transformers' model classes for the whole process
# (liger's apply_liger_kernel_to_*), and on one H100 every compiled tunerkit entry that ran after
# the TRL entries failed with an AssertionError, while the same entries ran when TRL had not run
# (bench/results/2026-12-05-h200/README.md). So tunerkit's entries come before TRL's, and
# unsloth's, which patch more, come last.
ENTRIES = [
    Entry("peer/hf_peft", "hf_peft", note="plain transformers + PEFT, batch 1"),
    *[Entry(name, "tunerkit", row=row, note=row) for name, row in TUNERKIT.items() if name != "tunerkit/packed8k"],
    Entry("peer/trl_bs1", "trl", 1, note="SFTTrainer, padding_free, use_liger_kernel, batch 1"),
    Entry("peer/trl_bs8", "trl", 8, note="SFTTrainer, padding_free, use_liger_kernel, batch 8 flattened"),
    Entry("peer/unsloth_bs1", "unsloth", row="7b/unsloth",
          note="unsloth plugin, bf16, offloaded checkpointing, batch 1"),
    Entry("peer/unsloth_packed6k", "unsloth", row="7b/unsloth+packing6k",
          note="unsloth plugin, packed 6k rows (attention may cross samples: an upper bound)"),
    # opt-in (--entries): another tunerkit point between the batch-1 and the 20k one; name it before TRL's
    Entry("tunerkit/packed8k", "tunerkit", row=TUNERKIT["tunerkit/packed8k"], note=TUNERKIT["tunerkit/packed8k"]),
]
BY_NAME = {e.name: e for e in ENTRIES}


# -----------------------------------------------------------------------------------------
# TRL's SFTTrainer
# -----------------------------------------------------------------------------------------


class StepRecorder:
    """Host timestamps at the end of every optimizer step (after a device sync), and the
    lengths and hashes of the samples each collated batch held."""

    def __init__(self):
        self.start: float | None = None
        self.ends: list[float] = []
        self.batches: list[list[list]] = []  # per batch: [lengths, hashes]

    def callback(self):
        from transformers import TrainerCallback

        rec = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if rec.start is None:
                    fp.sync()
                    rec.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                fp.sync()
                rec.ends.append(time.perf_counter())

        return Clock()

    def wrap(self, collate):
        def recording(examples):
            ids = [list(e["input_ids"]) for e in examples]
            self.batches.append([[len(i) for i in ids], [fp.token_hash(i) for i in ids]])
            return collate(examples)

        return recording

    def step_seconds(self) -> list[float]:
        marks = [self.start, *self.ends]
        return [b - a for a, b in zip(marks[:-1], marks[1:])]


def trl_config(out_dir: str, batch: int, total_steps: int, seed: int, cuda: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=1, max_steps=total_steps,
        learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=int(0.03 * total_steps), weight_decay=0.01, max_grad_norm=1.0,
        bf16=cuda, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        padding_free=True, use_liger_kernel=cuda, packing=False, max_length=None,
        optim="adamw_torch_fused" if cuda else "adamw_torch", logging_steps=10 ** 6, save_strategy="no",
        report_to="none", seed=seed, data_seed=seed, dataloader_num_workers=0, use_cpu=not cuda,
        remove_unused_columns=True)


def run_trl(args, samples: list[dict], batch: int, steps: int, warmup: int, lora_dropout: float) -> dict:
    """TRL's SFTTrainer as its documentation's fastest LoRA recipe runs it."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from tunerkit.models.presets import get_preset
    from tunerkit.models.loading import ids_tokenizer

    preset = get_preset(args.model)
    dev = fp.device()
    cuda = dev.type == "cuda"
    fp.reset_peaks()
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(preset.config(), dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa")
    data = datasets.Dataset.from_list([{"input_ids": s["input_ids"]} for s in samples])
    rec = StepRecorder()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SFTTrainer(model=model, args=trl_config(tmp, batch, warmup + steps, args.seed, cuda),
                             train_dataset=data, processing_class=ids_tokenizer(preset.vocab),
                             peft_config=LoraConfig(r=8, lora_alpha=32, lora_dropout=lora_dropout,
                                                    target_modules=QKV, task_type="CAUSAL_LM"),
                             callbacks=[rec.callback()])
        trainer.data_collator = rec.wrap(trainer.data_collator)
        out = trainer.train()
    seconds = rec.step_seconds()
    batches = rec.batches[:len(seconds)]  # the loader may have collated one batch ahead
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result = {"status": "ok", **fp.peaks(), "trainable_params": trainable, "losses": [out.training_loss],
              "step_seconds": seconds, "lengths": [b[0] for b in batches], "hashes": [b[1] for b in batches],
              "warmup": warmup, "attention": "sdpa", "checkpointing": True}
    del trainer, model, out
    fp.free_memory()
    return result


# -----------------------------------------------------------------------------------------
# One entry, and the verdicts
# -----------------------------------------------------------------------------------------


def run_entry(e: Entry, args, rows: dict, samples, order) -> dict:
    """One entry for ``args.steps`` timed steps after ``args.warmup`` (batch 1), or enough packed
    or batched steps for ``args.packed_tokens`` timed tokens."""
    template = fp.template(rows, "7b")
    if e.kind == "hf_peft":
        return fp.run_baseline(fp.with_steps(template, args.steps, args.warmup, args.lora_dropout), samples, order)
    if e.kind == "trl":
        steps = args.steps if e.batch == 1 else max(2, args.packed_tokens // (e.batch * args.mean_tokens))
        return run_trl(args, samples, e.batch, steps, args.warmup if e.batch == 1 else args.packed_warmup,
                       args.lora_dropout)
    row = rows[e.row]
    if fp.packed(row):
        warmup, steps = args.packed_warmup, max(2, -(-args.packed_tokens // row.options["packing"].row_length))
    else:
        warmup, steps = args.warmup, args.steps
    # unsloth fuses its LoRA kernels only without dropout: its rows keep their own
    dropout = None if e.kind == "unsloth" else args.lora_dropout
    return fp.run_tunerkit(fp.with_steps(row, steps, warmup, dropout), samples)


def allocated_gib() -> float | None:
    return torch.cuda.memory_allocated() / fp.GIB if torch.cuda.is_available() else None


def own_memory(r: dict) -> dict:
    """The entry's own peak: its peak allocated less what the process still held when it began.

    Entries share one process, so tensors an earlier entry left alive (on one H200 a whole
    7b model's 14.4 GiB stayed allocated after the first entry once GPT-QModel was installed
    beside PEFT) would count against every later entry; the verdicts compare own peaks."""
    held, peak = r.get("held_before_gib"), r.get("peak_alloc_gib")
    if held is None or peak is None:
        return {}
    return {"own_peak_alloc_gib": peak - held}


def mem(r: dict) -> float:
    """The memory the verdicts compare: the entry's own peak where it is known."""
    return r["own_peak_alloc_gib"] if r.get("own_peak_alloc_gib") is not None else r["peak_alloc_gib"]


def verdicts(results: list[dict]) -> dict:
    """tunerkit's ratio to the fastest peer at equal or higher memory, and the two targets."""
    ok = [r for r in results if r.get("status") == "ok" and r.get("tokens_per_s") and r.get("peak_alloc_gib") is not None]
    peers = [r for r in ok if r["peer"]]
    ours = [r for r in ok if not r["peer"]]
    out: dict = {"fastest_peer": None, "per_config": [], "targets": []}
    if not peers:
        return out
    fastest = max(peers, key=lambda r: r["tokens_per_s"])
    out["fastest_peer"] = {**{k: fastest[k] for k in ("name", "tokens_per_s", "peak_alloc_gib")},
                           "own_peak_alloc_gib": mem(fastest)}
    for r in ours:
        # the fastest peer using as much memory or more: what a user would give up by taking tunerkit
        rivals = [p for p in peers if mem(p) >= mem(r)]
        rival = max(rivals, key=lambda p: p["tokens_per_s"]) if rivals else None
        out["per_config"].append({"name": r["name"], "rival": rival["name"] if rival else None,
                                  "x_rival": r["tokens_per_s"] / rival["tokens_per_s"] if rival else None,
                                  "x_fastest_peer": r["tokens_per_s"] / fastest["tokens_per_s"]})
    under = [r for r in ours if mem(r) <= mem(fastest)]
    best = max(under, key=lambda r: r["tokens_per_s"]) if under else None
    x = best["tokens_per_s"] / fastest["tokens_per_s"] if best else None
    out["targets"].append({"target": f">= {SPEED_TARGET}x the fastest peer ({fastest['name']}) at <= its peak allocated "
                                     f"({mem(fastest):.2f} GiB)",
                           "best": best["name"] if best else None, "x": x, "met": bool(x and x >= SPEED_TARGET)})
    small = [r for r in ours if mem(r) <= GIB_15]
    best15 = max(small, key=lambda r: r["tokens_per_s"]) if small else None
    peers15 = [p for p in peers if mem(p) <= GIB_15]
    fastest15 = max(peers15, key=lambda p: p["tokens_per_s"]) if peers15 else None
    for label, ref in ((f"the fastest peer ({fastest['name']})", fastest),
                       (f"the fastest peer at <= {GIB_15:g} GiB ({fastest15['name'] if fastest15 else 'none'})", fastest15)):
        x15 = best15["tokens_per_s"] / ref["tokens_per_s"] if best15 and ref else None
        out["targets"].append({"target": f">= {label}'s tokens/s at <= {GIB_15:g} GiB allocated",
                               "best": best15["name"] if best15 else None, "x": x15, "met": bool(x15 and x15 >= 1.0)})
    return out


# -----------------------------------------------------------------------------------------
# Output
# -----------------------------------------------------------------------------------------


def fmt(v, spec) -> str:
    return "-" if v is None else format(v, spec)


def markdown(payload: dict) -> str:
    env = payload.get("environment") or {}
    lines = [f"{env.get('device', '?')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"peft {env.get('peft')}, trl {env.get('trl')}, liger-kernel {env.get('liger-kernel')}, "
             f"unsloth {env.get('unsloth')}", "",
             "| entry | tokens/s | samples/s | peak alloc GiB | held before GiB | own peak alloc GiB | peak reserved GiB | timed | what |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in payload.get("results") or []:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | {r.get('status')} | | | | | | | {r.get('note', '')} |")
            continue
        lines.append("| " + " | ".join([
            r["name"], fmt(r.get("tokens_per_s"), ",.0f"), fmt(r.get("samples_per_s"), ".2f"),
            fmt(r.get("peak_alloc_gib"), ".2f"), fmt(r.get("held_before_gib"), ".2f"),
            fmt(r.get("own_peak_alloc_gib"), ".2f"), fmt(r.get("peak_reserved_gib"), ".2f"),
            f"{r.get('timed_steps')} steps, {r.get('timed_tokens', 0):,} tokens, {r.get('same_samples', '')}",
            r.get("note", "")]) + " |")
    v = payload.get("verdicts") or {}
    if v.get("per_config"):
        lines += ["", "| tunerkit entry | fastest peer at >= its memory | × that peer | × fastest peer |",
                  "|---|---|---:|---:|"]
        for c in v["per_config"]:
            lines.append(f"| {c['name']} | {c['rival'] or 'none'} | {fmt(c['x_rival'], '.2f')} | "
                         f"{fmt(c['x_fastest_peer'], '.2f')} |")
    for t in v.get("targets") or []:
        lines.append(f"- target {t['target']}: {'met' if t['met'] else 'not met'} "
                     f"(best {t['best'] or 'none'}: {fmt(t['x'], '.2f')}x)")
    return "\n".join(lines)


def line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['name']:<28} {r['status']}"
    return (f"{r['name']:<28} {fmt(r.get('tokens_per_s'), ',.0f'):>8} tok/s {fmt(r.get('samples_per_s'), '.2f'):>6} "
            f"samp/s  alloc {fmt(r.get('peak_alloc_gib'), '.2f')} (held before {fmt(r.get('held_before_gib'), '.2f')}) resv {fmt(r.get('peak_reserved_gib'), '.2f')} GiB  "
            f"{r.get('timed_steps')} steps {r.get('same_samples', '')}")


def environment() -> dict:
    import importlib.metadata as md

    env = fp.environment()
    for pkg in ("trl", "unsloth", "unsloth_zoo", "bitsandbytes", "datasets"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    return env


# -----------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", default="all", help="comma-separated entry names or 'all' (see --list)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--steps", type=int, default=16, help="timed steps of a batch-1 entry")
    p.add_argument("--warmup", type=int, default=4, help="warm-up steps of a batch-1 entry")
    p.add_argument("--packed-tokens", type=int, default=100_000, help="timed tokens of a packed or batched entry")
    p.add_argument("--packed-warmup", type=int, default=2)
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (unsloth entries: 0, see above)")
    p.add_argument("--time-limit", type=float, default=600.0, help="start no entry after this many seconds")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--render", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny preset, 64-token samples, 2+1 steps (CPU plumbing)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = 2, 1
        args.packed_warmup, args.packed_tokens = 1, 512
    return args


def smoke_row(row, cuda: bool):
    """fast_path's smoke form of a row; on a CPU also without compile (inductor's CPU build
    takes minutes on a small machine, and the smoke run checks bookkeeping only)."""
    row = fp.smoke_row(row, cuda)
    if cuda or "compile" not in row.plugins:
        return row
    return dataclasses.replace(row, plugins=[p for p in row.plugins if p != "compile"],
                               options={k: v for k, v in row.options.items() if k != "compile"})


def select(spec: str) -> list[Entry]:
    names = [e.name for e in ENTRIES if e.name != "tunerkit/packed8k"] if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown entr(y/ies): {', '.join(unknown)} (see --list)")
    return [BY_NAME[n] for n in names]


def bench_rows(smoke: bool) -> dict:
    """fast_path.toml's rows by name (with --smoke its tiny shapes, as fast_path's own --smoke)."""
    rows = fp.load_rows(fp.RECIPE, smoke)
    return {name: smoke_row(r, torch.cuda.is_available()) for name, r in rows.items()} if smoke else rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    if args.list:
        for e in ENTRIES:
            print(f"{e.name:<28} {e.note}")
        return 0
    chosen = select(args.entries)
    started = time.perf_counter()
    out_path = Path(os.environ["OUT"]) / "peers.json" if os.environ.get("OUT") else None
    from tunerkit.models.presets import get_preset

    rows = bench_rows(args.smoke)
    base = fp.template(rows, "7b").settings  # every entry trains the samples the baseline's row names
    args.model, args.seed, args.sample_max = base.model, base.seed, base.max_length
    preset = get_preset(base.model)
    shape = fp.Shape.of(preset)
    samples = fp.make_samples(preset.vocab, base.seed, base.dataset, base.max_length)
    order = fp.loader_order(len(samples), base.seed)
    args.mean_tokens = max(1, round(sum(len(s["input_ids"]) for s in samples) / len(samples)))
    expected = [fp.token_hash(samples[i]["input_ids"]) for i in order]
    payload = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}, "results": []}
    print(f"peers bench: {payload['environment']['device']}; {len(samples)} samples cut at {args.sample_max}, "
          f"mean {args.mean_tokens} tokens", flush=True)
    for e in chosen:
        r = {"name": e.name, "kind": e.kind, "peer": e.peer, "note": e.note}
        if time.perf_counter() - started > args.time_limit:
            r["status"] = f"skipped: past --time-limit {args.time_limit:.0f} s"
        else:
            t0 = time.perf_counter()
            fp.free_memory()
            r["held_before_gib"] = allocated_gib()
            try:
                raw = run_entry(e, args, rows, samples, order)
                r.update({k: v for k, v in raw.items() if k not in ("hashes", "lengths", "step_seconds", "losses")})
                r["final_loss"] = (raw.get("losses") or [None])[-1]
                r.update(fp.summarise(raw, shape, "lora", fp.PEAK_TFLOPS))
                batch_one = e.batch == 1 and not (e.row and fp.packed(rows[e.row]))
                r["same_samples"] = fp.same_samples(raw, expected, set(expected), batch_one=batch_one)
                if e.kind == "trl" and r["same_samples"] == "NO: other order":
                    r["same_samples"] = "same set (Trainer's order)"
                r["status"] = "ok"
            except torch.OutOfMemoryError:
                r["status"] = "OOM"
            except Exception as err:  # noqa: BLE001 - one failed entry must not end the run
                r["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                if os.environ.get("PEERS_TRACEBACK"):
                    traceback.print_exc()
            fp.free_memory()
            r["wall_s"] = time.perf_counter() - t0
            r.update(own_memory(r))
        payload["results"].append(r)
        payload["verdicts"] = verdicts(payload["results"])
        print(line(r), flush=True)
        fp.write_json(out_path, payload)
        fp.write_json(args.json, payload)
    print("\n" + markdown(payload), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
