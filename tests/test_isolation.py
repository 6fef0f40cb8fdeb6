"""Rows in a process of their own: when, what comes back, and failures that stay cells."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tunerkit.errors import RowFailed
from tunerkit.isolation import ChildFailed, exit_status, run_in_process, wanted


def recipe_of(rows):
    from tunerkit.recipe import Recipe

    return Recipe(path=Path("r.toml"), name="r", title="", description="", profile=None, profiles=[], rows=rows)


def test_auto_isolates_on_a_single_cuda_process_only(monkeypatch):
    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert wanted("auto") and wanted("process") and not wanted("none")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not wanted("auto") and wanted("process")
    # planning a row for a GPU from a machine without one (tunerkit estimate --device H100)
    assert wanted("auto", cuda=True) and not wanted("none", cuda=True)
    # a torchrun rank trains in the group its peers expect, whatever the setting
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not wanted("auto") and not wanted("process")


def test_isolated_rows_train_elsewhere_and_a_failed_one_is_a_cell(tmp_path, tiny_row):
    from tunerkit.runner import run_recipe
    from tunerkit.store import Store

    # a data file gone between the recipe's check and the row's start fails the row in its process
    data = tmp_path / "gone.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]}\n')
    bad = tiny_row("lora", name="bad", max_steps=1, evaluate=[], dataset=str(data), isolation="process")
    data.unlink()
    good = tiny_row("lora", name="good", max_steps=2, evaluate=[], isolation="process")
    store, lines = Store(tmp_path / "t.db"), []
    outcomes = run_recipe(recipe_of([bad, good]), store, runs_dir=tmp_path / "runs", progress=False,
                          echo=lines.append)
    assert [o.status for o in outcomes] == ["failed", "ok"]
    assert "gone.jsonl" in outcomes[0].reason and any("failed: " in line and "gone.jsonl" in line for line in lines)
    ok = outcomes[1].metrics
    assert ok["isolation"] == "process" and "rows_before_in_process" not in ok
    assert ok["optimizer_steps"] == 2 and ok["train_tokens"] > 0
    records = {r["row"]: r for r in store.latest()}
    assert records["bad"]["status"] == "failed" and records["good"]["status"] == "ok"
    assert records["good"]["environment"]["versions"]["torch"]  # the child's environment, recorded


def _dies(row, out_dir, progress, send):  # a child killed before it could answer
    os.kill(os.getpid(), signal.SIGKILL)


def _exits(row, out_dir, progress, send):
    os._exit(3)


def test_a_child_that_dies_without_an_answer_fails_the_row_with_its_exit(tmp_path, tiny_row):
    row = tiny_row("lora", max_steps=1, evaluate=[])
    with pytest.raises(RowFailed, match="killed by SIGKILL; the host's out-of-memory killer sends it"):
        run_in_process(row, tmp_path, False, target=_dies)
    with pytest.raises(RowFailed, match="ended without a result \\(exit code 3\\)"):
        run_in_process(row, tmp_path, False, target=_exits)


def test_exit_status_names_signals_and_codes():
    assert exit_status(1) == "exit code 1"
    assert exit_status(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert exit_status(None) == "still running"


def test_a_missing_package_in_the_child_is_a_skip(tmp_path, tiny_row, monkeypatch):
    from tunerkit.runner import classify_failure
    from tunerkit.errors import MissingPackage

    assert classify_failure(MissingPackage("galore_torch"))[0] == "skipped"
    status, reason, needs, show = classify_failure(ValueError("boom"))
    assert (status, needs, show) == ("failed", None, True) and reason == "ValueError: boom"
    assert ChildFailed("skipped", "skipped: needs x", "needs x", {}).status == "skipped"
