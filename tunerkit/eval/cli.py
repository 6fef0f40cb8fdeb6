"""``tunerkit eval``: score a model or a saved PEFT adapter on local benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tunerkit.errors import UserError

TASKS = ("gsm8k", "arc", "ceval", "infer_speed")


def load_for_eval(spec: str, base: str | None, dtype_choice: str, device):
    """(model, tokenizer) for a preset, model directory, hub id or PEFT adapter directory.

    An adapter directory (it has ``adapter_config.json``) is loaded onto its base model:
    ``--base`` or the ``base_model_name_or_path`` the adapter recorded.
    """
    from tunerkit.core import resolve_dtype
    from tunerkit.data.chat import ensure_template
    from tunerkit.models.loading import ModelSource, attn_implementation, load_pretrained, load_tokenizer, resolve_model

    dtype = resolve_dtype(dtype_choice, device)
    attn, _ = attn_implementation("sdpa", device)
    path = Path(spec).expanduser()
    if (path / "adapter_config.json").is_file():
        recorded = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        base_spec = base or recorded
        if not base_spec:
            raise UserError(f"the adapter in {spec} records no base model", key="--base",
                            hint="pass --base MODEL (the preset, directory or hub id it was trained on)")
        base_source = resolve_model(base_spec)
        try:
            from peft import PeftModel
        except ImportError:
            raise UserError("loading an adapter needs peft", hint="pip install peft") from None
        model = PeftModel.from_pretrained(load_pretrained(base_source, dtype, device, attn), str(path)).to(device)
        has_tokenizer = (path / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(ModelSource("local", spec, path=path) if has_tokenizer else base_source)
    else:
        if base:
            raise UserError(f"--base is only for adapter directories; {spec} has no adapter_config.json", key="--base")
        source = resolve_model(spec)
        model = load_pretrained(source, dtype, device, attn)
        tokenizer = load_tokenizer(source)
    ensure_template(tokenizer, None)
    model.eval()
    return model, tokenizer


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UserError(f"unknown task(s): {', '.join(unknown) or '(none given)'}", key="--tasks",
                        hint=f"choose from {', '.join(TASKS)}")
    return tasks


def run_tasks(model, tokenizer, tasks, data, device, *, limit, fewshot, max_new_tokens, batch_size,
              backend, infer_prompts, infer_new_tokens) -> dict:
    from tunerkit.eval import arc, ceval, gsm8k
    from tunerkit.eval.infer import speed_metrics

    metrics: dict = {}
    for task in tasks:
        if task == "gsm8k":
            metrics.update(gsm8k.evaluate(model, tokenizer, data, device, limit=limit, fewshot=fewshot,
                                          max_new_tokens=max_new_tokens, batch_size=batch_size))
        elif task == "arc":
            metrics.update(arc.evaluate(model, tokenizer, data, device, limit=limit, fewshot=fewshot,
                                        batch_size=batch_size))
        elif task == "ceval":
            metrics.update(ceval.evaluate(model, tokenizer, data, device, limit=limit, fewshot=fewshot,
                                          batch_size=batch_size))
        else:
            metrics.update(speed_metrics(model, tokenizer, device, backend, infer_prompts, infer_new_tokens))
    return metrics


@click.command(name="eval")
@click.argument("model")
@click.option("--tasks", default="gsm8k,arc,ceval", show_default=True,
              help=f"comma-separated: {', '.join(TASKS)}")
@click.option("--data", type=click.Path(path_type=Path),
              help="folder with gsm8k/, arc/, ceval/ files in their public schemas (docs/evaluation.md)")
@click.option("--limit", type=click.IntRange(min=1), help="items per task (default: all)")
@click.option("--fewshot", type=click.IntRange(min=0), default=0, show_default=True, help="few-shot examples per prompt")
@click.option("--base", help="base model of an adapter directory (default: the one the adapter records)")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="generation length for gsm8k")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--backend", type=click.Choice(["eager", "static", "compiled"]), default="eager", show_default=True,
              help="decoding backend for infer_speed")
@click.option("--infer-prompts", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--infer-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="also write all metrics to this file")
def command(model, tasks, data, limit, fewshot, base, max_new_tokens, batch_size, backend, infer_prompts,
            infer_new_tokens, dtype, json_path):
    """Score MODEL (preset, model directory, hub id or PEFT adapter directory) on local benchmarks."""
    import torch

    task_list = parse_tasks(tasks)
    if data is None and any(t != "infer_speed" for t in task_list):
        raise UserError("accuracy tasks need --data DIR", key="--data", hint="see docs/evaluation.md for the layout")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded, tokenizer = load_for_eval(model, base, dtype, device)
    metrics = run_tasks(loaded, tokenizer, task_list, data, device, limit=limit, fewshot=fewshot,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, backend=backend,
                        infer_prompts=infer_prompts, infer_new_tokens=infer_new_tokens)
    for key, value in metrics.items():
        if isinstance(value, float):
            click.echo(f"{key}: {value:.4f}")
        elif isinstance(value, (int, str)):
            click.echo(f"{key}: {value}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"model": model, "base": base, **metrics}, indent=2, ensure_ascii=False))
