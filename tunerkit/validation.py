"""Checks that need more than types, run for every row before anything trains.

Everything that can be known without training is checked here, at ``--check`` as at ``run``:
the model and data can be found and read, the evaluations and chat template exist, the
machine has the GPUs and memory, and every plugin agrees (its ``validate`` hook, which may
look at the model's structure through :func:`model_skeleton`). This module builds the row's
plugin manager itself: the config layer never imports the training loop.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from tunerkit.core import CoreDefaults
from tunerkit.data.chat import TEMPLATES
from tunerkit.data.sources import check_source, kind_of
from tunerkit.errors import ModelTooLarge, UserError
from tunerkit.launch import inside_launch, visible_gpus
from tunerkit.models.bundled import converted_dir
from tunerkit.models.loading import ModelSource, cache_dir, resolve_model
from tunerkit.options import did_you_mean
from tunerkit.plugins import get_plugin, make_manager


def available_memory_bytes() -> tuple[int, str]:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "CPU RAM"


def check_fits(row, table: str, file: str, bits: float) -> None:
    """A preset whose weights alone (``bits`` each) exceed the device's memory cannot run: say so before starting."""
    source = resolve_model(row.settings.model)
    if source.preset is None:
        return
    need = source.preset.num_params() * bits / 8
    have, where = available_memory_bytes()
    if need > have * row.settings.gpus:
        raise ModelTooLarge(f"model '{row.settings.model}' needs {need / 2**30:.1f} GiB for its {bits:g}-bit weights alone;"
                        f" {where} has {have / 2**30:.1f} GiB", file=file, table=table, key="model",
                        hint="pick a smaller preset, a profile for this machine (--profile), or more GPUs")


def model_skeleton(row) -> torch.nn.Module | None:
    """The row's model built on the meta device from its config: every module and parameter
    shape, no weights, no memory. None where the config cannot be read offline (a hub id not
    in the local cache, the bundled model before its first conversion)."""
    return _skeleton(row.settings.model)


@functools.lru_cache(maxsize=8)
def _skeleton(spec: str) -> torch.nn.Module | None:
    config = _model_config(resolve_model(spec))
    if config is None:
        return None
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _model_config(source: ModelSource):
    from transformers import AutoConfig

    if source.kind == "preset":
        return source.preset.config()
    if source.kind == "local":
        return AutoConfig.from_pretrained(source.path)
    if source.kind == "bundled":
        # The converted copy's config, where one exists: converting only to validate would take a while.
        folder = converted_dir(source.spec, cache_dir())
        return AutoConfig.from_pretrained(folder) if (folder / "config.json").exists() else None
    try:
        return AutoConfig.from_pretrained(source.spec, local_files_only=True)
    except OSError:  # not in the local hub cache: nothing to check against offline
        return None


def unmatched_module_names(model: torch.nn.Module, names: list[str]) -> list[str]:
    """The names (PEFT's ``target_modules`` rule: a module's full name or its last parts) that
    match no module of ``model``."""
    found = [n for n, _ in model.named_modules() if n]
    return [name for name in names if not any(m == name or m.endswith("." + name) for m in found)]


def check_row_settings(row, file: str, table: str) -> None:
    """What the row's settings name exists and can be read: model, data, evaluations, template, GPUs."""
    s = row.settings
    try:
        resolve_model(s.model)
        for key, spec in (("dataset", s.dataset), ("eval_dataset", s.eval_dataset),
                          ("mix", (s.mix or {}).get("dataset"))):
            if spec:
                check_source(spec, key)
                _check_readable(spec, key)
    except UserError as err:
        raise err.located(file=file, table=table) from None
    if not row.plugins and s.train:
        raise UserError("plugins = [] with training on would train every weight without saying so", file=file,
                        table=table, key="plugins", hint='add "full" for full fine-tuning, or set train = false')
    _check_evaluations(s, file, table)
    if s.chat_template is not None and s.chat_template not in TEMPLATES:
        raise UserError(f"unknown chat template '{s.chat_template}'", file=file, table=table, key="chat_template",
                        hint=did_you_mean(s.chat_template, TEMPLATES) or f"known: {', '.join(TEMPLATES)}")


def _check_readable(spec: str, key: str) -> None:
    if kind_of(spec) != "file":
        return
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"not a file: {spec}", key=key, hint="name a .jsonl, .json or .parquet file")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read {spec} (permission denied)", key=key)


def _check_evaluations(s, file: str, table: str) -> None:
    from tunerkit.eval import evaluators
    from tunerkit.eval.extra import check_settings

    known = evaluators()
    for name in s.evaluate:
        if name not in known:
            raise UserError(f"unknown evaluation '{name}'", file=file, table=table, key="evaluate",
                            hint=did_you_mean(name, known) or f"known: {', '.join(known)}")
    reason = check_settings(s)
    if reason:
        raise UserError(reason, file=file, table=table, key="evaluate",
                        hint="set eval_data_dir, or leave these evaluations out")


def check_gpus(row, file: str, table: str) -> None:
    """A row asking for more GPUs than this machine shows cannot start (a launcher's own processes
    are checked by tunerkit.launch instead)."""
    have = visible_gpus()
    if row.settings.gpus > 1 and not inside_launch() and have < row.settings.gpus:
        raise UserError(f"the row asks for {row.settings.gpus} GPUs but {have} {'is' if have == 1 else 'are'} visible",
                        file=file, table=table, key="gpus",
                        hint="lower gpus in the recipe or profile, or check CUDA_VISIBLE_DEVICES")


def validate_row(row, file: str) -> None:
    table = f"row '{row.base_name}'"
    check_row_settings(row, file, table)
    hook = make_manager([CoreDefaults()], [get_plugin(name)(row.options[name]) for name in row.plugins]).hook
    for reason in hook.validate(row=row):
        if reason:
            raise UserError(reason, file=file, table=table, key="plugins")
    check_gpus(row, file, table)
    check_fits(row, table, file, hook.weight_bits(row=row))
    if hook.validate_model.get_hookimpls():  # build the meta model only for a plugin that looks
        model = model_skeleton(row)
        for reason in hook.validate_model(row=row, model=model) if model is not None else ():
            if reason:
                raise UserError(reason, file=file, table=table, key="plugins")
