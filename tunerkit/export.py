"""``tunerkit export``: turn a saved PEFT adapter into a standalone Hugging Face checkpoint.

``tunerkit export ADAPTER_DIR --base MODEL --merge --out DIR`` loads the base model the
way a row does (a preset, a local directory, a hub id or the bundled SmolLM2), puts the
adapter on it with PEFT, merges the adapter's update into the base weights in fp32 and
writes the result with ``save_pretrained``: a checkpoint plain transformers loads, no
PEFT needed at inference. Works for every PEFT adapter type that can merge (LoRA,
rsLoRA, DoRA, AdaLoRA, ...). ``merge_trained`` does the same for a model still in memory
after training (the ``export`` plugin's default): a copy merged by PEFT, the trained model
left as it was.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import click
import torch

from tunerkit.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def read_adapter_config(adapter_dir: Path) -> dict:
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.exists():
        raise UserError(f"no adapter_config.json in '{adapter_dir}'", key="ADAPTER_DIR",
                        hint="give the folder a row saved with save = true (runs/<recipe>/<row>/model)")
    config = json.loads(config_file.read_text())
    if "peft_type" not in config:
        raise UserError(f"'{adapter_dir}' holds no PEFT adapter (adapter_config.json has no peft_type)",
                        key="ADAPTER_DIR", hint="only PEFT adapters can be merged into their base")
    return config


def pick_base(base: str | None, config: dict) -> str:
    recorded = config.get("base_model_name_or_path") or None
    if base is None and recorded is None:
        raise UserError("the adapter does not record its base model", key="--base",
                        hint="pass --base: a preset name, a local model directory or smollm2-135m-instruct")
    return base or recorded


def refuse_nonempty(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise UserError(f"'{out}' is not empty", key="--out", hint="choose a new folder; export never overwrites")


def merge_adapter(adapter_dir: str | Path, base: str | None, out: str | Path, dtype: str = "fp32") -> Path:
    """Merge the PEFT adapter in ``adapter_dir`` into ``base`` and save the merged model under ``out``."""
    from peft import PeftModel

    from tunerkit.models import loading

    adapter_dir, out = Path(adapter_dir), Path(out)
    config = read_adapter_config(adapter_dir)
    source = loading.resolve_model(pick_base(base, config))
    refuse_nonempty(out)
    cpu = torch.device("cpu")
    impl, _ = loading.attn_implementation("sdpa", cpu)
    # Merge in fp32 (W + scale * B @ A loses precision in bf16), cast only what is written.
    model = loading.load_pretrained(source, torch.float32, cpu, impl)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"the adapter does not fit base '{source.spec}': {str(err).splitlines()[0][:160]}",
                        key="--base", hint="pass the model the adapter was trained on") from None
    merged = peft_model.merge_and_unload()
    merged.to(DTYPES[dtype])
    write_merged(merged, out, _tokenizer(adapter_dir, source), source.random_weights)
    return out


def merge_trained(peft_model, out: str | Path, tokenizer=None, random_weights: bool = False,
                  dtype: str = "bf16") -> Path:
    """Write ``peft_model``'s adapter merged into a copy of its own base weights under ``out``.

    The copy keeps the weights the adapter was trained on (a random preset's too, which a
    reload would draw again), stays on the model's device and is merged by PEFT in the
    weights' dtype; ``peft_model`` itself is left unmerged for whatever reads it next."""
    out = Path(out)
    refuse_nonempty(out)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    try:
        # training turns the KV cache off in the config; a checkpoint for inference wants it on
        merged.config.use_cache = True
        merged.to(DTYPES[dtype])
        write_merged(merged, out, tokenizer, random_weights)
    finally:
        del merged
    return out


def write_merged(merged, out: Path, tokenizer, random_weights: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    if tokenizer is None and random_weights:
        from tunerkit.models import loading

        # GPT-QModel refuses a model folder without a tokenizer; a stand-in over plain ids serves
        tokenizer = loading.ids_tokenizer(merged.config.vocab_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def _tokenizer(adapter_dir: Path, source):
    """The tokenizer saved beside the adapter (rows save it there), else the base model's."""
    from transformers import AutoTokenizer

    from tunerkit.models import loading

    if (adapter_dir / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(adapter_dir))
    try:
        return loading.load_tokenizer(source)
    except (OSError, UserError):
        return None


@click.command(name="export")
@click.argument("adapter_dir", metavar="ADAPTER_DIR|MODEL", type=click.Path(path_type=Path))
@click.option("--base", help="base model: a preset, a local directory, a hub id or smollm2-135m-instruct "
                             "(default: the one recorded in adapter_config.json)")
@click.option("--merge", is_flag=True, help="merge the adapter into the base weights")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="new folder for the merged or quantized checkpoint")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp32", show_default=True,
              help="dtype of the written weights (the merge itself runs in fp32)")
@click.option("--quantize", type=click.Choice(["gptq", "awq"]),
              help="quantize MODEL (a merged checkpoint) with GPT-QModel's GPTQ or AWQ instead of merging")
@click.option("--bits", type=int, default=4, show_default=True, help="bits per weight for --quantize")
@click.option("--calibration", help="calibration dataset for --quantize: a registry name, a local file or builtin:*")
@click.option("--samples", type=int, default=128, show_default=True, help="calibration samples for --quantize")
@click.option("--group-size", type=int, default=128, show_default=True,
              help="input weights sharing one scale and zero point (--quantize)")
def command(adapter_dir, base, merge, out, dtype, quantize, bits, calibration, samples, group_size):
    """Write ADAPTER_DIR (a PEFT adapter) merged into its base model as a plain HF checkpoint,
    or with --quantize, MODEL quantized by GPTQ or AWQ."""
    if quantize:
        from tunerkit.quantize import quantize as run_quantize

        if merge or calibration is None:
            raise UserError("--merge and --quantize are separate steps" if merge else "--quantize needs --calibration",
                            key="--merge" if merge else "--calibration",
                            hint="merge first (--merge --out DIR), then quantize DIR with --calibration DATASET")
        path = run_quantize(str(adapter_dir), quantize, bits, calibration, out, samples=samples, group_size=group_size)
        click.echo(f"quantized {adapter_dir} with {quantize} to {bits} bits: {path}")
        return
    if not merge:
        raise UserError("nothing to export: say how", key="--merge",
                        hint="--merge writes the adapter merged into its base model")
    path = merge_adapter(adapter_dir, base, out, dtype)
    click.echo(f"merged {adapter_dir} into {base or 'its base'}: {path}")
