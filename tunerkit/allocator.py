"""The CUDA caching allocator's mode for one row (``allocator`` setting).

``expandable``: segments that grow in place (``expandable_segments:True``, what
``PYTORCH_CUDA_ALLOC_CONF`` sets before CUDA starts). Rows of one process share one
allocator, so the mode is switched at the row's start and back at its end, after the cache
is emptied: the setting applies to segments created after it, and an empty cache leaves
none from the previous row. What the row's memory actually lived in is read back from the
allocator's snapshot, so a mode that did not take effect shows in the metrics.
"""

from __future__ import annotations

import contextlib
import os

import torch

EXPANDABLE = "expandable_segments:True"


#: the variables the caching allocator reads its configuration from (torch's old and new names)
CONF_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def record_state(metrics: dict) -> None:
    """What the row's memory lived in, whatever asked for it: a library can set the allocator's
    variable on import (GPT-QModel 7.6 sets ``PYTORCH_ALLOC_CONF=expandable_segments:True,...``),
    which changes reserved memory without the row asking."""
    metrics["expandable_segments"] = expandable_in_use()
    conf = {v: os.environ[v] for v in CONF_VARIABLES if os.environ.get(v)}
    if conf:
        metrics["alloc_conf"] = conf


@contextlib.contextmanager
def cuda_allocator(mode: str, metrics: dict):
    """Run the row under ``mode`` ("default" or "expandable"); record what the segments were."""
    if not torch.cuda.is_available():
        yield
        return
    if mode == "default":
        yield
        record_state(metrics)
        return
    torch.cuda.empty_cache()
    torch.cuda.memory._set_allocator_settings(EXPANDABLE)
    try:
        yield
        metrics["allocator"] = mode
        record_state(metrics)
    finally:
        torch.cuda.empty_cache()
        torch.cuda.memory._set_allocator_settings("expandable_segments:False")


def expandable_in_use() -> bool | None:
    """Whether the allocator's live segments are expandable ones (None: no segment to tell)."""
    segments = torch.cuda.memory._snapshot().get("segments", [])
    flags = {bool(s.get("is_expandable")) for s in segments}
    return flags.pop() if len(flags) == 1 else (None if not flags else True)
