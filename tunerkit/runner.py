"""Run a recipe's rows: resume, record every row (failed ones too), go on after a failure."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from tunerkit.errors import RowFailed, UserError
from tunerkit.metrics import environment
from tunerkit.progress import RowProgress
from tunerkit.store import Store


@dataclass
class Outcome:
    row: str
    repeat: int
    status: str  # ok | failed | skipped
    reason: str | None = None
    metrics: dict | None = None


def failure_reason(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return "OOM: " + str(err).splitlines()[0][:200]
    if isinstance(err, (RowFailed, UserError)):
        return str(err)
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}".strip()


def run_recipe(recipe, store: Store, *, resume: bool = False, runs_dir: Path = Path("runs"),
               progress: bool = True, echo=print) -> list[Outcome]:
    from tunerkit.loop import run_row

    outcomes: list[Outcome] = []
    is_main = _is_main_process()
    total = sum(r.settings.repeats for r in recipe.rows)
    index = 0
    trained_here = 0  # rows this process trained before the current one (the first pays one-off costs)
    for row in recipe.rows:
        for repeat in range(row.settings.repeats):
            index += 1
            if resume and store.done(recipe=recipe.name, row=row, repeat=repeat):
                if is_main:
                    echo(f"[{index}/{total}] {row.name}: already in {store.path}, skipped (--resume)")
                outcomes.append(Outcome(row.name, repeat, "skipped"))
                continue
            if row.pending is not None:
                if is_main:
                    echo(f"[{index}/{total}] {row.name}: not implemented ({row.pending})")
                    store.record(recipe=recipe.name, row=row, repeat=repeat, status="pending",
                                 reason=f"not implemented: {row.pending}", metrics={}, environment={},
                                 started=time.time())
                outcomes.append(Outcome(row.name, repeat, "pending", row.pending))
                continue
            if is_main:
                echo(f"[{index}/{total}] {row.name}: plugins={'+'.join(row.plugins) or '-'} model={row.settings.model}")
            bar = RowProgress(row.name, enabled=progress and is_main)
            started = time.time()
            out_dir = runs_dir / recipe.name / _safe(row.name)
            try:
                metrics = run_row(row, out_dir, progress=bar)
                metrics["rows_before_in_process"] = trained_here
                status, reason = "ok", None
            except KeyboardInterrupt:
                raise
            except Exception as err:  # one row's failure is a cell, not a crash
                metrics, status, reason = {}, "failed", failure_reason(err)
                if is_main:
                    echo(f"    failed: {reason}")
                    if not isinstance(err, (RowFailed, UserError, torch.OutOfMemoryError)):
                        traceback.print_exc()
            finally:
                bar.close()
                trained_here += 1
            if status == "ok":
                metrics["wall_seconds"] = time.time() - started  # load + train + evaluate
            env = environment(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
            if is_main:
                store.record(recipe=recipe.name, row=row, repeat=repeat, status=status, reason=reason,
                             metrics=metrics, environment=env, started=started)
            outcomes.append(Outcome(row.name, repeat, status, reason, metrics))
    return outcomes


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+=" else "_" for c in name)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
