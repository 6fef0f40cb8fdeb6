"""Trainable parameters per tuner on a preset's shape, counted on the meta device (no weights allocated).

    python bench/count_params.py                  # qwen-7b-chat, ms-swift's Tuners table model
    python bench/count_params.py --model tiny-llama

Each row builds the preset's model on ``torch.device("meta")``, runs the row's real
``modify_model`` and ``apply_tuner`` hooks, and counts ``requires_grad`` parameters, so
the numbers are what a row would report. Prints a markdown table beside ms-swift's
numbers (docs/tuners/README.md holds the qwen-7b-chat one).
"""

from __future__ import annotations

import argparse

import torch

#: (row label, plugins, option tables): the Tuners table's rows, targets ALL as in ms-swift's benchmark.
ROWS = [
    ("lora (DEFAULT)", ["lora"], {}),
    ("lora (ALL)", ["lora"], {"lora": {"targets": "ALL"}}),
    ("rslora", ["rslora"], {"rslora": {"targets": "ALL"}}),
    ("dora", ["dora"], {"dora": {"targets": "ALL"}}),
    ("lora+", ["loraplus"], {"loraplus": {"targets": "ALL"}}),
    ("adalora", ["adalora"], {"adalora": {"targets": "ALL"}}),
    ("lora + neftune", ["lora", "neftune"], {"lora": {"targets": "ALL"}}),
    ("adapter", ["adapter"], {}),
    ("llamapro", ["llamapro"], {}),
    ("full", ["full"], {}),
]

#: ms-swift's reported trainable parameters on qwen-7b-chat (millions), where it gave one.
SEED_QWEN_7B = {"lora (DEFAULT)": 4.1943, "lora (ALL)": 17.8913, "rslora": 17.8913, "dora": 19.2512,
                "lora+": 17.8913, "adalora": 26.8389, "lora + neftune": 17.8913, "adapter": 33.6896,
                "llamapro": 809.5826, "full": 7721.3245}


def count_on_meta(plugins: list[str], model: str = "qwen-7b-chat", **tables) -> dict:
    """``count_parameters`` of ``model`` after the row's modify_model and apply_tuner hooks, on the meta device."""
    from transformers import AutoModelForCausalLM

    from tunerkit.loop import build_context
    from tunerkit.metrics import count_parameters
    from tunerkit.models.loading import resolve_model
    from tunerkit.recipe import make_row

    row = make_row("count", plugins, model=model, **tables)
    ctx = build_context(row, out_dir=None)
    ctx.model_source = resolve_model(model)
    if ctx.model_source.preset is None:
        raise SystemExit(f"{model} is not a preset: counting on the meta device needs a preset's config")
    with torch.device("meta"):
        ctx.model = AutoModelForCausalLM.from_config(ctx.model_source.preset.config())
    try:
        ctx.hook.modify_model(ctx=ctx)
        ctx.hook.apply_tuner(ctx=ctx)
        return count_parameters(ctx.model)
    finally:
        ctx.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen-7b-chat", help="a preset name")
    args = parser.parse_args()
    seed = SEED_QWEN_7B if args.model == "qwen-7b-chat" else {}
    print(f"| tuner | trainable (M) | % of total | ms-swift (M) |\n|---|---:|---:|---:|")
    for label, plugins, tables in ROWS:
        c = count_on_meta(plugins, args.model, **tables)
        ref = f"{seed[label]:.4f}" if label in seed else ""
        print(f"| {label} | {c['trainable_params'] / 1e6:.4f} | {c['trainable_pct']:.4f} | {ref} |")


if __name__ == "__main__":
    main()
