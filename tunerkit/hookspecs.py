"""Every hook tunerkit calls, in the order one row calls them.

A hook marked *first result* stops at the first plugin that returns something other
than ``None``; the core's own implementation is registered ``trylast`` so any plugin
overrides it. The other hooks run for every plugin that implements them and work by
changing ``ctx`` (the :class:`tunerkit.context.RunContext` of the row).

``docs/hooks.md`` documents each hook; ``tests/test_hooks_doc.py`` fails when the two
drift apart.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "tunerkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# Validation: before anything runs
# ---------------------------------------------------------------------------


@hookspec
def validate(row: Any) -> str | None:
    """Return a one-line reason when this row cannot work, else ``None``.

    Runs for every plugin while the recipe is checked, before any row starts, so a bad
    combination (e.g. a per-parameter optimizer under data parallelism) stops the whole
    run with exit code 2 and nothing written. ``row`` is the resolved
    :class:`tunerkit.recipe.Row`.
    """


@hookspec
def validate_model(row: Any, model: Any) -> str | None:
    """Return a one-line reason when this row cannot work on ``model``, else ``None``.

    Runs while the recipe is checked, after ``validate``, with the row's model built on
    PyTorch's meta device (no weights, no memory): module names, layer count and config
    are there, so a target that matches no module fails at ``--check``, not as a failed
    row. Not called when the model's config cannot be read offline.
    """


@hookspec(firstresult=True)
def weight_bits(row: Any) -> float | None:
    """Bits one base-model weight takes in memory, for the does-it-fit check. First result.

    The core answers from the row's dtype (16 or 32); quantized loaders return their width
    (4 for NF4) so a model that fits only quantized is not refused.
    """


@hookspec
def estimate_memory(row: Any, shape: Any, estimate: Any) -> None:
    """Change ``estimate`` (a :class:`tunerkit.estimate.Estimate`) by what this plugin adds or removes.

    Runs for every plugin of the row when ``tunerkit estimate`` (or ``run --check``) predicts
    its peak memory and speed, before anything loads: ``shape`` is the model's
    :class:`tunerkit.estimate.ModelShape`. A tuner sets what trains and what its optimizer
    keeps; a kernel or offload plugin removes the activations it saves; a plugin that changes
    what a layer dispatches adds its host operations (``layer_forward_ops`` and the like).
    """


@hookspec
def memory_savings(row: Any) -> list[dict] | None:
    """Changes this plugin offers that would lower ``row``'s peak memory, for
    ``tunerkit estimate --memory-budget``.

    Asked of every installed plugin, in the row or not (one outside the row is built with its
    default options, and decides from ``row`` whether it has anything to offer). Each change
    is a dict: ``label`` (how the advice reads), and any of ``plugins`` (names to add),
    ``settings`` and ``options`` (``{plugin: {option: value}}``), and ``order`` (lower is
    tried first; default 50, by how much speed the change costs). The estimate turns on
    gradient checkpointing, then adds the changes one by one, each on top of those before it,
    then shortens the rows, and prints the first that fits.
    """


# ---------------------------------------------------------------------------
# Model side
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def setup_distributed(ctx: Any) -> Any:
    """Return the ``accelerate.Accelerator`` (or compatible object) for this row. First result.

    The core builds a plain Accelerator (DDP under ``accelerate launch``/``torchrun``);
    plugins return one configured for DeepSpeed or sequence parallelism.
    """


@hookspec(firstresult=True)
def load_model(ctx: Any) -> Any:
    """Return the base ``PreTrainedModel`` for ``ctx.row.model``. First result.

    The core loads presets, local directories, hub ids and the bundled SmolLM2;
    quantized loaders (bnb, GPTQ, AWQ, AQLM) override it.
    """


@hookspec(firstresult=True)
def load_tokenizer(ctx: Any) -> Any:
    """Return the tokenizer that matches ``ctx.model``. First result."""


@hookspec
def modify_model(ctx: Any) -> None:
    """Change the architecture or forward of ``ctx.model`` before any tuner is applied.

    Block expansion, embedding noise, kernel patches and attention replacements live here.
    Replace ``ctx.model`` if the change creates a new module.
    """


@hookspec
def apply_tuner(ctx: Any) -> None:
    """Decide what trains: wrap or freeze ``ctx.model`` (assign the result to ``ctx.model``).

    After this hook the core counts trainable parameters and refuses a row with none.
    """


# ---------------------------------------------------------------------------
# Data side
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_dataset(ctx: Any, split: str) -> Any:
    """Return the raw records of ``split`` ("train" or "eval"), or ``None`` for no such split. First result.

    Records are dicts in one canonical chat shape (``{"messages": [...]}``) or already
    tokenized (``{"input_ids": [...], "labels": [...]}``).
    """


@hookspec(firstresult=True)
def tokenize_dataset(ctx: Any, split: str, records: Any) -> Any:
    """Return the tokenized dataset of ``split`` built from ``records``. First result.

    The core tokenizes eagerly and applies ``truncation_strategy``; a lazy plugin
    returns an iterable that tokenizes inside the data loader.
    """


@hookspec
def transform_dataset(ctx: Any, split: str) -> None:
    """Rewrite ``ctx.datasets[split]`` in place (packing, filtering, reordering)."""


@hookspec(firstresult=True)
def make_collator(ctx: Any, split: str) -> Any:
    """Return the callable that turns a list of examples into a model batch. First result.

    A batch may carry ``num_samples`` and ``num_tokens`` (original samples and real
    tokens inside it); the loop pops them for accounting before the forward pass.
    """


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def param_groups(ctx: Any) -> Any:
    """Return the optimizer's parameter groups (list of dicts with ``params``). First result."""


@hookspec(firstresult=True)
def make_optimizer(ctx: Any, groups: Any) -> Any:
    """Return the optimizer for ``groups``. First result (the core: AdamW, fused on GPU)."""


@hookspec(firstresult=True)
def make_scheduler(ctx: Any) -> Any:
    """Return the learning-rate scheduler for ``ctx.optimizer``. First result."""


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------


@hookspec
def on_train_begin(ctx: Any) -> None:
    """Called once after the model, data and optimizer are ready, before the first step."""


@hookspec
def on_step_begin(ctx: Any) -> None:
    """Called before the first micro-batch of every optimizer step (``ctx.global_step`` steps done so far)."""


@hookspec(firstresult=True)
def compute_loss(ctx: Any, model: Any, batch: Any) -> Any:
    """Return the loss of one micro-batch, already normalised for the optimizer step. First result.

    ``ctx.window_label_tokens`` is the number of label tokens in the whole accumulation
    window (all micro-batches, all processes): the core returns the token-summed loss
    divided by it, so accumulation and data parallelism weigh every token equally.
    """


@hookspec
def on_before_optimizer_step(ctx: Any) -> None:
    """Called once per optimizer step after the last backward and before gradient clipping
    and ``optimizer.step()``: the gradients of the whole window are there (norms, surgery)."""


@hookspec
def on_step_end(ctx: Any) -> None:
    """Called after ``optimizer.step()`` and before ``zero_grad()`` of every optimizer step."""


@hookspec
def on_train_end(ctx: Any) -> None:
    """Called once after the last step, before evaluation."""


# ---------------------------------------------------------------------------
# Evaluation, metrics, artifacts
# ---------------------------------------------------------------------------


@hookspec
def evaluate(ctx: Any) -> dict | None:
    """Return metrics measured on the trained model (eval loss, speeds, accuracies); merged into the row."""


@hookspec
def collect_metrics(ctx: Any) -> dict | None:
    """Return extra metrics of this plugin (ranks, packing efficiency, ...); merged into the row."""


@hookspec
def save_artifacts(ctx: Any, out_dir: Any) -> None:
    """Write what a user keeps from the row (adapters, checkpoints) under ``out_dir``."""


@hookspec
def teardown(ctx: Any) -> None:
    """Undo anything global the plugin installed (hooks, patches), even when the row failed."""
