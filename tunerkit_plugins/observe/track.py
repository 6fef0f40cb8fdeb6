"""track: send every row to TensorBoard, MLflow or Weights & Biases through accelerate's trackers.

Per optimizer step: the loss, learning rate, gradient norm (before clipping), tokens/s and
peak memory; once per row: its config (as hyperparameters) and its final metrics. All
offline: TensorBoard event files and an MLflow file store under ``dir`` (default
``runs/<recipe>/track``; ``mlflow_uri`` or ``$MLFLOW_TRACKING_URI`` for a server or a
database), W&B in offline mode unless ``wandb_mode`` says otherwise.

Tracking reads the step's loss on the host every logged step (a device sync), as the loop
itself does unless ``overlap_steps`` is on; the gradient norm costs one pass over the
gradients (``grad_norm = false`` leaves it out). The norm is also stored as the row's
``grad_norm`` series, tokens/s as ``tokens_per_s``, so ``tunerkit plot`` draws them.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunerkit import MetricSpec, Plugin, hookimpl, option
from tunerkit.metrics import peak_memory
from tunerkit.series import current_lr, record

Tracker = Literal["tensorboard", "mlflow", "wandb"]
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
URI_ENV = "MLFLOW_TRACKING_URI"
INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb"}


@dataclass
class TrackOptions:
    to: list[Tracker] = option(["tensorboard"], "trackers to log to: tensorboard, mlflow, wandb")
    dir: str = option("", "folder for event files, the MLflow store and W&B's offline runs"
                          " (default: runs/<recipe>/track)")
    project: str = option("", "TensorBoard/W&B project and MLflow experiment name (default: the recipe's name)")
    every: int = option(1, "log every N optimizer steps")
    grad_norm: bool = option(True, "log the gradient norm before clipping (one pass over the gradients)")
    mlflow_uri: str = option("", "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a file store in dir/mlruns)")
    wandb_mode: Literal["offline", "online", "disabled"] = option("offline", "W&B mode; offline syncs later")

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if not self.to:
            raise ValueError("to names no tracker: use tensorboard, mlflow or wandb")


def flat(values: dict, prefix: str = "") -> dict:
    """Nested config as ``{"settings.max_length": 512, ...}`` with scalars only (lists as text)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value if value is not None else "none"
        else:
            out[name] = str(value)
    return out


def final_numbers(metrics: dict) -> dict:
    """The row's scalar metrics (curves, series and per-device lists left out)."""
    return {f"final/{k}": v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Track(Plugin):
    name = "track"
    summary = "log steps, config and final metrics to TensorBoard / MLflow / W&B (accelerate's trackers)"
    Options = TrackOptions
    metrics = (
        MetricSpec("grad_norm", "gradient norm (before clipping)", format=".3g", series=True),
        MetricSpec("tokens_per_s", "tokens/s per step", better="higher", format=",.0f", series=True),
    )
    conformance = {"companions": ["lora"], "options": {"to": ["tensorboard"]}}

    def __init__(self, options=None):
        super().__init__(options)
        self.trackers: list = []
        self.loss = self.tokens = None
        self.grad_norm = None
        self.last = 0.0
        self.restore_mlflow_uri = None
        self.mlflow_used = False
        self.restore_env: dict[str, str | None] = {}

    @hookimpl
    def validate(self, row):
        for name in self.options.to:
            if importlib.util.find_spec(PACKAGES[name]) is None:
                return f"track: '{name}' needs the {INSTALL[name]} package (pip install {INSTALL[name]})"
        return None

    def log_dir(self, ctx) -> Path:
        return Path(self.options.dir) if self.options.dir else Path(ctx.out_dir).parent / "track"

    def make_tracker(self, name: str, ctx):
        from accelerate import tracking

        folder = self.log_dir(ctx)
        project = self.options.project or Path(ctx.row.recipe or "tunerkit").stem
        run = ctx.row.name
        if name == "tensorboard":
            return tracking.TensorBoardTracker(run_name=run, logging_dir=folder / project)
        if name == "mlflow":
            import mlflow

            from mlflow.tracking import is_tracking_uri_set

            # mlflow keeps its store location process-wide (a module global mirrored into
            # $MLFLOW_TRACKING_URI): set for this row, put back exactly in teardown. Saving
            # get_tracking_uri() instead would pin mlflow's *default* (a sqlite file in the
            # working directory, which mlflow-skinny cannot open) for every later row.
            self.restore_env[URI_ENV] = os.environ.get(URI_ENV)
            self.restore_mlflow_uri = (mlflow.get_tracking_uri() if is_tracking_uri_set()
                                       and self.restore_env[URI_ENV] is None else None)
            self.mlflow_used = True
            uri = self.options.mlflow_uri or os.environ.get(URI_ENV)
            if not uri:
                # A local file store: no server, no database package. mlflow keeps it in
                # maintenance and asks for this opt-in (read by any later reader too).
                uri = (folder / "mlruns").resolve().as_uri()
                self.restore_env[FILE_STORE] = os.environ.get(FILE_STORE)
                os.environ[FILE_STORE] = "true"
            mlflow.set_tracking_uri(uri)
            return tracking.MLflowTracker(experiment_name=project, run_name=run)
        # accelerate passes its run_name to wandb.init as the project; the row is the W&B run's name
        return tracking.WandBTracker(run_name=project, name=run, dir=str(folder), mode=self.options.wandb_mode)

    @hookimpl
    def on_train_begin(self, ctx):
        self.log_dir(ctx).mkdir(parents=True, exist_ok=True)
        for name in self.options.to:
            tracker = self.make_tracker(name, ctx)
            tracker.start()
            tracker.store_init_configuration(flat(ctx.row.config()))
            self.trackers.append(tracker)
        self.last = time.perf_counter()

    @hookimpl
    def on_step_begin(self, ctx):
        self.loss = self.tokens = None

    @hookimpl(wrapper=True)
    def compute_loss(self, ctx, model, batch):
        loss = yield
        mask = batch.get("attention_mask")
        tokens = mask.sum() if mask is not None else batch["input_ids"].numel()
        self.tokens = tokens if self.tokens is None else self.tokens + tokens
        self.loss = loss.detach() if self.loss is None else self.loss + loss.detach()
        return loss

    @hookimpl
    def on_before_optimizer_step(self, ctx):
        if not self.options.grad_norm:
            return
        import torch

        grads = [p.grad for p in ctx.model.parameters() if p.grad is not None]
        if grads:  # engines that own the gradients (DeepSpeed ZeRO) leave none here
            self.grad_norm = torch.nn.utils.get_total_norm(grads)
            record(ctx, "grad_norm", self.grad_norm.detach())

    @hookimpl
    def on_step_end(self, ctx):
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        step = ctx.global_step + 1
        tokens_per_s = float(self.tokens) / seconds if self.tokens is not None and seconds > 0 else None
        if tokens_per_s is not None:
            record(ctx, "tokens_per_s", tokens_per_s)
        if step % self.options.every or not self.trackers:
            return
        values = {"train/lr": current_lr(ctx), "train/tokens_per_s": tokens_per_s,
                  "train/loss": float(self.loss) if self.loss is not None else None,
                  "train/grad_norm": float(self.grad_norm) if self.grad_norm is not None else None}
        for key, value in peak_memory(ctx.device).items():
            if key != "device":
                values[f"train/{key}"] = value
        values = {k: v for k, v in values.items() if v is not None}
        for tracker in self.trackers:
            tracker.log(values, step=step)

    @hookimpl
    def teardown(self, ctx):
        # Runs after evaluation and every plugin's metrics (and after a failure): the row's final numbers.
        numbers = final_numbers(ctx.metrics)
        for tracker in self.trackers:
            if numbers:
                tracker.log(numbers, step=ctx.global_step)
            tracker.finish()
        self.trackers = []
        if self.mlflow_used:
            import mlflow

            # None clears the global and the variable; the loop below puts a user's variable back
            mlflow.set_tracking_uri(self.restore_mlflow_uri)
            self.restore_mlflow_uri, self.mlflow_used = None, False
        for key, value in self.restore_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.restore_env = {}
