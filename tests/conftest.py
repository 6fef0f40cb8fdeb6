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

# tiny_row, run_tiny, tiny_context and recipe_error come from tunerkit.testing (a pytest11 plugin).


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
