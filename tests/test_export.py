"""tunerkit export: a PEFT adapter merged into its base loads with plain transformers, same outputs."""

import pytest
import torch
from click.testing import CliRunner

from tunerkit.cli import main


@pytest.fixture
def saved_lora(tiny_row, tiny_context, tmp_path):
    """A tiny LoRA row's adapter folder (non-zero B, as after training) and the adapted model."""
    ctx = tiny_context(tiny_row("lora", lora={"targets": "ALL", "rank": 4}))
    with torch.no_grad():
        for name, p in ctx.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    ctx.hook.save_artifacts(ctx=ctx, out_dir=tmp_path / "row")
    return tmp_path / "row" / "model", ctx.model.eval()


def test_merged_checkpoint_matches_the_adapted_model(saved_lora, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, adapted = saved_lora
    out = tmp_path / "merged"
    result = CliRunner().invoke(main, ["export", str(adapter_dir), "--base", "tiny-llama", "--merge", "--out", str(out)])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert AutoTokenizer.from_pretrained(out) is not None
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=0, atol=1e-4)


def test_export_mistakes_are_one_line_errors(saved_lora, tmp_path):
    adapter_dir, _ = saved_lora
    runner = CliRunner()
    cases = [
        (["export", str(adapter_dir), "--base", "tiny-llama", "--out", str(tmp_path / "a")], "--merge"),
        (["export", str(tmp_path / "nowhere"), "--base", "tiny-llama", "--merge", "--out", str(tmp_path / "b")],
         "no adapter_config.json"),
        (["export", str(adapter_dir), "--merge", "--out", str(tmp_path / "c")], "--base"),
        (["export", str(adapter_dir), "--base", "tiny-qwen2", "--merge", "--out", str(tmp_path / "d")],
         "does not fit base"),
        (["export", str(adapter_dir), "--base", "tiny-llama", "--merge", "--out", str(adapter_dir)], "not empty"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1


def test_a_preset_without_a_tokenizer_merges_with_a_stand_in_of_its_vocabulary(saved_lora, tmp_path, monkeypatch):
    """A preset trained on synthetic ids saves no tokenizer, and a host without the bundled one
    has none to fall back on; GPT-QModel refuses such a folder (the 2026-12-07 Export rows failed
    there), so the merge writes a stand-in tokenizer over plain ids."""
    from transformers import AutoConfig, AutoTokenizer

    from tunerkit.models import loading

    adapter_dir, _ = saved_lora
    for name in adapter_dir.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            name.unlink()

    def no_bundled_tokenizer(source):
        raise OSError("the bundled model is not installed here")

    monkeypatch.setattr(loading, "load_tokenizer", no_bundled_tokenizer)
    out = tmp_path / "merged"
    result = CliRunner().invoke(main, ["export", str(adapter_dir), "--base", "tiny-llama", "--merge", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) <= AutoConfig.from_pretrained(out).vocab_size  # no id beyond the model's
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert tokenizer.convert_ids_to_tokens([5, 7]) == ["<5>", "<7>"]
