"""Packed vs unpacked losses and gradients through the varlen kernels, in bf16 on a GPU.

    python bench/check_packing_gpu.py                       # qwen-7b-chat shape, 2 layers
    python bench/check_packing_gpu.py --model qwen-1_8b-chat --layers 4 --max-length 16384
    python bench/check_packing_gpu.py --device cpu --model tiny-llama   # smoke run, fp32

A preset's shape with random weights (seeded) and ``--layers`` decoder layers; samples
with lengths from ms-swift's cls-fudan-news-zh statistics, cut to ``--longest`` (a
quarter of ``--max-length`` by default, so rows hold several samples); a
third of each sample is prompt (no loss). The reference is every sample alone through the
model's own SDPA attention. For each kernel (auto resolves to flash_attn when installed,
else torch's varlen_attn) the samples are packed best-fit into rows and run through the
packing plugin's attention; per-sample losses and the gradient of one weight matrix are
compared with the reference. bf16 on both sides, so agreement is to bf16 precision, not
exact: the thresholds are a mean relative loss difference under 1 % and a gradient cosine
above 0.99. Prints one JSON line per kernel and exits 1 if any kernel fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tunerkit.data.collate import FlatteningCollator  # noqa: E402
from tunerkit.data.packing import best_fit_decreasing  # noqa: E402
from tunerkit.data.synthetic import DISTRIBUTIONS, sample_lengths  # noqa: E402
from tunerkit.models.presets import get_preset  # noqa: E402


def varlen_module():
    from tunerkit_plugins.data import varlen_attention  # the checkout is on sys.path above

    return varlen_attention


def build_model(name: str, layers: int, dtype, device):
    from transformers import AutoModelForCausalLM

    preset = get_preset(name)
    if preset is None:
        raise SystemExit(f"unknown preset {name}")
    config = preset.config()
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def make_samples(n: int, longest: int, vocab: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(sample_lengths(DISTRIBUTIONS["cls-fudan-news-zh"], n, rng), longest)
    out = []
    for length in lengths:
        ids = rng.integers(10, vocab, size=int(length)).tolist()
        cut = int(length) // 3
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summed_losses(logits, labels, bounds) -> torch.Tensor:
    return torch.stack([F.cross_entropy(logits[0, s:e - 1].float(), labels[0, s + 1:e], ignore_index=-100,
                                        reduction="sum") for s, e in zip(bounds[:-1], bounds[1:])])


def reference(model, samples, device, weight):
    """Per-sample losses alone through SDPA, and the gradient of ``weight`` of their sum."""
    losses = []
    weight.grad = None
    for s in samples:
        ids = torch.tensor([s["input_ids"]], device=device)
        labels = torch.tensor([s["labels"]], device=device)
        loss = summed_losses(model(input_ids=ids).logits, labels, [0, ids.shape[1]])[0]
        loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses), weight.grad.detach().float().clone()


def packed(model, samples, max_length, device, weight):
    """Per-sample losses (in the samples' order) through packed rows, and the same gradient."""
    collate = FlatteningCollator()
    losses = torch.zeros(len(samples), device=device)
    weight.grad = None
    tokens, seconds = 0, 0.0
    # The same best-fit bins the packing plugin builds, kept as indices to restore the order.
    bins = best_fit_decreasing([len(s["input_ids"]) for s in samples], max_length)
    for bin_ in bins:
        batch = collate([samples[i] for i in bin_])
        bounds = batch["cu_seq_lens_q"].reshape(-1).tolist()
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
                  if k not in ("labels", "num_samples", "num_tokens")}
        sync(device)
        start = time.perf_counter()
        row_losses = summed_losses(model(**inputs).logits, batch["labels"].to(device), bounds)
        row_losses.sum().backward()
        sync(device)
        seconds += time.perf_counter() - start
        tokens += batch["num_tokens"]
        for i, loss in zip(bin_, row_losses.detach()):
            losses[i] = loss
    return losses, weight.grad.detach().float().clone(), len(bins), tokens / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen-7b-chat", help="preset whose shape to use (random weights)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=8192, help="packed row length")
    parser.add_argument("--longest", type=int, default=None, help="cut samples to this (default max-length / 4)")
    parser.add_argument("--kernels", default="auto,torch_varlen,sdpa", help="comma-separated varlen kernels to check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    va = varlen_module()
    model = build_model(args.model, args.layers, dtype, device)
    weight = model.model.layers[0].self_attn.q_proj.weight
    longest = args.longest or args.max_length // 4
    samples = make_samples(args.samples, longest, model.config.vocab_size, args.seed)
    ref_losses, ref_grad = reference(model, samples, device, weight)
    label_tokens = sum(sum(l != -100 for l in s["labels"][1:]) for s in samples)
    import transformers

    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype),
              "model": args.model, "layers": args.layers, "samples": len(samples),
              "tokens": sum(len(s["input_ids"]) for s in samples), "max_length": args.max_length,
              "torch_varlen_causal": None if va.TORCH_VARLEN is None else str(va.TORCH_VARLEN[1]),
              "reference_mean_loss": float(ref_losses.sum() / label_tokens)}
    print(json.dumps(header), flush=True)

    failed = False
    for preference in [k.strip() for k in args.kernels.split(",") if k.strip()]:
        result = {"kernel": preference}
        try:
            kernel = va.resolve_kernel(preference, device, dtype)
            result["resolved"] = va.describe_kernel(kernel)
            before = va.install(model, preference)
            try:
                losses, grad, rows, tokens_per_s = packed(model, samples, args.max_length, device, weight)
            finally:
                va.restore(model, before)
        except Exception as err:  # a kernel missing on this machine is reported, not fatal
            result.update(ok=None, error=f"{type(err).__name__}: {err}")
            print(json.dumps(result), flush=True)
            continue
        rel = ((losses - ref_losses).abs() / ref_losses.abs().clamp_min(1e-6)).float()
        cosine = float(F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0))
        norm_ratio = float(grad.norm() / ref_grad.norm())
        ok = bool(rel.mean() < 1e-2 and cosine > 0.99 and abs(norm_ratio - 1) < 0.05)
        failed |= not ok
        result.update(ok=ok, packed_rows=rows, packed_mean_loss=float(losses.sum() / label_tokens),
                      loss_rel_diff_mean=float(rel.mean()), loss_rel_diff_max=float(rel.max()),
                      grad_cosine=cosine, grad_norm_ratio=norm_ratio, packed_fwd_bwd_tokens_per_s=round(tokens_per_s))
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
