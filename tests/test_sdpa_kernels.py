"""sdpa_kernels: a row can pin torch's SDPA to chosen kernels; bad names are a one-line recipe error."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tunerkit.errors import UserError
from tunerkit.loop import sdpa_kernels


class AttentionOps(TorchDispatchMode):
    """The ops dispatched: a fused kernel is one op; the math path decomposes into batched matmuls and a softmax."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def attention_ops(names):
    q = k = v = torch.randn(1, 2, 16, 8)
    with sdpa_kernels(names), AttentionOps() as seen:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return seen.names


def test_the_chosen_kernel_is_the_one_that_runs():
    math = attention_ops(["math"])
    assert "aten::bmm" in math and not any("flash" in n for n in math)
    flash = attention_ops(["flash"])
    assert any("flash" in n for n in flash) and "aten::bmm" not in flash  # the CPU flash kernel
    assert attention_ops(None) == flash  # torch's own choice on this CPU


def test_a_row_records_its_kernels_and_trains(tiny_row, run_tiny):
    m = run_tiny(tiny_row("lora", attention="sdpa", sdpa_kernels=["math"], evaluate=[], max_steps=1))
    assert m["sdpa_kernels"] == "math" and m["train_loss"] > 0


@pytest.mark.parametrize("bad", [["fast"], []])
def test_unknown_kernels_are_refused(tiny_row, bad):
    with pytest.raises(UserError, match="sdpa_kernels must be a non-empty list of flash, efficient, cudnn, math"):
        tiny_row("lora", sdpa_kernels=bad)
