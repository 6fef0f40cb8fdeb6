"""Shared test helpers: tiny rows and contexts, all on CPU."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# One conversion of the bundled model per machine, shared by every test session.
os.environ.setdefault("TUNERKIT_CACHE", str(Path.home() / ".cache" / "tunerkit"))
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = dict(model="tiny-llama", dataset="builtin:arithmetic", max_train_samples=16, val_size=4, batch_size=4,
            gradient_accumulation_steps=1, max_length=128, learning_rate=1e-3, evaluate=["eval_loss"],
            max_steps=2, gradient_checkpointing=False)


@pytest.fixture
def tiny_row():
    """``tiny_row("lora", lora={"rank": 4}, max_steps=3)`` -> a resolved Row on the tiny preset."""
    from tunerkit.recipe import make_row

    def build(*plugins, name="test", **overrides):
        table = {**TINY, **overrides}
        return make_row(name, list(plugins), **table)

    return build


@pytest.fixture
def run_tiny(tmp_path):
    """Train a tiny row end to end through the real loop; returns its metrics."""
    from tunerkit.loop import run_row

    def run(row):
        return run_row(row, tmp_path / row.name)

    return run


@pytest.fixture
def tiny_context(tmp_path):
    """A RunContext with the model loaded, modified and tuned (no data), for unit tests of plugins."""
    from tunerkit.precision import resolve_dtype
    from tunerkit.loop import build_context, seed_everything
    from tunerkit.models.loading import resolve_model

    def build(row):
        ctx = build_context(row, tmp_path)
        seed_everything(row.settings.seed)
        ctx.device = torch.device("cpu")
        ctx.dtype = resolve_dtype(row.settings.dtype, ctx.device)
        ctx.model_source = resolve_model(row.settings.model)
        ctx.model = ctx.hook.load_model(ctx=ctx)
        ctx.tokenizer = ctx.hook.load_tokenizer(ctx=ctx)
        ctx.hook.modify_model(ctx=ctx)
        ctx.hook.apply_tuner(ctx=ctx)
        return ctx

    return build


@functools.cache
def _bench_script(name: str):
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while a class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script("fast_path")``: a script of bench/ imported as a module, so the tested code is the script's."""
    return _bench_script
