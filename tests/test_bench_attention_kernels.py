"""bench/attention_kernels.py: its rows, its FLOP count, and a CPU run of its plumbing."""

import json

import pytest


@pytest.fixture(scope="module")
def attention_kernels(bench_script):
    return bench_script("attention_kernels")


def test_packed_row_is_the_fullest_best_fit_row_within_capacity(attention_kernels):
    lengths = attention_kernels.packed_row(6144, 2048, seed=0)
    assert len(lengths) > 1 and max(lengths) <= 2048
    assert 0.9 * 6144 < sum(lengths) <= 6144


def test_causal_flops_count_half_the_square_per_sample(attention_kernels):
    # one sample of L tokens, one head of d: QK^T and PV are 2 * L * L * d each, causal keeps half
    assert attention_kernels.causal_flops([100], heads=1, head_dim=8) == 2 * 2 * 100 * 100 / 2 * 8
    assert attention_kernels.causal_flops([100, 50], heads=3, head_dim=8) == 3 * 8 * 2 * (100 ** 2 + 50 ** 2)


def test_cpu_run_compares_kernels_and_records_one_it_cannot_run(attention_kernels, tmp_path, capsys):
    out = tmp_path / "attention.json"
    rc = attention_kernels.main(["--device", "cpu", "--kernels", "sdpa,torch_varlen,sdpa,sdpa:math", "--rows", "1200",
                                 "--longest", "500", "--heads", "2", "--head-dim", "8", "--repeats", "1",
                                 "--warmup", "1", "--json", str(out)])
    assert rc == 0
    reference, missing, again, pinned = json.loads(out.read_text())["results"]
    assert reference["reference"] and reference["samples"] > 1 and reference["fwd_bwd_ms"] > 0
    assert missing["status"] == "failed" and "CUDA" in missing["error"]
    # the same kernel on the same rows: identical output and gradients
    assert again["status"] == "ok" and again["out_rel_err"] == 0 and again["grad_rel_err"] == 0
    # SDPA pinned to its math backend: the same attention by another kernel
    assert pinned["resolved"].endswith("(math)") and pinned["out_rel_err"] < 1e-5 and pinned["grad_rel_err"] < 1e-5
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
