"""Decoding speed of every infer backend in one run (GPU): greedy, batch 1, random weights.

    python bench/infer_speed.py                          # qwen-7b-chat, bf16, 256-token prompts, 256 new tokens
    python bench/infer_speed.py --backends eager,compiled --prompts 2
    python bench/infer_speed.py --peft                   # the same on a LoRA-wrapped model (r=8 on q,k,v)

Backends (tunerkit/eval/infer.py): ``eager`` (generate, dynamic cache: what ms-swift
measured), ``compiled`` (static cache, decode step compiled through transformers'
``get_compiled_call`` with CUDA graphs, greedy loop without host syncs), ``static``
(generate, static cache, compilation off) and ``generate-compiled`` (transformers' own
compiled ``generate``: static cache + ``compile_config``, for comparison). Each backend
runs one untimed warm-up generation (compilation happens there and is reported as
``warmup_s``), then the timed prompts. A backend that fails is recorded with its error
and the run goes on. Prints a markdown table; writes ``infer_speed.json`` to ``$OUT``
(or ``--out``) after every backend, so a cut-off run still leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import traceback
from pathlib import Path

import torch

DEFAULT_BACKENDS = "eager,compiled,static,generate-compiled"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen-7b-chat", help="a preset (random weights) or model directory")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompts", type=int, default=3, help="timed prompts per backend (after one warm-up)")
    p.add_argument("--backends", default=DEFAULT_BACKENDS)
    p.add_argument("--peft", action="store_true", help="wrap the model in LoRA r=8 on q,k,v (PEFT) first")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="skip the remaining backends once this many seconds have passed")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for infer_speed.json (default: $OUT)")
    p.add_argument("--device", default="cuda", help="cpu only to smoke-test this script (compiled needs CUDA)")
    return p.parse_args()


def load_model(spec: str, dtype: torch.dtype, device: torch.device, peft: bool):
    from tunerkit.models.loading import load_pretrained, resolve_model

    model = load_pretrained(resolve_model(spec), dtype, device, "sdpa").eval()
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj"])).eval()
        torch.manual_seed(1)
        with torch.no_grad():  # non-zero B: the adapters really compute something
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
    return model


def release_compiled(model) -> None:
    """Drop compiled code and CUDA graph pools between backends."""
    from tunerkit.eval.infer import generation_model

    inner = generation_model(model)
    for m in [model] + ([inner] if inner is not None and inner is not model else []):
        for attr in ("_compiled_call", "_last_compile_config", "_cache"):
            if attr in m.__dict__:
                delattr(m, attr)
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compile_counters() -> dict:
    from torch._dynamo.utils import counters

    return {"graph_breaks": sum(counters["graph_break"].values()),
            "graph_break_reasons": dict(list(counters["graph_break"].items())[:5]),
            "unique_graphs": counters["stats"].get("unique_graphs", 0),
            "inductor": {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}}


def run_backend(model, backend: str, prompts, new_tokens: int, device) -> dict:
    from torch._dynamo.utils import counters

    from tunerkit.eval.infer import measure_speed
    from tunerkit.metrics import peak_memory, reset_peak_memory

    counters.clear()
    reset_peak_memory(device)
    start = time.perf_counter()
    result = measure_speed(model, prompts, new_tokens, backend, device, warmup=1, fallback=False)
    wall = time.perf_counter() - start
    row = {"backend": backend, "ran": result.backend, "tokens_per_s": result.tokens_per_s, "tokens": result.tokens,
           "seconds": result.seconds, "warmup_s": wall - result.seconds,
           "peak_alloc_gib": peak_memory(device).get("peak_allocated_gib", 0.0),
           "first_tokens": result.outputs[0][:16] if result.outputs else [], "notes": result.notes}
    if backend != "eager":
        row.update(compile_counters())
    return row, result.outputs


def agreement(a: list[int], b: list[int]) -> int:
    """Leading tokens two greedy decodings share (random bf16 weights make near-ties, so some drift is normal)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def divergence_gaps(model, prompts, ours: list[list[int]], eager: list[list[int]], device) -> list[dict]:
    """Where a backend's greedy tokens first leave eager's: how far apart the two picks were.

    One plain forward over prompt + shared prefix gives the logits at the divergence; if the
    two chosen tokens' logits differ by less than bf16's resolution at that magnitude
    (2^-7 of the largest logit), the split is a near-tie, not a wrong computation.
    """
    out = []
    for prompt, a, b in zip(prompts, ours, eager):
        n = agreement(a, b)
        if n >= min(len(a), len(b)):
            out.append({"diverged_at": None})
            continue
        ids = torch.tensor([list(prompt) + list(b[:n])], device=device)
        logits = model(input_ids=ids).logits[0, -1].float()
        gap = float(logits[b[n]] - logits[a[n]])
        resolution = float(logits.abs().max()) * 2 ** -7
        out.append({"diverged_at": n, "logit_gap": gap, "bf16_resolution": resolution,
                    "near_tie": abs(gap) <= resolution})
    return out


def main():
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/infer_speed.py measures GPU decoding; no CUDA device here")
    from tunerkit.eval.infer import BACKENDS, COMPARISON_BACKENDS, generation_model, prompt_token_ids
    from tunerkit.metrics import environment

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS + COMPARISON_BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {BACKENDS + COMPARISON_BACKENDS}")
    began = time.perf_counter()
    model = load_model(args.model, dtype, device, args.peft)
    vocab = (generation_model(model) or model).config.vocab_size
    prompts = prompt_token_ids(args.prompts, args.prompt_tokens, vocab, tokenizer=None)
    report = {"model": args.model, "dtype": args.dtype, "peft": args.peft, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "timed_prompts": args.prompts, "load_s": time.perf_counter() - began,
              "environment": environment(device), "rows": []}
    out_file = Path(args.out) / "infer_speed.json" if args.out else None
    eager_outputs = None
    for backend in backends:
        if time.perf_counter() - began > args.budget_s:
            report["rows"].append({"backend": backend, "error": f"skipped: time budget of {args.budget_s:.0f} s spent"})
            continue
        print(f"infer_speed: {backend} ...", flush=True)
        try:
            row, outputs = run_backend(model, backend, prompts, args.new_tokens, device)
            if backend == "eager":
                eager_outputs = outputs
            elif eager_outputs:
                row["tokens_agreeing_with_eager"] = [agreement(a, b) for a, b in zip(outputs, eager_outputs)]
                row["divergences"] = divergence_gaps(model, prompts, outputs, eager_outputs, device)
        except Exception as err:  # noqa: BLE001 - record and go on to the next backend
            row = {"backend": backend, "error": f"{type(err).__name__}: {str(err)[:400]}",
                   "traceback": traceback.format_exc()[-3000:]}
        print(f"infer_speed: {backend}: " + (f"{row['tokens_per_s']:.1f} tokens/s (warm-up {row['warmup_s']:.0f} s)"
                                             if "tokens_per_s" in row else row["error"]), flush=True)
        report["rows"].append(row)
        release_compiled(model)
        if out_file is not None:
            out_file.parent.mkdir(parents=True, exist_ok=True)
            out_file.write_text(json.dumps(report, indent=2, default=str))
    base = next((r["tokens_per_s"] for r in report["rows"] if r["backend"] == "eager" and "tokens_per_s" in r), None)
    fast = max((r["tokens_per_s"] for r in report["rows"] if r["backend"] != "eager" and "tokens_per_s" in r),
               default=None)
    if base and fast:
        report["best_speedup_over_eager"] = fast / base
    if out_file is not None:
        out_file.write_text(json.dumps(report, indent=2, default=str))
    print(render(report))


def render(report: dict) -> str:
    env = report["environment"]
    lines = [f"{report['model']} ({report['dtype']}{', LoRA r8 q,k,v' if report['peft'] else ''}, random weights), "
             f"batch 1, {report['prompt_tokens']}-token prompts, {report['new_tokens']} new tokens, "
             f"{report['timed_prompts']} timed prompts; {env.get('device_name')}, "
             f"torch {env['versions'].get('torch')}, transformers {env['versions'].get('transformers')}", "",
             "| backend | tokens/s | x eager | warm-up s | peak alloc GiB | graph breaks | note |", "|---|---|---|---|---|---|---|"]
    base = next((r["tokens_per_s"] for r in report["rows"] if r["backend"] == "eager" and "tokens_per_s" in r), None)
    for r in report["rows"]:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['backend']} | failed | | | | | {r['error'][:160].replace('|', '/')} |")
            continue
        ratio = f"{r['tokens_per_s'] / base:.2f}" if base else ""
        note = "; ".join(r.get("notes") or [])
        if "tokens_agreeing_with_eager" in r:
            note = (note + "; " if note else "") + f"tokens agreeing with eager: {r['tokens_agreeing_with_eager']}"
            ties = [d.get("near_tie") for d in r.get("divergences") or [] if d.get("diverged_at") is not None]
            if ties:
                note += f" (divergences at near-ties: {sum(bool(t) for t in ties)}/{len(ties)})"
        lines.append(f"| {r['backend']} | {r['tokens_per_s']:.1f} | {ratio} | {r['warmup_s']:.0f} | "
                     f"{r['peak_alloc_gib']:.1f} | {r.get('graph_breaks', '')} | {note} |")
    if "best_speedup_over_eager" in report:
        lines.append(f"\nbest speed-up over eager: {report['best_speedup_over_eager']:.2f}x (target >= 4x)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
