"""`tunerkit eval` on a saved tiny model directory and on a saved PEFT adapter, with the fixture files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tunerkit.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny-llama model directory and a LoRA adapter directory on the same preset."""
    from peft import LoraConfig, get_peft_model

    from tunerkit.models import loading

    root = tmp_path_factory.mktemp("saved")
    source = loading.resolve_model("tiny-llama")
    tokenizer = loading.load_tokenizer(source)
    model = loading.load_pretrained(source, torch.float32, torch.device("cpu"), "sdpa")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(root / "adapter")
    return root


def invoke(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


def test_eval_a_model_directory_on_all_tasks(saved, tmp_path):
    out = tmp_path / "metrics.json"
    result = invoke(saved / "model", "--tasks", "gsm8k,arc,ceval", "--data", FIXTURES, "--limit", "3",
                    "--max-new-tokens", "4", "--fewshot", "1", "--json", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    for key in ("gsm8k_acc", "arc_acc", "ceval_weighted_acc"):
        assert 0.0 <= metrics[key] <= 1.0 and f"{key}:" in result.output
    assert metrics["gsm8k_items"] == metrics["arc_items"] == metrics["ceval_items"] == 3
    assert metrics["arc_fewshot"] == metrics["ceval_fewshot"] == 1


def test_eval_an_adapter_directory_on_its_base(saved, tmp_path):
    out = tmp_path / "metrics.json"
    result = invoke(saved / "adapter", "--base", "tiny-llama", "--tasks", "ceval,infer_speed", "--data", FIXTURES,
                    "--limit", "2", "--infer-prompts", "1", "--infer-new-tokens", "3", "--json", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["ceval_items"] == 2 and metrics["infer_tokens"] == 3 and metrics["infer_tokens_per_s"] > 0


def test_eval_errors_are_one_line(saved):
    result = CliRunner().invoke(main, ["eval", str(saved / "adapter"), "--tasks", "arc", "--data", str(FIXTURES)])
    assert result.exit_code == 2 and "records no base model" in result.output and "--base" in result.output
    result = CliRunner().invoke(main, ["eval", "tiny-llama", "--tasks", "arc,mmlu", "--data", str(FIXTURES)])
    assert result.exit_code == 2 and "unknown task(s): mmlu" in result.output
    result = CliRunner().invoke(main, ["eval", "tiny-llama", "--tasks", "arc"])
    assert result.exit_code == 2 and "--data" in result.output
