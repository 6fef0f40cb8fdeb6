"""A row's numeric modes: TF32 matmuls and autocast of the forward.

Both are process-wide torch states or contexts, set for one row and left as they were after it.
"""

from __future__ import annotations

import contextlib

import torch

#: What an autocast row computes in when its weights are fp32 (HF's bf16 mixed precision).
AUTOCAST_FALLBACK = torch.bfloat16


@contextlib.contextmanager
def tf32_matmuls(on: bool):
    """fp32 matmuls on TF32 tensor cores for the row, and torch's setting back after it.
    PEFT keeps adapter weights in fp32 beside bf16 base weights, so LoRA's small matmuls
    otherwise run as plain fp32 FMA kernels (on one H200: 384 per packed 16k step, 3.8 % of
    its GPU time)."""
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
