"""bench/svd_speed.py: the matrices GaLore projects, and the subspace check of an SVD method."""

import json

import pytest


@pytest.fixture(scope="module")
def svd_speed(bench_script):
    return bench_script("svd_speed")


def test_projected_shapes_are_every_decoder_linear(svd_speed):
    from tunerkit_plugins.tuners.galore import galore_targets
    from transformers import AutoModelForCausalLM

    from tunerkit.models.presets import get_preset

    shapes = svd_speed.projected_shapes("tiny-llama")
    model = AutoModelForCausalLM.from_config(get_preset("tiny-llama").config())
    targets = galore_targets(model, with_embedding=False)
    assert sum(shapes.values()) == len(targets)
    assert sorted(shapes.elements()) == sorted(tuple(p.shape) for _, p in targets)


def test_subspace_agreement_of_the_same_method_is_exact_and_the_run_writes_json(svd_speed, tmp_path):
    agree = svd_speed.subspace_agreement((96, 64), "cpu", None, rank=16)
    assert agree["min_principal_cos"] == pytest.approx(1.0, abs=1e-4)
    assert agree["rank_approx_error_rel_diff"] < 1e-4
    out = tmp_path / "svd.json"
    assert svd_speed.main(["--model", "tiny-llama", "--repeats", "1", "--rank", "8", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    (row,) = payload["rows"]  # a CPU: torch's one LAPACK path
    assert row["status"] == "ok" and row["refresh_all_s"] > 0
    assert set(row["per_shape_s"]) == set(payload["shapes"])
    assert row["agreement"]["min_principal_cos"] == pytest.approx(1.0, abs=1e-4)
