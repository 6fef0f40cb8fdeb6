"""A row's device and numeric modes: its dtype, TF32 matmuls and autocast of the forward.

TF32 and autocast are process-wide torch states or contexts, set for one row and left as
they were after it.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def row_device() -> torch.device:
    """Where this process's rows run: the GPU when one is visible, as accelerate chooses."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for the ``dtype`` setting: ``auto`` is bf16 on a GPU, fp32 on a CPU."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[choice]


def row_dtype(settings) -> torch.dtype:
    """The dtype a row's weights will load in, known before anything loads."""
    return resolve_dtype(settings.dtype, row_device())


#: What an autocast row computes in when its weights are fp32 (HF's bf16 mixed precision).
AUTOCAST_FALLBACK = torch.bfloat16


@contextlib.contextmanager
def tf32_matmuls(on: bool):
    """fp32 matmuls on TF32 tensor cores for the row, and torch's setting back after it.
    PEFT keeps adapter weights in fp32 beside bf16 base weights, so LoRA's small matmuls
    otherwise run as plain fp32 FMA kernels (docs/performance.md has their share of a step)."""
    if not on:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def autocast_dtype(ctx) -> torch.dtype | None:
    """The dtype an ``autocast`` row's forward computes in: the weights' own 16-bit dtype, or
    bf16 where the weights are fp32 (classic mixed precision); None when the row does not autocast."""
    if not ctx.settings.autocast:
        return None
    return ctx.dtype if ctx.dtype in (torch.bfloat16, torch.float16) else AUTOCAST_FALLBACK


def forward_autocast(ctx):
    """The context a training or evaluation forward runs in.

    PEFT keeps adapter weights in fp32 beside 16-bit base weights (``autocast_adapter_dtype``)
    and casts each adapter's input up to fp32: without autocast the adapter matmuls run in
    fp32 and autograd keeps fp32 copies of their inputs. Under autocast the fp32 weights stay
    the optimizer's masters while the matmuls, and what they save for the backward, are
    16-bit, as under HF Trainer's ``bf16=True``. The backward needs no context of its own:
    autograd replays each op in the dtype its forward ran in.
    """
    dtype = autocast_dtype(ctx)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=dtype)
