"""Run a recipe's rows: resume, record every row (failed ones too), go on after a failure."""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from tunerkit.errors import MissingPackage, RowFailed, UserError
from tunerkit.isolation import ChildFailed, run_in_process, wanted
from tunerkit.metrics import environment
from tunerkit.paths import inside
from tunerkit.progress import EvaluationProgress, RowProgress
from tunerkit.store import Store


@dataclass
class Outcome:
    row: str
    repeat: int
    status: str  # ok | failed | skipped | pending
    reason: str | None = None
    metrics: dict | None = None


def failure_reason(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return "OOM: " + str(err).splitlines()[0][:200]
    if isinstance(err, (RowFailed, UserError)):
        return str(err)
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}".strip()


def missing_package(err: BaseException) -> str | None:
    """"needs X (pip install X)" when the row stopped on an optional package that is not installed."""
    if isinstance(err, MissingPackage):
        return str(err)
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        return f"needs {top} (pip install {top.replace('_', '-')})"
    return None


def classify_failure(err: BaseException) -> tuple[str, str, str | None, bool]:
    """How the store records a row that raised ``err``: (status, reason, missing package or
    None, whether a traceback helps the reader: not for a reason that already says it all)."""
    needs = missing_package(err)
    if needs is not None:
        return "skipped", f"skipped: {needs}", needs, False
    expected = isinstance(err, (RowFailed, UserError, torch.OutOfMemoryError))
    return "failed", failure_reason(err), None, not expected


def load_average() -> float | None:
    """The 1-minute load average: above the core count, other work shared the CPU with the row."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def run_recipe(recipe, store: Store, *, resume: bool = False, runs_dir: Path = Path("runs"),
               progress: bool = True, echo=print) -> list[Outcome]:
    outcomes: list[Outcome] = []
    is_main = _is_main_process()
    # Claims need every process of a row to agree on what it trains: single-process runs only.
    claims = resume and int(os.environ.get("WORLD_SIZE", "1")) == 1
    total = sum(r.settings.repeats for r in recipe.rows)
    index = 0
    trained_here = 0  # rows this process trained before the current one (the first pays one-off costs)
    for row in recipe.rows:
        for repeat in range(row.settings.repeats):
            index += 1
            where = f"[{index}/{total}] {row.name}"
            held = store.claim(recipe=recipe.name, row=row, repeat=repeat) if claims else None
            if held is None and resume and not claims and store.done(recipe=recipe.name, row=row, repeat=repeat):
                held = "done"
            if held is not None:
                if is_main:
                    echo(f"{where}: already in {store.path}, skipped (--resume)" if held == "done"
                         else f"{where}: being trained by {held}, skipped")
                outcomes.append(Outcome(row.name, repeat, "skipped"))
                continue
            try:
                outcome = _one_row(recipe, row, repeat, store, runs_dir, progress, is_main, trained_here, where, echo)
            finally:
                if claims:
                    store.release(recipe=recipe.name, row=row, repeat=repeat)
            trained_here += outcome.status in ("ok", "failed")
            outcomes.append(outcome)
    return outcomes


def _one_row(recipe, row, repeat, store, runs_dir, progress, is_main, trained_here, where, echo) -> Outcome:
    from tunerkit.loop import run_row

    if row.pending is not None:
        if is_main:
            echo(f"{where}: not implemented ({row.pending})")
            store.record(recipe=recipe.name, row=row, repeat=repeat, status="pending",
                         reason=f"not implemented: {row.pending}", metrics={}, environment={}, started=time.time())
        return Outcome(row.name, repeat, "pending", row.pending)
    if is_main:
        echo(f"{where}: plugins={'+'.join(row.plugins) or '-'} model={row.settings.model}")
    bar = RowProgress(row.name, enabled=progress and is_main)
    started, load_start = time.time(), load_average()
    out_dir = inside(runs_dir, recipe.name, row.name)
    env = None
    try:
        if wanted(row.settings.isolation):
            metrics, env = run_in_process(row, out_dir, progress and is_main)
            metrics["isolation"] = "process"
        else:
            metrics = run_row(row, out_dir, progress=bar, extra_plugins=[EvaluationProgress(bar)])
            metrics["rows_before_in_process"] = trained_here
        status, reason = "ok", None
    except ChildFailed as err:  # the child printed what it had to say
        metrics, status, reason, env = {}, err.status, err.reason, err.environment
        if is_main:
            echo(f"    {reason if err.needs else 'failed: ' + reason}")
    except Exception as err:  # one row's failure is a cell, not a crash
        status, reason, needs, show_traceback = classify_failure(err)
        metrics = {}
        if is_main:
            echo(f"    {reason if needs else 'failed: ' + reason}")
            if show_traceback:
                traceback.print_exc()
    finally:
        bar.close()
    if status == "ok":
        metrics["wall_seconds"] = time.time() - started  # load + train + evaluate
    if env is None:
        env = environment(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    env["load_average"] = {"start": load_start, "end": load_average(), "cpu_count": os.cpu_count()}
    if is_main:
        store.record(recipe=recipe.name, row=row, repeat=repeat, status=status, reason=reason,
                     metrics=metrics, environment=env, started=started)
    return Outcome(row.name, repeat, status, reason, metrics)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"
