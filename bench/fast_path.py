"""The fast path's recipe rows beside the plain HF + PEFT baseline, in one process on one GPU.

    PYTHONUNBUFFERED=1 python bench/fast_path.py --check-loss        # the default rows; none starts after --time-limit (420 s)
    python bench/fast_path.py --list                                  # row names
    python bench/fast_path.py --configs 7b/baseline,7b/lora+liger     # a selection
    python bench/fast_path.py --smoke                                 # tiny shapes on CPU: the script's plumbing

The configurations are the rows of recipes/beyond_seed/fast_path.toml (``tunerkit run`` runs
them alone); this script adds what a recipe cannot hold:

(a) The baseline, written with plain transformers + peft (no tunerkit code in the training
path), for each family of rows: LoRA on the qwen-7b-chat shape ("7b/...") and full
fine-tuning of the qwen-1_8b-chat shape ("1.8b/..."). It takes its hyperparameters, step
counts and LoRA options from the family's plain recipe row (``TEMPLATES``): random bf16
weights, batch 1, non-reentrant gradient checkpointing, SDPA, torch fused AdamW,
transformers' loss.
(b) Same samples: both stacks train the same list of samples (``synthetic:lengths``, each
cut to max_length), the baseline in the order tunerkit's loader visits them; a bench-only
hook object hands them to the recipe rows and hashes every trained sample, so a batch-1 row
must train the baseline's samples in its order and a packed row only samples of the set.
(c) The 50-step loss agreement (``--check-loss``) and the profiles (``--profile``).

Rows run through ``tunerkit.loop.run_row``, as ``tunerkit run`` runs them. Timing is the
loop's (synchronised step wall time, data transfer and optimizer step included). Model FLOPs
count the matmuls a step must do: forward 2N, input gradients 2N, weight gradients 2N only
for trained weights, N = every linear weight incl. the LM head, plus causal attention
6*L^2*hidden per layer and sample. MFU divides them by the step time and ``--peak-tflops``;
HFU adds the forward recompute of gradient checkpointing.

Every row is wrapped in try/except (OOM included) and printed as it finishes; JSON goes to
$OUT/fast_path.json (and --json) after every row, so a cut run keeps its rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunerkit.hookspecs import hookimpl
from tunerkit.optimizer import groups_by_decay

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "beyond_seed" / "fast_path.toml"
#: bf16 dense matmul ceiling MFU divides by unless --peak-tflops says otherwise: the figure every
#: committed fast-path result used (its JSON's peak_tflops); the H200 datasheet's dense bf16 peak is 989.
PEAK_TFLOPS = 790.0
GIB = 1024 ** 3


@dataclass(frozen=True)
class Family:
    model: str  # preset name
    trained: str  # "lora" or "full"
    template: str  # the recipe row whose hyperparameters the plain baseline copies


FAMILIES = {"7b": Family("qwen-7b-chat", "lora", "7b/lora"), "1.8b": Family("qwen-1_8b-chat", "full", "1.8b/full+liger")}

#: results before the recipe named these sweep points by hand; their recipe rows
RENAMED = {
    "7b/lora+compile+liger_flce_chunk2+offload_prefetch1+autocast":
        "7b/lora+compile+liger_flce_chunk+offload_prefetch1+autocast[liger.chunk_mem_const=2]",
    "7b/lora+compile+liger_flce_chunk4+offload_prefetch1+autocast":
        "7b/lora+compile+liger_flce_chunk+offload_prefetch1+autocast[liger.chunk_mem_const=4]",
    "7b/lora+packing20k+compile+liger_flce_chunk4+offload_prefetch+autocast":
        "7b/lora+packing20k+compile+liger_flce_chunk+offload_prefetch+autocast[liger.chunk_mem_const=4]",
    "7b/lora+packing20k+compile+liger_flce+offload_prefetch+autocast":
        "7b/lora+packing20k+compile+liger_flce_chunk+offload_prefetch+autocast[liger.chunk_mem_const=1]",
    **{f"{base}+{old}": f"{base}+pinned_kernel[packing.kernel={kernel}]"
       for base in ("7b/lora+packing6k+compile+liger_flce_chunk4+no_checkpointing+autocast",
                    "7b/lora+packing16k+compile+liger_flce+offload_prefetch+autocast",
                    "7b/lora+packing16k+compile+liger_flce+offload_prefetch+uncheckpointed1+autocast")
       for old, kernel in (("flash2", "torch_varlen"), ("sdpa_per_sample", "sdpa"))},
}

#: --smoke: tiny shapes for both families (settings and packing's row length, as ``--set`` would give them)
SMOKE = {"model": "tiny-qwen2", "max_length": 64, "max_steps": 4, "timing_warmup_steps": 1,
         "packing": {"row_length": 256}}

TARGETS = [
    # (label, family, speed test on the ratio to the baseline, memory test on (peak alloc, baseline's))
    (">= 2.5x baseline tokens/s at <= baseline peak allocated", "7b", lambda x: x >= 2.5, lambda m, base: m <= base),
    (">= 3x baseline tokens/s at < 40 GiB allocated", "7b", lambda x: x >= 3.0, lambda m, base: m < 40.0),
    ("> 1.36x baseline tokens/s at <= 15.0 GiB allocated", "7b", lambda x: x > 1.36, lambda m, base: m <= 15.0),
    (">= 2x baseline tokens/s, 1.8b full fine-tuning", "1.8b", lambda x: x >= 2.0, lambda m, base: True),
]


# -----------------------------------------------------------------------------------------
# Rows: the recipe's, as the bench runs them
# -----------------------------------------------------------------------------------------


def family_of(name: str) -> str:
    return name.split("/", 1)[0]


def is_baseline(name: str) -> bool:
    return name.endswith("/baseline")


def load_rows(recipe: Path, smoke: bool) -> dict:
    """Every row of the recipe (profile ``all``), by name; --smoke applies its tiny shapes."""
    from tunerkit.recipe import load_recipe

    loaded = load_recipe(recipe, "all", check_files=False, overrides=SMOKE if smoke else None)
    return {r.name: smoke_row(r, torch.cuda.is_available()) if smoke else r for r in loaded.rows}


def default_names(recipe: Path) -> list[str]:
    """The rows of profile ``bench``, each family's baseline first."""
    from tunerkit.recipe import load_recipe

    return with_baselines([r.name for r in load_recipe(recipe, "bench", check_files=False).rows])


def with_baselines(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        baseline = f"{family_of(name)}/baseline"
        if baseline not in out:
            out.append(baseline)
        out.append(name)
    return out


def select(spec: str, rows: dict, recipe: Path) -> list[str]:
    """Row names for ``--configs``: 'default', 'all', or names (old names, base names of sweeps)."""
    if spec == "default":
        return default_names(recipe)
    if spec == "all":
        return with_baselines(list(rows))
    chosen, unknown = [], []
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        name = RENAMED.get(name, name)
        points = [n for n, r in rows.items() if name in (n, r.base_name)]
        if is_baseline(name) and family_of(name) in FAMILIES:
            chosen.append(name)
        elif points:
            chosen += points
        else:
            unknown.append(name)
    if unknown:
        raise SystemExit(f"unknown config(s): {', '.join(unknown)} (see --list)")
    return chosen


def smoke_row(row, cuda: bool):
    """A row as the tiny smoke shapes can run it: at most 2 of the tiny preset's 4 layers left
    out of checkpointing, and without a GPU no liger (its kernels need CUDA; the smoke run then
    exercises the other switches only)."""
    settings = dataclasses.replace(row.settings, uncheckpointed_layers=min(row.settings.uncheckpointed_layers, 2))
    if cuda or "liger" not in row.plugins:
        return dataclasses.replace(row, settings=settings)
    return dataclasses.replace(row, settings=settings, plugins=[p for p in row.plugins if p != "liger"],
                               options={k: v for k, v in row.options.items() if k != "liger"})


def with_steps(row, steps: int, warmup: int, lora_dropout: float | None = None):
    """``row`` for ``steps`` timed steps after ``warmup`` (the loss check and the profiles)."""
    settings = dataclasses.replace(row.settings, max_steps=warmup + steps, timing_warmup_steps=warmup)
    options = dict(row.options)
    if lora_dropout is not None and "lora" in options:
        options["lora"] = dataclasses.replace(options["lora"], dropout=lora_dropout)
    return dataclasses.replace(row, settings=settings, options=options)


def packed(row) -> bool:
    return "packing" in row.plugins


def template(rows: dict, family: str):
    """The recipe row a family's baseline copies its hyperparameters from."""
    name = FAMILIES[family].template
    if name not in rows:
        raise SystemExit(f"{RECIPE.name} has no row {name!r}: the {family} baseline copies its settings")
    return rows[name]


# -----------------------------------------------------------------------------------------
# Data: the same truncated samples, in tunerkit's loader order
# -----------------------------------------------------------------------------------------


def make_samples(vocab: int, seed: int, spec: str, sample_max: int) -> list[dict]:
    """tunerkit's synthetic samples of ``spec`` (dataset order), each cut to its first ``sample_max``
    tokens, as the rows' ``truncation_strategy = "truncation_right"`` cuts them."""
    from tunerkit.data.synthetic import synthetic_records

    out = []
    for r in synthetic_records(spec, vocab, seed):
        ids = r["input_ids"][:sample_max]
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def loader_order(n: int, seed: int) -> list[int]:
    """The order tunerkit's training loader visits ``n`` samples: a DataLoader built as
    ``tunerkit.loop.make_loader`` builds it (shuffle, generator seeded with the row seed).
    Iterating a loader draws its base seed from the generator before the sampler's
    permutation, so the order is read off a loader, not from ``torch.randperm``."""
    from torch.utils.data import DataLoader

    loader = DataLoader(range(n), batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(seed),
                        collate_fn=lambda batch: batch[0])
    return list(loader)


def token_hash(ids) -> str:
    arr = np.asarray(ids, dtype=np.int64)
    return hashlib.sha1(arr.tobytes()).hexdigest()[:16]


class TokenIdsOnly:
    """The tokenizer a row of token ids needs: a pad id (the data is synthetic token ids)."""

    pad_token_id = 0
    eos_token_id = 0
    bos_token_id = None
    pad_token = eos_token = "<pad>"


class BenchProbe:
    """Bench-only hooks registered beside a row's plugins.

    Hands the row the very samples the baseline trains (token ids, so no tokenizer), and
    records, for every micro-batch, the token hash and length of each sample inside it (for
    the same-samples check and the attention FLOPs).
    """

    def __init__(self, samples: list[dict], profiler=None, profile_from: int = 0, profile_steps: int = 0):
        self.samples = samples
        self.steps: list[dict] = []
        self.profiler, self.profile_from, self.profile_steps = profiler, profile_from, profile_steps

    @hookimpl
    def on_step_begin(self, ctx):
        if self.profiler is not None and ctx.global_step == self.profile_from:
            self.profiler.start()

    @hookimpl
    def on_step_end(self, ctx):
        # global_step counts finished steps and is raised after this hook: this is step global_step + 1.
        if self.profiler is not None and ctx.global_step + 1 == self.profile_from + self.profile_steps:
            self.profiler.stop(self.profile_steps)

    @hookimpl(tryfirst=True)
    def load_tokenizer(self, ctx):
        return TokenIdsOnly()

    @hookimpl(tryfirst=True)
    def load_dataset(self, ctx, split):
        return list(self.samples) if split == "train" else []

    @hookimpl(wrapper=True)
    def make_collator(self, ctx, split):
        collate = yield
        if split != "train":
            return collate

        def recording(examples):
            # Read on the host as the batch is collated: reading it on the GPU later would
            # wait for the device inside the timed step (and end overlap_steps' overlap).
            batch = collate(examples)
            self.record(batch)
            return batch

        return recording

    def record(self, batch: dict) -> None:
        """One micro-batch's samples (the bench runs one micro-batch per step, in loader order)."""
        ids = batch["input_ids"].detach()
        if "cu_seq_lens_q" in batch:
            cu = batch["cu_seq_lens_q"].reshape(-1).tolist()
            flat = ids.reshape(-1)
            docs = [flat[s:e] for s, e in zip(cu[:-1], cu[1:]) if e > s]
        else:
            mask = batch.get("attention_mask")
            lengths = mask.sum(-1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
            docs = [ids[i, :n] for i, n in enumerate(lengths)]
        self.steps.append({"lengths": [int(d.numel()) for d in docs],
                           "hashes": [token_hash(d.numpy()) for d in docs]})


# -----------------------------------------------------------------------------------------
# FLOPs
# -----------------------------------------------------------------------------------------


@dataclass
class Shape:
    hidden: int
    layers: int
    layer_params: int  # matmul weights of one decoder layer
    head_params: int  # the LM head

    @classmethod
    def of(cls, preset) -> "Shape":
        head_dim = preset.hidden // preset.heads
        kv = preset.kv_heads * head_dim
        attn = 2 * preset.hidden * preset.hidden + 2 * preset.hidden * kv
        mlp = 3 * preset.hidden * preset.ffn
        return cls(preset.hidden, preset.layers, attn + mlp, preset.hidden * preset.vocab)

    @property
    def dense(self) -> int:
        return self.layers * self.layer_params + self.head_params


def step_flops(shape: Shape, lengths: list[int], trained: str, adapter_params: int,
               recomputed_layers: int) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one step over samples of ``lengths`` tokens, of which
    ``recomputed_layers`` decoder layers run their forward again (gradient checkpointing)."""
    tokens = sum(lengths)
    sq = sum(n * n for n in lengths)
    if trained == "full":
        per_token = 6 * shape.dense
    else:  # frozen base: forward and input gradients only; adapters train
        per_token = 4 * shape.dense + 6 * adapter_params
    attention = 6 * sq * shape.hidden * shape.layers  # causal: fwd 2 L^2 h, bwd 4 L^2 h per layer
    model = per_token * tokens + attention
    hardware = model
    if recomputed_layers:  # those layers' forward runs twice (not the head's); adapters spread evenly
        share = recomputed_layers / shape.layers
        adapters = adapter_params if trained != "full" else 0
        recompute = 2 * (recomputed_layers * shape.layer_params + share * adapters) * tokens
        hardware += recompute + 2 * sq * shape.hidden * recomputed_layers
    return float(model), float(hardware)


# -----------------------------------------------------------------------------------------
# Runs
# -----------------------------------------------------------------------------------------


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def reset_peaks() -> None:
    free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peaks() -> dict:
    if not torch.cuda.is_available():
        return {"peak_alloc_gib": None, "peak_reserved_gib": None}
    return {"peak_alloc_gib": torch.cuda.max_memory_allocated() / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB}


def baseline_model(row, dev: torch.device):
    """The row's preset in plain transformers (the same random weights: presets draw them under
    seed 0), with PEFT's LoRA of the row's options or every weight trainable."""
    from transformers import AutoModelForCausalLM

    from tunerkit.models.presets import get_preset

    config = get_preset(row.settings.model).config()
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32,
                                                 attn_implementation="sdpa")
    if "lora" in row.plugins:
        from peft import LoraConfig, get_peft_model

        lora = row.options["lora"]
        model = get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.targets), task_type="CAUSAL_LM"))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    return model


def run_baseline(row, samples: list[dict], order: list[int], profiler=None) -> dict:
    """Plain transformers + peft, with the hyperparameters and step counts of ``row`` (a
    family's template row): the stack the ms-swift benchmark page used. No tunerkit code trains here."""
    from transformers import get_scheduler

    s, dev = row.settings, device()
    reset_peaks()
    model = baseline_model(row, dev)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # The one no-decay rule (biases and norm weights undecayed, as HF Trainer groups them):
    # a grouping rule, not training code, shared so the baseline cannot drift from the rows.
    optimizer = torch.optim.AdamW(groups_by_decay(named, s.weight_decay), lr=s.learning_rate, fused=dev.type == "cuda")
    scheduler = get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=int(s.warmup_ratio * s.max_steps),
                              num_training_steps=s.max_steps)
    params = [p for _, p in named]
    losses, seconds, lengths, hashes = [], [], [], []
    for step in range(s.max_steps):
        sample = samples[order[step % len(order)]]
        if profiler is not None and step == s.timing_warmup_steps:
            profiler.start()
        sync()
        start = time.perf_counter()
        ids = torch.tensor([sample["input_ids"]], device=dev)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.detach().item())
        sync()
        seconds.append(time.perf_counter() - start)
        lengths.append([len(sample["input_ids"])])
        hashes.append([token_hash(sample["input_ids"])])
        del out, ids
    if profiler is not None:
        profiler.stop(s.max_steps - s.timing_warmup_steps)
    result = {"status": "ok", **peaks(), "trainable_params": sum(p.numel() for p in params), "losses": losses,
              "step_seconds": seconds, "lengths": lengths, "hashes": hashes, "warmup": s.timing_warmup_steps,
              "attention": "sdpa"}
    del model, optimizer, scheduler, params, named
    free_memory()
    return result


LOOP_METRICS = ("compile_frames", "compile_graphs", "compile_graph_breaks", "compile_graph_break_reasons",
                "compile_recompile_reasons", "compile_guards_skipped_from_step", "liger_chunk_mem_const", "autocast")


def run_tunerkit(row, samples: list[dict], profiler=None) -> dict:
    """One recipe row through tunerkit's row runner, with the bench's samples and probe."""
    from tunerkit.loop import run_row

    warmup = row.settings.timing_warmup_steps
    probe = BenchProbe(samples, profiler, profile_from=warmup, profile_steps=row.settings.max_steps - warmup)
    with tempfile.TemporaryDirectory() as tmp:
        m = run_row(row, Path(tmp) / "row", extra_plugins=[probe])
    mem = (m.get("memory") or [{}])[0]
    # accelerate's loader collates one batch ahead of the step it feeds: keep the steps that ran
    del probe.steps[len(m.get("train_loss_curve", [])):]
    return {"status": "ok", "peak_alloc_gib": mem.get("peak_allocated_gib"),
            "peak_reserved_gib": mem.get("peak_reserved_gib"), "trainable_params": m.get("trainable_params"),
            "losses": m.get("train_loss_curve", []), "lengths": [s["lengths"] for s in probe.steps],
            "hashes": [s["hashes"] for s in probe.steps], "warmup": m.get("timing_warmup_steps", warmup),
            "loop_tokens_per_s": m.get("tokens_per_s"), "loop_samples_per_s": m.get("samples_per_s"),
            "attention": m.get("attention"), "packing_efficiency": m.get("packing_efficiency"),
            "offload_gib_per_step": m.get("offload_gib_per_step"), "compiled_layers": m.get("compiled_layers"),
            "liger_kernels": m.get("liger_kernels"), "checkpointing": row.settings.gradient_checkpointing,
            "uncheckpointed_layer_indices": m.get("uncheckpointed_layer_indices"),
            **{k: m[k] for k in LOOP_METRICS if k in m}}


def summarise(result: dict, shape: Shape, trained: str, peak_tflops: float) -> dict:
    """Throughput and utilisation over the timed steps."""
    warm = result["warmup"]
    lengths = result["lengths"][warm:]
    tokens = sum(sum(s) for s in lengths)
    samples = sum(len(s) for s in lengths)
    if "step_seconds" in result:  # the baseline timed its own steps
        seconds = sum(result["step_seconds"][warm:])
    else:  # tunerkit's loop timed them: recover the timed wall time from its tokens/s
        seconds = tokens / result["loop_tokens_per_s"] if result.get("loop_tokens_per_s") else 0.0
    adapter = result.get("trainable_params") or 0
    recomputed = 0 if result.get("checkpointing") is False else \
        shape.layers - len(result.get("uncheckpointed_layer_indices") or [])
    model_f = hw_f = 0.0
    for step in lengths:
        mf, hf = step_flops(shape, step, trained, adapter, recomputed)
        model_f += mf
        hw_f += hf
    out = {"timed_steps": len(lengths), "timed_tokens": tokens, "timed_samples": samples,
           "tokens_per_step": tokens / max(len(lengths), 1)}
    if seconds > 0:
        out.update(tokens_per_s=tokens / seconds, samples_per_s=samples / seconds,
                   mfu_pct=100 * model_f / seconds / (peak_tflops * 1e12),
                   hfu_pct=100 * hw_f / seconds / (peak_tflops * 1e12))
    return out


def same_samples(result: dict, expected: list[str], all_hashes: set[str], batch_one: bool) -> str:
    """Did the config train the common samples (and, one per step, in the loader's order)?"""
    trained = [h for step in result["hashes"] for h in step]
    if not trained:
        return "no record"
    if any(h not in all_hashes for h in trained):
        return "NO: foreign samples"
    if not batch_one:
        return "same set (packed)"
    return "same order" if trained == expected[:len(trained)] else "NO: other order"


# -----------------------------------------------------------------------------------------
# Loss agreement
# -----------------------------------------------------------------------------------------


def check_loss(args, rows: dict, samples: list[dict], order: list[int]) -> dict:
    """``--check-steps`` steps of the baseline and of a batch-1 row on the same samples and weights."""
    name = RENAMED.get(args.check_config, args.check_config)
    if name not in rows or packed(rows[name]):
        raise SystemExit("--check-config must name a batch-1 row (packed steps hold other samples than the baseline's)")
    family = family_of(name)
    print(f"\n== loss agreement: {name} vs {family}/baseline, {args.check_steps} steps, "
          f"LoRA dropout {args.check_dropout} ==", flush=True)
    out = {"config": name, "steps": args.check_steps, "lora_dropout": args.check_dropout}
    try:
        base = run_baseline(with_steps(template(rows, family), args.check_steps, 0, args.check_dropout), samples, order)
        fast = run_tunerkit(with_steps(rows[name], args.check_steps, 0, args.check_dropout), samples)
    except Exception as err:  # noqa: BLE001 - report and go on to the speed table
        out["status"] = failure(err)
        print(out["status"], flush=True)
        free_memory()
        return out
    a, b = np.array(base["losses"]), np.array(fast["losses"])
    n = min(len(a), len(b))
    rel = np.abs(a[:n] - b[:n]) / np.maximum(np.abs(a[:n]), 1e-6)
    expected = [token_hash(samples[i]["input_ids"]) for i in order]
    same = same_samples(fast, expected, set(expected), batch_one=True)
    ok = n == args.check_steps and rel.max() <= args.check_rtol and same == "same order"
    out.update(status="ok", baseline_losses=a.tolist(), fast_losses=b.tolist(), max_rel_diff=float(rel.max()),
               mean_rel_diff=float(rel.mean()), final_baseline=float(a[n - 1]), final_fast=float(b[n - 1]),
               same_samples=same, rtol=args.check_rtol, agree=bool(ok))
    print(f"steps compared {n}; max |rel diff| {rel.max():.2e}, mean {rel.mean():.2e} (tolerance {args.check_rtol:g}); "
          f"final loss baseline {a[n - 1]:.4f} fast {b[n - 1]:.4f}; samples: {same} -> "
          f"{'AGREE' if ok else 'DISAGREE'}", flush=True)
    return out


# -----------------------------------------------------------------------------------------
# Where the time goes
# -----------------------------------------------------------------------------------------


def profile_row(name: str, rows: dict, args, samples: list[dict], order: list[int]) -> dict:
    """A separate short run of one row: its warm-up, then --profile-steps steps under torch.profiler.

    Separate from the timed run so the profiler's overhead never reaches the speed table.
    """
    from kernel_profile import StepProfiler

    prof = StepProfiler()
    row = template(rows, family_of(name)) if is_baseline(name) else rows[name]
    row = with_steps(row, args.profile_steps, row.settings.timing_warmup_steps)
    if is_baseline(name):
        run_baseline(row, samples, order, profiler=prof)
    else:
        run_tunerkit(row, samples, profiler=prof)
    return prof.result or {"note": "the profiled steps did not run"}


def kinds_text(p: dict) -> str:
    """A profile's kernel-time shares, largest first: "matmul 61%, attention 18%, ..."."""
    shares = sorted((p.get("kernel_pct_by_kind") or {}).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.0f}%" for k, v in shares)


def profile_line(name: str, p: dict) -> str:
    if "gpu_busy_ms_per_step" not in p:
        return f"{name:<40} {p.get('wall_ms_per_step', 0):8.1f} ms/step; {p.get('note', '')}"
    kinds = kinds_text(p)
    return (f"{name:<40} {p.get('wall_ms_per_step', 0):8.1f} ms/step, GPU busy {p.get('gpu_busy_ms_per_step', 0):8.1f} ms "
            f"(idle {p.get('gpu_idle_pct')}%), {p.get('kernels_per_step', 0):.0f} kernels/step; {kinds}"
            + host_text(p))


def host_text(p: dict, top: int = 6) -> str:
    """The host ops with the most self time per step, when the profile recorded them."""
    ops = (p.get("top_host_ops") or [])[:top]
    if not ops:
        return ""
    return (f"\n    host {p.get('host_self_ms_per_step')} ms/step in ops; most: "
            + ", ".join(f"{o['name']} {o['self_ms_per_step']:.1f} ms ({o['calls_per_step']:.0f}x)" for o in ops))


# -----------------------------------------------------------------------------------------
# Output
# -----------------------------------------------------------------------------------------


COLUMNS = [("config", 40), ("tok/s", 8), ("samp/s", 7), ("x base", 6), ("alloc", 6), ("resv", 6), ("MFU%", 5),
           ("HFU%", 5), ("tok/step", 8), ("samples", 18)]


def target_state(t: dict) -> str:
    """met by ROWS / not met / baseline not run (a target with no baseline in the run)."""
    if t["met_by"]:
        if t.get("baseline_repeated") is False:  # files before this field: no remark
            return "met by " + ", ".join(t["met_by"]) + " (against the baseline's first run only: not repeated)"
        return "met by " + ", ".join(t["met_by"])
    return "not met" if t.get("measured", True) else "baseline not run"


def markdown(payload: dict) -> str:
    """The results of a fast_path.json as the Markdown tables docs/performance.md carries."""
    env = payload.get("environment") or {}
    lines = [f"{env.get('device', '?')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"peft {env.get('peft')}, liger-kernel {env.get('liger-kernel')}, flash-attn {env.get('flash-attn')}", "",
             "| config | tokens/s | × baseline | samples/s | peak alloc GiB | peak reserved GiB | MFU % | HFU % | timed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in payload.get("results") or []:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | {r.get('status')} | | | | | | | |")
            continue
        lines.append("| " + " | ".join([
            r["name"], fmt(r.get("tokens_per_s"), ",.0f"), fmt(r.get("x_baseline"), ".2f"), fmt(r.get("samples_per_s"), ".2f"),
            fmt(r.get("peak_alloc_gib"), ".1f"), fmt(r.get("peak_reserved_gib"), ".1f"), fmt(r.get("mfu_pct"), ".0f"),
            fmt(r.get("hfu_pct"), ".0f"),
            f"{r['timed_steps']} steps, {r['timed_tokens']:,} tokens, {r.get('same_samples', '')}"]) + " |")
    check = payload.get("loss_check") or {}
    if check.get("status") == "ok":
        lines += ["", f"Loss agreement: {check['steps']} steps of {check['config']} vs the baseline, largest relative "
                  f"difference {check['max_rel_diff']:.2e}, mean {check['mean_rel_diff']:.2e} (tolerance {check['rtol']:g}): "
                  f"{'agree' if check.get('agree') else 'DISAGREE'}."]
    for name, rep in (payload.get("baseline_repeats") or {}).items():
        lines.append(f"- {name} again after the other configs: {rep['tokens_per_s']:,.0f} tokens/s, "
                     f"{rep['drift_pct']:+.1f} % against its first run (how far the host drifted within this run)")
    for t in payload.get("targets") or []:
        lines.append(f"- target {t['target']}: {target_state(t)}")
    profiles = payload.get("profiles") or {}
    if profiles:
        lines += ["", "| profiled config | wall ms/step | GPU busy ms/step | GPU idle % | kernels/step | kernel time by kind |",
                  "|---|---:|---:|---:|---:|---|"]
        for name, p in profiles.items():
            kinds = kinds_text(p)
            lines.append(f"| {name} | {p.get('wall_ms_per_step', '')} | {p.get('gpu_busy_ms_per_step', '')} | "
                         f"{p.get('gpu_idle_pct', '')} | {p.get('kernels_per_step', '')} | {kinds or p.get('status') or p.get('note', '')} |")
    return "\n".join(lines)


def header() -> str:
    return "  ".join(name.ljust(w) if i == 0 else name.rjust(w) for i, (name, w) in enumerate(COLUMNS))


def fmt(v, spec) -> str:
    return "-" if v is None else format(v, spec)


def line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['name']:<40}  {r['status']}"
    vals = [r["name"], fmt(r.get("tokens_per_s"), ",.0f"), fmt(r.get("samples_per_s"), ".2f"),
            fmt(r.get("x_baseline"), ".2f"), fmt(r.get("peak_alloc_gib"), ".1f"), fmt(r.get("peak_reserved_gib"), ".1f"),
            fmt(r.get("mfu_pct"), ".0f"), fmt(r.get("hfu_pct"), ".0f"), fmt(r.get("tokens_per_step"), ",.0f"),
            r.get("same_samples", "")]
    text = "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, (_, w)) in enumerate(zip(vals, COLUMNS)))
    if r.get("compile_graph_breaks"):  # a compiled config that does not run as one graph per layer
        text += f"  [{r['compile_graph_breaks']} graph breaks: {'; '.join(r.get('compile_graph_break_reasons', []))}]"
    if r.get("compile_recompile_reasons"):  # guards that failed: each failure compiled the layer again
        text += f"  [recompiled on: {'; '.join(r['compile_recompile_reasons'])}; {r.get('compile_frames')} frames]"
    return text


def environment() -> dict:
    import importlib.metadata as md

    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    for pkg in ("transformers", "peft", "accelerate", "liger-kernel", "triton", "flash-attn"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    return env


def write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def targets(results: list[dict], repeats: dict | None = None) -> list[dict]:
    """Each target's verdict. A config must beat the fastest reading of its family's baseline
    in the run: every baseline entry of ``results`` (``--configs`` may name it more than once)
    and its repeat (``repeats``, by baseline name). A first run may have paid one-off costs (on
    one H200, cuDNN attention plans every new length once, 1.4x on a first row) that a config
    run later in the process no longer pays, and the host-bound batch-1 baseline drifts within
    a process. Without a repeat the verdict says so."""
    verdicts = []
    for label, family, fast_enough, memory_ok in TARGETS:
        name = f"{family}/baseline"
        readings = [r for r in results if r["name"] == name and r["status"] == "ok" and r.get("tokens_per_s")]
        base = readings[0] if readings else None
        again = (repeats or {}).get(name, {}).get("tokens_per_s")
        best = max([r["tokens_per_s"] for r in readings] + [again or 0]) if base is not None else None
        met = [r["name"] for r in results
               if base is not None and r["status"] == "ok" and r["name"] != name
               and r["name"].startswith(family + "/") and r.get("tokens_per_s")
               and fast_enough(r["tokens_per_s"] / best)
               and r.get("peak_alloc_gib") is not None and memory_ok(r["peak_alloc_gib"], base["peak_alloc_gib"])]
        verdicts.append({"target": label, "met_by": sorted(set(met), key=met.index), "measured": base is not None,
                         "baseline_repeated": again is not None or len(readings) > 1,
                         "baseline_best_tokens_per_s": best})
    return verdicts


# -----------------------------------------------------------------------------------------
# The run
# -----------------------------------------------------------------------------------------


def failure(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError):
        return "OOM"
    first = str(err).splitlines()[0][:160] if str(err) else ""
    return f"failed: {type(err).__name__}: {first}"


@dataclass
class Bench:
    """What every part of a run shares: the rows, the samples and the clock."""

    args: argparse.Namespace
    rows: dict
    samples: list[dict]
    order: list[int]
    shapes: dict
    started: float

    @property
    def expected(self) -> list[str]:
        """What a one-sample step trains, in order."""
        return [token_hash(self.samples[i]["input_ids"]) for i in self.order]

    def past_limit(self) -> str | None:
        if time.perf_counter() - self.started > self.args.time_limit:
            return f"skipped: past --time-limit {self.args.time_limit:.0f} s"
        return None

    def attempt(self, fn):
        """(fn's result, None), or (None, why it failed): one failure must not end the run."""
        try:
            return fn(), None
        except Exception as err:  # noqa: BLE001 - recorded with its reason, the run goes on
            if os.environ.get("FAST_PATH_TRACEBACK"):
                import traceback

                traceback.print_exc()
            return None, failure(err)
        finally:
            free_memory()

    def measure(self, name: str) -> dict:
        """One timed row (or baseline): speed, memory, utilisation and which samples it trained."""
        family = family_of(name)
        row = template(self.rows, family) if is_baseline(name) else self.rows[name]
        r = {"name": name, "plugins": [] if is_baseline(name) else row.plugins, "model": row.settings.model,
             "tokens_per_row": row.options["packing"].row_length or row.settings.max_length if packed(row) else None}
        if is_baseline(name):
            raw, why = self.attempt(lambda: run_baseline(row, self.samples, self.order))
        else:
            raw, why = self.attempt(lambda: run_tunerkit(row, self.samples))
        if raw is None:
            return {**r, "status": why}
        r.update({k: v for k, v in raw.items() if k not in ("hashes", "lengths", "step_seconds")})
        r.update(summarise(raw, self.shapes[family], FAMILIES[family].trained, self.args.peak_tflops))
        r["same_samples"] = same_samples(raw, self.expected, set(self.expected), batch_one=not packed(row))
        return r

    def repeat(self, first: dict) -> dict | None:
        """A baseline measured again after the other rows: how far its host drifted within the run."""
        family = family_of(first["name"])
        raw, why = self.attempt(lambda: run_baseline(template(self.rows, family), self.samples, self.order))
        if raw is None:
            print(f"{first['name']} again: {why}", flush=True)
            return None
        again = summarise(raw, self.shapes[family], FAMILIES[family].trained, self.args.peak_tflops)
        return {"tokens_per_s": again["tokens_per_s"],
                "drift_pct": 100.0 * (again["tokens_per_s"] / first["tokens_per_s"] - 1.0)}


def with_ratio(r: dict, results: list[dict]) -> dict:
    """``x_baseline``: against the first ok reading of the row's family baseline in this run."""
    base = next((b for b in results if b["name"] == f"{family_of(r['name'])}/baseline" and b["status"] == "ok"), None)
    if is_baseline(r["name"]) and r.get("status") == "ok":
        r["x_baseline"] = 1.0
    if base is not None and r.get("tokens_per_s") and base.get("tokens_per_s"):
        r["x_baseline"] = r["tokens_per_s"] / base["tokens_per_s"]
    return r


def time_rows(bench: Bench, names: list[str], payload: dict, save) -> None:
    results: list[dict] = payload["results"]
    print("\n" + header(), flush=True)
    for name in names:
        t0 = time.perf_counter()
        late = bench.past_limit()
        r = {"name": name, "status": late} if late else with_ratio(bench.measure(name), results)
        r.setdefault("status", "ok")
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        print(line(r), flush=True)
        payload["targets"] = targets(results)
        save()


def repeat_baselines(bench: Bench, payload: dict, save) -> None:
    # A batch-1 baseline waits on the host for part of every step, so its speed follows the
    # host's CPU: measuring it again at the end shows how far that moved within this run.
    payload["baseline_repeats"] = {}
    firsts: dict = {}  # the first ok entry of each baseline (--configs may name one more than once)
    for r in payload["results"]:
        if is_baseline(r["name"]) and r["status"] == "ok":
            firsts.setdefault(r["name"], r)
    for first in firsts.values():
        late = bench.past_limit()
        rep = None if late else bench.repeat(first)
        if late:
            print(f"{first['name']} again: {late}", flush=True)
        if rep is not None:
            payload["baseline_repeats"][first["name"]] = rep
            print(f"{first['name']} again: {rep['tokens_per_s']:,.0f} tokens/s ({rep['drift_pct']:+.1f} % against "
                  "its first run)", flush=True)
    payload["targets"] = targets(payload["results"], payload["baseline_repeats"])
    save()


def profile_rows(bench: Bench, names: list[str], payload: dict, save) -> None:
    payload["profiles"] = {}
    print("\n== where the time goes (torch.profiler, separate runs; kinds are by kernel name) ==", flush=True)
    for name in names:
        late = bench.past_limit()
        if late:
            print(f"{name:<40} {late}", flush=True)
            continue
        prof, why = bench.attempt(lambda: profile_row(name, bench.rows, bench.args, bench.samples, bench.order))
        prof = prof if prof is not None else {"status": why}
        payload["profiles"][name] = prof
        print(profile_line(name, prof) if "status" not in prof else f"{name:<40} {prof['status']}", flush=True)
        save()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, default=RECIPE, help="the recipe whose rows run (profile 'all'; 'bench' for the default set)")
    p.add_argument("--configs", default="default",
                   help="comma-separated row names (FAMILY/baseline for a baseline), 'default' or 'all' (see --list)")
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                   help="the bf16 matmul ceiling MFU and HFU divide by (H200 datasheet dense bf16: 989)")
    p.add_argument("--check-loss", action="store_true", help="first run the loss-agreement check")
    p.add_argument("--check-config", default="7b/lora+liger+offload", help="the batch-1 row the check compares")
    p.add_argument("--check-steps", type=int, default=50)
    p.add_argument("--check-dropout", type=float, default=0.0,
                   help="LoRA dropout in the check (0: compare the math, not dropout masks)")
    p.add_argument("--check-rtol", type=float, default=1e-2, help="largest per-step relative loss difference allowed")
    p.add_argument("--time-limit", type=float, default=420.0,
                   help="start no further row once this many seconds have passed")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--no-repeat-baseline", dest="repeat_baseline", action="store_false",
                   help="do not measure each baseline again after the other rows (drift within the run)")
    p.add_argument("--render", type=Path, default=None, help="print a fast_path.json as Markdown tables and exit")
    p.add_argument("--profile", default="", help="comma-separated rows to profile after the speed table "
                   "(a separate short run each: where the step time goes, by kernel kind)")
    p.add_argument("--profile-steps", type=int, default=3, help="profiled steps per --profile row")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes for a plumbing check: tiny presets, 64-token samples, 3+1 steps (on a CPU: liger left out)")
    args = p.parse_args(argv)
    if args.smoke:
        args.check_steps = 4
    return args


def start(args) -> Bench:
    """The rows, the common samples in the loader's order, and the FLOP shapes of both families."""
    from tunerkit.models.presets import get_preset

    rows = load_rows(args.recipe, args.smoke)
    models = {family: template(rows, family).settings.model for family in FAMILIES}
    vocabs = {get_preset(m).vocab for m in models.values()}
    if len(vocabs) != 1:
        raise SystemExit("both families must share a vocabulary (the samples are token ids)")
    any_row = template(rows, "7b").settings
    samples = make_samples(vocabs.pop(), any_row.seed, any_row.dataset, any_row.max_length)
    return Bench(args, rows, samples, loader_order(len(samples), any_row.seed),
                 {family: Shape.of(get_preset(m)) for family, m in models.items()}, time.perf_counter())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    if args.list:
        defaults = set(default_names(args.recipe))
        for name, row in load_rows(args.recipe, smoke=False).items():
            print(f"{name:<60} {'default' if name in defaults else 'opt-in':8} {row.note}")
        return 0
    bench = start(args)
    names = select(args.configs, bench.rows, args.recipe)
    out_path = Path(os.environ["OUT"]) / "fast_path.json" if os.environ.get("OUT") else None
    env = environment()
    s = template(bench.rows, "7b").settings
    print(f"fast path bench: {env['device']}, torch {env['torch']}, transformers {env['transformers']}, "
          f"peft {env['peft']}, liger-kernel {env['liger-kernel']}; rows of {args.recipe.name}", flush=True)
    print(f"samples: {len(bench.samples)} from {s.dataset} (seed {s.seed}), cut at {s.max_length} tokens, mean "
          f"{np.mean([len(x['input_ids']) for x in bench.samples]):.0f}", flush=True)
    payload = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "peak_tflops": args.peak_tflops,
               "results": [], "loss_check": None, "targets": None}

    def save() -> None:  # after every part, so a run cut by its time limit keeps what it measured
        write_json(out_path, payload)
        write_json(args.json, payload)

    if args.check_loss:
        payload["loss_check"] = check_loss(args, bench.rows, bench.samples, bench.order)
        save()
    time_rows(bench, names, payload, save)
    if args.repeat_baseline:
        repeat_baselines(bench, payload, save)
    if args.profile:
        profile_rows(bench, select(args.profile, bench.rows, args.recipe), payload, save)
    print("\nsamples/s and tokens/s count real (unpadded) samples and tokens of the timed steps; alloc/resv: "
          "peak GiB allocated/reserved over the whole row (weights included); MFU/HFU: % of "
          f"{args.peak_tflops:.0f} TFLOP/s, HFU with the recompute of gradient checkpointing.", flush=True)
    for v in payload["targets"] or []:
        print(f"target {v['target']}: {target_state(v)}", flush=True)
    print(f"total {time.perf_counter() - bench.started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
