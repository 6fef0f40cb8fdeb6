"""Checks that need more than types, run for every row before anything trains."""

from __future__ import annotations

import os

import torch

from tunerkit.data.sources import check_source
from tunerkit.errors import UserError
from tunerkit.models.loading import resolve_model
from tunerkit.options import did_you_mean


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
        raise UserError(f"model '{row.settings.model}' needs {need / 2**30:.1f} GiB for its {bits:g}-bit weights alone;"
                        f" {where} has {have / 2**30:.1f} GiB", file=file, table=table, key="model",
                        hint="pick a smaller preset, a profile for this machine (--profile), or more GPUs")


def validate_row(row, file: str) -> None:
    from tunerkit.eval import evaluators
    from tunerkit.loop import build_context

    table = f"row '{row.base_name}'"
    s = row.settings
    try:
        resolve_model(s.model)
        check_source(s.dataset, "dataset")
        if s.eval_dataset:
            check_source(s.eval_dataset, "eval_dataset")
        if s.mix:
            check_source(s.mix["dataset"], "mix")
    except UserError as err:
        raise err.located(file=file, table=table) from None
    known = evaluators()
    for name in s.evaluate:
        if name not in known:
            raise UserError(f"unknown evaluation '{name}'", file=file, table=table, key="evaluate",
                            hint=did_you_mean(name, known) or f"known: {', '.join(known)}")
    ctx = build_context(row, out_dir=None)
    check_fits(row, table, file, ctx.hook.weight_bits(row=row))
    for reason in ctx.hook.validate(row=row):
        if reason:
            raise UserError(reason, file=file, table=table, key="plugins")
    if ctx.hook.validate_model.get_hookimpls():  # build the meta model only for a plugin that looks
        from tunerkit.skeleton import model_skeleton

        model = model_skeleton(row)
        for reason in ctx.hook.validate_model(row=row, model=model) if model is not None else ():
            if reason:
                raise UserError(reason, file=file, table=table, key="plugins")
