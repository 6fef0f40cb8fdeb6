"""track: a CPU row writes TensorBoard event files and an MLflow run that their own readers open."""

import os
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def test_tracked_row_reaches_tensorboard_and_mlflow(tiny_row, run_tiny, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri_before = mlflow.get_tracking_uri()
    track_dir = tmp_path / "track"
    row = tiny_row("lora", "track", track={"to": ["tensorboard", "mlflow"], "dir": str(track_dir),
                                           "project": "demo"}, max_steps=3)
    metrics = run_tiny(row)
    assert mlflow.get_tracking_uri() == uri_before  # teardown put mlflow's store back
    # ... and left nothing set: a pinned default would send the next row to a sqlite store
    from mlflow.tracking import is_tracking_uri_set

    assert not is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ

    events = list((track_dir / "demo").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event files written"
    scalars = {}
    for folder in {e.parent for e in events}:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.value for e in acc.Scalars(tag)]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/peak_rss_gib"):
        assert len(scalars[tag]) == 3, tag  # one value per optimizer step
    assert scalars["train/loss"] == pytest.approx(metrics["train_loss_curve"], rel=1e-5)
    assert scalars["final/eval_loss"] == pytest.approx([metrics["eval_loss"]])

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, as the row wrote it
    client = MlflowClient(tracking_uri=(track_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("demo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == row.name
    assert run.data.params["settings.max_steps"] == "3" and run.data.params["plugins"] == "['lora', 'track']"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(metrics["train_loss_curve"], rel=1e-5)
    assert run.data.metrics["final/eval_loss"] == pytest.approx(metrics["eval_loss"])

    grad = [v for _, v in metrics["series"]["grad_norm"]]
    assert len(grad) == 3 and all(float(g) > 0 for g in grad)
    assert [s for s, _ in metrics["series"]["lr"]] == [1, 2, 3]


def test_missing_tracker_package_is_a_one_line_refusal(tiny_row, monkeypatch):
    import importlib.util

    from tunerkit.testing import validation_error

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    reason = validation_error(tiny_row("lora", "track", track={"to": ["wandb"]}))
    assert reason is not None and "pip install wandb" in reason and "\n" not in reason


def test_wandb_offline_run_is_written(tiny_row, run_tiny, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    row = tiny_row("lora", "track", track={"to": ["wandb"], "dir": str(tmp_path / "track"), "project": "demo"},
                   max_steps=2, evaluate=[])
    run_tiny(row)
    (run_dir,) = (tmp_path / "track" / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")  # what `wandb sync` uploads later
    assert log.stat().st_size > 0
