"""bench/infer_speed.py's divergence check: where two greedy decodings split, and whether it was a near-tie."""

import pytest
import torch


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("infer_speed")


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


@torch.no_grad()
def greedy(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_the_gap_is_measured_at_the_first_split(bench, tiny):
    prompt = [3, 14, 15, 9, 2, 6]
    eager = greedy(tiny, prompt, 6)
    other = list(eager)
    other[3] = (eager[3] + 1) % 64  # a backend that picked another token at position 3
    [d] = bench.divergence_gaps(tiny, [prompt], [other], [eager], torch.device("cpu"))
    logits = tiny(input_ids=torch.tensor([prompt + eager[:3]])).logits[0, -1]
    assert d["diverged_at"] == 3
    assert d["logit_gap"] == pytest.approx(float(logits[eager[3]] - logits[other[3]]))
    assert d["logit_gap"] >= 0  # eager's pick is the argmax of this very forward
    assert d["near_tie"] == (abs(d["logit_gap"]) <= d["bf16_resolution"])


def test_identical_decodings_have_no_split(bench, tiny):
    prompt = [1, 2, 3]
    eager = greedy(tiny, prompt, 4)
    assert bench.divergence_gaps(tiny, [prompt], [eager], [eager], torch.device("cpu")) == [{"diverged_at": None}]
