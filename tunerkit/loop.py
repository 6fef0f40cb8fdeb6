"""One row, end to end: a single linear training loop that only calls hooks.

Read top to bottom: model side, data side, optimizer, the loop, evaluation. The loop
knows no tuner; everything a tuner changes happens inside a hook.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from tunerkit.checkpointing import enable_gradient_checkpointing, leave_layers_unchecked
from tunerkit.context import RunContext
from tunerkit.core import CoreDefaults
from tunerkit.distributed import count_label_tokens, data_parallel_size, global_throughput
from tunerkit.errors import RowFailed
from tunerkit.allocator import cuda_allocator
from tunerkit.guards import check_losses, nothing_left
from tunerkit.metrics import (StepClock, Throughput, Timer, attention_geometry, count_parameters, held_memory_gib,
                              new_input_shapes, peak_memory, reset_peak_memory)
from tunerkit.models.loading import resolve_model
from tunerkit.plugins import get_plugin, make_manager
from tunerkit.precision import autocast_dtype, forward_autocast, resolve_dtype, tf32_matmuls
from tunerkit.series import StepSeries
from tunerkit.steps import planned_steps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_context(row, out_dir: Path, extra_plugins=()) -> RunContext:
    """The row's plugin manager and context; ``extra_plugins`` (objects with hookimpls) join the row's."""
    instances = [get_plugin(name)(row.options[name]) for name in row.plugins]
    pm = make_manager([CoreDefaults(), StepSeries()], instances, extra_plugins)
    return RunContext(row=row, hook=pm.hook, out_dir=out_dir)


def run_row(row, out_dir: Path, progress=None, extra_plugins=()) -> dict:
    """Train and evaluate one row; return its metrics. Raises on failure (the runner records it).

    Whatever the row changed for the whole process (through ``ctx.patch`` and friends) is
    undone after it, also when it failed."""
    ctx = build_context(row, out_dir, extra_plugins)
    try:
        allocated: dict = {}
        with cuda_allocator(row.settings.allocator, allocated), sdpa_kernels(row.settings.sdpa_kernels), \
                tf32_matmuls(row.settings.tf32):
            metrics = _run(ctx, progress)
        metrics.update(allocated)
        metrics.update(row_modes(ctx))
    except BaseException:
        _close(ctx, failed=True)
        raise
    _close(ctx, failed=False)
    return metrics


def row_modes(ctx: RunContext) -> dict:
    """The row's numeric and kernel modes, for its record."""
    s, modes = ctx.settings, {}
    if s.sdpa_kernels:
        modes["sdpa_kernels"] = ",".join(s.sdpa_kernels)
    if s.tf32:
        modes["tf32"] = True
    if s.autocast:
        modes["autocast"] = str(autocast_dtype(ctx)).removeprefix("torch.")
    return modes


def _close(ctx: RunContext, failed: bool) -> None:
    """Teardown hooks and the undo list, then free the row's memory. An undo that failed
    fails a row that succeeded (later rows would run in a changed process); a row that
    already failed keeps its own reason and logs them."""
    errors = ctx.close()
    _release(ctx)
    if not errors:
        return
    if failed:
        ctx.log("could not undo: " + "; ".join(errors))
    else:
        raise RowFailed("the row finished, but undoing its changes failed: " + "; ".join(errors))


def sdpa_kernels(names: list[str] | None):
    """The row's choice of SDPA kernels for everything it runs (training, recompute, evaluation):
    torch picks among its fused kernels by itself otherwise (cuDNN attention first on Hopper)."""
    if not names:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [{"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[n] for n in names]
    if "set_priority" in inspect.signature(sdpa_kernel).parameters:
        return sdpa_kernel(backends, set_priority=True)
    return sdpa_kernel(backends)


def _release(ctx: RunContext) -> None:
    ctx.model = ctx.optimizer = ctx.scheduler = None
    ctx.datasets.clear()
    ctx.state.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run(ctx: RunContext, progress) -> dict:
    seed_everything(ctx.settings.seed)
    load_model_side(ctx)
    if not ctx.settings.train:
        return _evaluate_only(ctx)
    prepare_for_training(ctx)
    load_data_side(ctx, ("train", "eval"))
    loader = build_optimizer(ctx)
    train(ctx, loader, progress)
    return _finish(ctx)


def load_model_side(ctx: RunContext) -> None:
    """Process group, device, dtype, model and tokenizer, and the model-level changes."""
    s, hook = ctx.settings, ctx.hook
    ctx.accelerator = hook.setup_distributed(ctx=ctx)
    ctx.device = ctx.accelerator.device
    ctx.dtype = resolve_dtype(s.dtype, ctx.device)
    ctx.model_source = resolve_model(s.model)
    reset_peak_memory(ctx.device)
    held = held_memory_gib(ctx.device)
    if held is not None:
        # Memory an earlier row of this process still holds is in this row's peak too: recorded,
        # so a report can tell (isolation = "process" leaves nothing held).
        ctx.metrics["held_before_gib"] = held
    ctx.model = hook.load_model(ctx=ctx)
    ctx.tokenizer = hook.load_tokenizer(ctx=ctx)
    hook.modify_model(ctx=ctx)
    ctx.metrics["random_weights"] = ctx.model_source.random_weights


def prepare_for_training(ctx: RunContext) -> None:
    """The tuner, the parameter counts, and the model switched to training."""
    s = ctx.settings
    ctx.hook.apply_tuner(ctx=ctx)
    params = count_parameters(ctx.model)
    if params["trainable_params"] == 0:
        raise RowFailed("nothing to train: no plugin of this row made any parameter trainable")
    ctx.metrics.update(params)
    if getattr(ctx.model, "config", None) is not None:
        # Training never reads a KV cache, but with use_cache on (the default without
        # checkpointing) transformers builds one every forward, and compiled layers
        # recompiled on it (see docs/performance.md).
        ctx.model.config.use_cache = False
    if s.gradient_checkpointing:
        enable_gradient_checkpointing(ctx.model)
        if s.uncheckpointed_layers:
            ctx.metrics["uncheckpointed_layer_indices"] = leave_layers_unchecked(ctx.model, s.uncheckpointed_layers)
    ctx.model.train()


def load_data_side(ctx: RunContext, splits: tuple[str, ...]) -> None:
    """Records, tokens, dataset transforms and a collator for each split the row has."""
    hook = ctx.hook
    for split in splits:
        records = hook.load_dataset(ctx=ctx, split=split)
        if records is None:
            continue
        ctx.datasets[split] = hook.tokenize_dataset(ctx=ctx, split=split, records=records)
        hook.transform_dataset(ctx=ctx, split=split)
        ctx.collators[split] = hook.make_collator(ctx=ctx, split=split)


def build_optimizer(ctx: RunContext) -> DataLoader:
    """The train loader, the planned steps, optimizer and scheduler, all prepared by the
    accelerator; returns the loader to train on."""
    s, hook = ctx.settings, ctx.hook
    train_set = ctx.datasets.get("train")
    if train_set is None or (not isinstance(train_set, IterableDataset) and len(train_set) == 0):
        raise RowFailed(nothing_left(ctx))
    loader = make_loader(ctx, train_set)
    ctx.total_steps = plan_steps(ctx, loader)
    ctx.optimizer = hook.make_optimizer(ctx=ctx, groups=hook.param_groups(ctx=ctx))
    ctx.scheduler = hook.make_scheduler(ctx=ctx)
    ctx.model, ctx.optimizer, loader = ctx.accelerator.prepare(ctx.model, ctx.optimizer, loader)
    return loader


class StepLosses:
    """Each step's loss, and the progress display fed with it.

    With ``overlap_steps`` a step's loss stays a device tensor until the next step runs:
    reading it at once would wait for the GPU, while the previous step's is done or nearly
    so, and reading that one keeps the host one step ahead, no more."""

    def __init__(self, progress, overlap: bool):
        self.progress, self.overlap, self.values = progress, overlap, []

    def add(self, step: int, loss: torch.Tensor) -> None:
        if not self.overlap:
            self.values.append(float(loss))
            self._show(step, self.values[-1])
            return
        self.values.append(loss)
        if len(self.values) > 1:
            self.values[-2] = float(self.values[-2])
            self._show(step - 1, self.values[-2])

    def finish(self, step: int) -> list[float]:
        losses = [float(v) for v in self.values]
        if self.overlap and losses:
            self._show(step, losses[-1])
        return losses

    def _show(self, step: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(step, loss)


def train(ctx: RunContext, loader: DataLoader, progress) -> None:
    """The optimizer steps, periodic evaluation and the token budget; then the step metrics."""
    s = ctx.settings
    ctx.hook.on_train_begin(ctx=ctx)
    clock = StepClock(ctx.device, overlap=s.overlap_steps)
    losses = StepLosses(progress, s.overlap_steps)
    step_counts: list[tuple[int, int, int, int]] = []
    trained_tokens = 0
    eval_curve: list[tuple[int, float]] = []
    if progress is not None:
        progress.start(ctx.total_steps)
    config = getattr(ctx.model, "config", None)
    geometry = attention_geometry(config) if config is not None else ()
    for window in accumulation_windows(loader, s.gradient_accumulation_steps, ctx.total_steps):
        shapes = new_input_shapes(window, geometry)
        clock.step_begins()
        step_loss, samples, tokens, label_tokens = train_step(ctx, window)
        clock.step_ends()
        ctx.global_step += 1
        step_counts.append((samples, tokens, label_tokens, shapes))
        trained_tokens += tokens
        losses.add(ctx.global_step, step_loss)
        if s.eval_steps and ctx.global_step % s.eval_steps == 0 and "eval" in ctx.datasets:
            from tunerkit.eval.loss import eval_loss

            eval_curve.append((ctx.global_step, eval_loss(ctx).get("eval_loss")))
            clock.pause()
        if s.token_budget and trained_tokens * data_parallel_size(ctx) >= s.token_budget:
            break
    record_training(ctx, losses.finish(ctx.global_step), zip(clock.seconds(), step_counts), eval_curve)


def record_training(ctx: RunContext, losses: list[float], timed_steps, eval_curve) -> None:
    """Throughput, the loss curves and peak memory of the finished training."""
    check_losses(losses)  # a NaN/inf loss fails the row, naming its step
    throughput = Throughput(warmup_steps=min(ctx.settings.timing_warmup_steps, max(ctx.total_steps - 1, 0)))
    for seconds, counts in timed_steps:
        throughput.add_step(seconds, *counts)
    ctx.hook.on_train_end(ctx=ctx)
    ctx.metrics.update(throughput.summary())
    ctx.metrics.update(global_throughput(ctx, throughput))
    ctx.metrics["train_loss_curve"] = losses
    ctx.metrics["train_loss"] = float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else None
    if eval_curve:
        ctx.metrics["eval_loss_curve"] = eval_curve
    ctx.metrics["memory"] = gather_memory(ctx)
    ctx.metrics["attention"] = ctx.attention_used
    ctx.metrics["world_size"] = ctx.world_size
    per_gpu = ctx.metrics.get("tokens_per_s_per_gpu")
    if ctx.device.type == "cuda" and per_gpu:
        from tunerkit.estimate import utilisation

        try:
            ctx.metrics.update(utilisation(ctx.row, per_gpu, torch.cuda.get_device_name(ctx.device)))
        except Exception as err:  # noqa: BLE001 - a shape the estimate cannot read costs the MFU cell only
            ctx.log(f"no MFU for this row: {type(err).__name__}: {err}")


def _finish(ctx: RunContext) -> dict:
    """Evaluation, plugin metrics and artifacts: the end of every row."""
    hook = ctx.hook
    with Timer(ctx.device) as t:
        for result in hook.evaluate(ctx=ctx):
            ctx.metrics.update(result or {})
    ctx.metrics["eval_seconds"] = t.seconds
    for result in hook.collect_metrics(ctx=ctx):
        ctx.metrics.update(result or {})
    if ctx.settings.save:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        hook.save_artifacts(ctx=ctx, out_dir=ctx.out_dir)
    return ctx.metrics


def _evaluate_only(ctx: RunContext) -> dict:
    """A reference row: the loaded model, evaluated without training."""
    ctx.model.eval()
    ctx.metrics.update(count_parameters(ctx.model))
    ctx.metrics.update({"trainable_params": 0, "trainable_params_m": 0.0, "trainable_pct": 0.0})
    load_data_side(ctx, ("eval",))
    ctx.metrics["attention"] = ctx.attention_used
    return _finish(ctx)


def make_loader(ctx: RunContext, dataset) -> DataLoader:
    s = ctx.settings
    collate = counting_label_tokens(ctx.collators["train"])
    # overlap_steps: batches in pinned memory copy to the GPU without waiting for it (a copy
    # from pageable memory synchronises the stream first); accelerate's loader does the copy.
    pin = s.overlap_steps and ctx.device.type == "cuda"
    if pin and ctx.accelerator is not None:
        ctx.accelerator.dataloader_config.non_blocking = True
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=s.batch_size, collate_fn=collate, pin_memory=pin)
    generator = torch.Generator().manual_seed(s.seed)  # the same order for every row
    return DataLoader(dataset, batch_size=s.batch_size, shuffle=True, generator=generator,
                      collate_fn=collate, drop_last=False, pin_memory=pin)


def counting_label_tokens(collate):
    """The row's collator, adding each batch's scored label tokens (``num_label_tokens``)
    while the batch is still on the host."""

    def collate_and_count(examples):
        batch = collate(examples)
        if isinstance(batch, dict) and "labels" in batch and "num_label_tokens" not in batch:
            batch["num_label_tokens"] = count_label_tokens(batch)
        return batch

    return collate_and_count


def plan_steps(ctx: RunContext, loader: DataLoader) -> int:
    s = ctx.settings
    try:
        batches = len(loader)
    except TypeError:  # iterable dataset: length unknown
        batches = ctx.metrics.get("train_samples", 0) // s.batch_size or 1
    mean_tokens = 0.0
    if s.token_budget and not s.max_steps:
        ds = ctx.datasets["train"]
        mean_tokens = ctx.metrics.get("train_mean_tokens") or (
            np.mean([len(r["input_ids"]) for r in ds]) if not isinstance(ds, IterableDataset) else s.max_length)
    return planned_steps(s, batches, mean_tokens, data_parallel_size(ctx))


def accumulation_windows(loader, size: int, total_steps: int):
    """Yield lists of up to ``size`` micro-batches, cycling epochs until ``total_steps`` windows."""
    produced = 0
    while produced < total_steps:
        window, seen_any = [], False
        for batch in loader:
            seen_any = True
            window.append(batch)
            if len(window) == size:
                yield window
                produced += 1
                window = []
                if produced >= total_steps:
                    return
        if window:
            yield window
            produced += 1
        if not seen_any:
            return


def train_step(ctx: RunContext, window: list[dict]) -> tuple[torch.Tensor, int, int, int]:
    """One optimizer step over ``window``; returns (loss, samples, tokens, label tokens) of this
    process. The loss stays a tensor on the device: reading it waits for the step's work."""
    hook, model, acc = ctx.hook, ctx.model, ctx.accelerator
    samples = sum(b.pop("num_samples", b["input_ids"].shape[0]) for b in window)
    tokens = sum(b.pop("num_tokens", b["input_ids"].numel()) for b in window)
    local_labels = sum(label_tokens_of(b) for b in window)
    global_labels = local_labels
    if ctx.world_size > 1:
        global_labels = int(acc.reduce(torch.tensor(local_labels, device=ctx.device), reduction="sum"))
    ctx.window_label_tokens = max(global_labels, 1)
    ctx.window_size = len(window)
    hook.on_step_begin(ctx=ctx)
    loss_sum = torch.zeros((), device=ctx.device)
    for i, batch in enumerate(window):
        ctx.micro_step = i
        batch = {k: (v.to(ctx.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        # DeepSpeed steps its optimizer inside backward() whenever sync_gradients is set.
        acc.sync_gradients = ctx.is_last_micro_step
        sync = contextlib.nullcontext() if ctx.is_last_micro_step else acc.no_sync(model)
        with sync:
            with forward_autocast(ctx):
                loss = hook.compute_loss(ctx=ctx, model=model, batch=batch)
            acc.backward(loss)
        loss_sum += loss.detach().float()
    hook.on_before_optimizer_step(ctx=ctx)
    if ctx.settings.max_grad_norm > 0 and acc.sync_gradients:
        acc.clip_grad_norm_(model.parameters(), ctx.settings.max_grad_norm)
    ctx.optimizer.step()
    if ctx.scheduler is not None:
        ctx.scheduler.step()
    hook.on_step_end(ctx=ctx)
    ctx.optimizer.zero_grad(set_to_none=True)
    step_loss = loss_sum / ctx.world_size
    if ctx.world_size > 1:
        step_loss = acc.reduce(step_loss, reduction="sum")
    return step_loss, samples, tokens, local_labels


def label_tokens_of(batch: dict) -> int:
    """The batch's scored label tokens: counted on the host when it was collated (reading a
    device tensor would wait for the GPU), or here for batches an engine reshaped after
    collation (sequence-parallel shards carry ``shift_labels``, their own share)."""
    counted = batch.pop("num_label_tokens", None)
    if counted is None or "shift_labels" in batch:
        return count_label_tokens(batch)
    return counted


def gather_memory(ctx: RunContext) -> list[dict]:
    """Peak memory of every process's device: one entry per GPU, never summed."""
    mine = peak_memory(ctx.device)
    if ctx.world_size == 1:
        return [mine]
    from accelerate.utils import gather_object

    return gather_object([mine])
