"""varlen attention's ``torch_cudnn`` kernel: torch's varlen operator switched to its cuDNN
path for the rows that name it, and only while they train.

cuDNN needs a GPU, so the kernel itself is checked on one by ``bench/check_packing_gpu.py
--kernels torch_cudnn``; here: the switch's scope, and that the call hands the operator
the layout, causal flag and heads its cuDNN branch expects (a stand-in operator computes
the attention with SDPA sample by sample, the reference the GPU check uses too).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunerkit_plugins import varlen_attention as va

needs_path = pytest.mark.skipif(va.TORCH_CUDNN is None, reason="this torch has no cuDNN varlen path")


def torch_switch():
    import torch.nn.attention.varlen as module

    return module._should_use_cudnn


class StandInOperator:
    """Takes what torch's ``_varlen_attn`` takes, (tokens, heads, head_dim) tensors, and
    records the call; computes per-sample causal SDPA (causal only if told so)."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, cu_q, cu_k, max_q, max_k, is_causal, scale):
        self.calls.append(dict(shapes=(q.shape, k.shape, v.shape), max=(max_q, max_k), causal=is_causal, scale=scale,
                               switch_on=torch_switch()(0)))
        bounds = cu_q.tolist()
        outs = [F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1),
                                               is_causal=is_causal, scale=scale).transpose(0, 1)
                for s, e in zip(bounds[:-1], bounds[1:])]
        out = torch.cat(outs)
        return out, torch.zeros(q.shape[1], q.shape[0]), torch.zeros(2)


@pytest.fixture
def stand_in(monkeypatch):
    op = StandInOperator()
    monkeypatch.setattr(va, "TORCH_CUDNN", (va.TORCH_CUDNN[0], op))
    return op


class Model(torch.nn.Module):
    """What install() touches: a config whose attention implementation can be set."""

    def __init__(self):
        super().__init__()
        from transformers import LlamaConfig

        self.config = LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32,
                                  vocab_size=32)
        self.config._attn_implementation = "sdpa"


@needs_path
def test_switch_is_on_only_while_a_model_is_installed_with_it():
    assert torch_switch()(0) is False  # torch's own choice: FlashAttention-2
    first, second = Model(), Model()
    before = va.install(first, "torch_cudnn")
    assert before == "sdpa" and torch_switch()(0) is True
    va.install(second, "torch_cudnn")
    va.restore(first, before)
    assert torch_switch()(0) is True  # the second model still trains through cuDNN
    va.restore(second, "sdpa")
    assert torch_switch()(0) is False and second.config._attn_implementation == "sdpa"
    # other kernels leave torch's switch alone
    va.restore(first, va.install(first, "torch_varlen"))
    assert torch_switch()(0) is False and not va.CUDNN_SWITCH.on


@needs_path
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_call_gives_the_operator_causal_per_token_layout_and_full_heads(stand_in, kv_heads):
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 12, 20], dtype=torch.int32)
    q = torch.randn(1, 4, 20, 8)
    k, v = torch.randn(1, kv_heads, 20, 8), torch.randn(1, kv_heads, 20, 8)
    model = Model()
    before = va.install(model, "torch_cudnn")
    try:
        out = va._torch_cudnn(q, k, v, cu, 8, 0.3, 0.0, 4 // kv_heads)
    finally:
        va.restore(model, before)
    call = stand_in.calls[0]
    assert call["shapes"] == (torch.Size([20, 4, 8]),) * 3  # grouped k, v repeated to the query's heads
    assert call["causal"] is True and call["scale"] == 0.3 and call["max"] == (8, 8) and call["switch_on"]
    reference = va._sdpa_per_sample(q, k, v, cu, 0.3, 0.0, 4 // kv_heads)
    torch.testing.assert_close(out, reference)


@needs_path
def test_call_outside_an_installed_model_is_refused(stand_in):
    with pytest.raises(RuntimeError, match="installed"):
        va._torch_cudnn(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8),
                        torch.tensor([0, 4], dtype=torch.int32), 4, None, 0.0, 1)
    assert stand_in.calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU case")
def test_cpu_row_naming_it_fails_before_touching_torch(tiny_row, run_tiny):
    original = torch_switch() if va.TORCH_CUDNN is not None else None
    with pytest.raises(RuntimeError, match="torch_cudnn kernel needs a CUDA device"):
        run_tiny(tiny_row("lora", "packing", packing={"kernel": "torch_cudnn"}, evaluate=[]))
    if original is not None:
        assert torch_switch() is original and not va.CUDNN_SWITCH.on


def test_the_probe_reads_the_operator_schema():
    """On a torch whose varlen operator takes is_causal and scale at positions 7-8 (2.11-2.13)
    the path is found; the installed torch says which case this is."""
    op = getattr(getattr(torch.ops, "torch_attn", None), "_varlen_attn", None)
    if op is None:
        assert va.TORCH_CUDNN is None
        return
    names = [a.name for a in op.default._schema.arguments]
    assert (va.TORCH_CUDNN is not None) == (names[7:9] == ["is_causal", "scale"])
