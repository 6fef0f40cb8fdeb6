"""unsloth plugin: option handling, the refusal without a GPU, and what it hands unsloth (a stand-in module)."""

import sys
import types
from pathlib import Path

import pytest
import torch

from tunerkit.recipe import make_row
from tunerkit_plugins.speed import unsloth as plugin


def test_options_check_their_ranges_and_spell_out_the_seed_keywords():
    with pytest.raises(ValueError, match="bits must be 4 or 16"):
        plugin.UnslothOptions(bits=8)
    with pytest.raises(ValueError, match="rank"):
        plugin.UnslothOptions(rank=0)
    assert plugin.unsloth_targets("ALL") == plugin.ALL_LINEAR
    assert plugin.unsloth_targets("DEFAULT") == ["q_proj", "k_proj", "v_proj"]
    assert plugin.unsloth_targets(["o_proj"]) == ["o_proj"]
    assert plugin.checkpointing_mode(True, True) == "unsloth"
    assert plugin.checkpointing_mode(True, False) is True
    assert plugin.checkpointing_mode(False, True) is False


def test_validate_refuses_without_a_gpu_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    row = make_row("u", ["unsloth"], model="tiny-llama")
    reason = plugin.Unsloth(row.options["unsloth"]).validate(row)
    assert reason and "CUDA GPU" in reason and "\n" not in reason


def test_validate_names_the_extra_when_unsloth_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(plugin.importlib.util, "find_spec", lambda name: None)
    row = make_row("u", ["unsloth"], model="tiny-llama")
    assert "tunerkit[unsloth]" in plugin.Unsloth(row.options["unsloth"]).validate(row)


def test_it_refuses_to_share_a_row_with_lora_or_its_own_kinds_of_switch():
    from tunerkit.errors import UserError

    for other in ("lora", "liger", "bnb"):
        with pytest.raises(UserError):
            make_row("u", ["unsloth", other], model="tiny-llama")


class StandIn:
    """unsloth's FastLanguageModel as far as the plugin calls it: records the calls."""

    calls = []

    @classmethod
    def from_pretrained(cls, **kwargs):
        cls.calls.append(("from_pretrained", kwargs))
        return torch.nn.Linear(2, 2), "tokenizer"

    @classmethod
    def get_peft_model(cls, model, **kwargs):
        cls.calls.append(("get_peft_model", kwargs))
        model.gradient_checkpointing_enable = lambda **kw: cls.calls.append(("transformers_checkpointing", kw))
        return model


def test_the_row_reaches_unsloth_as_written(monkeypatch, tmp_path):
    from tunerkit.models.loading import resolve_model

    monkeypatch.setenv("TUNERKIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=StandIn))
    StandIn.calls.clear()
    row = make_row("u", ["unsloth"], model="tiny-llama", max_length=256,
                   unsloth={"bits": 16, "rank": 4, "dropout": 0.0, "targets": "ALL"})
    p = plugin.Unsloth(row.options["unsloth"])
    ctx = types.SimpleNamespace(settings=row.settings, device=torch.device("cuda"), dtype=torch.bfloat16,
                                model_source=resolve_model("tiny-llama"), state={}, attention_used=None)
    ctx.model = p.load_model(ctx)
    p.apply_tuner(ctx)
    (_, load), (_, wrap) = StandIn.calls
    assert load["load_in_4bit"] is False and load["max_seq_length"] == 256 and load["dtype"] is torch.bfloat16
    assert (tmp_path / "models" / "unsloth-tiny-llama" / "config.json").exists()  # the preset's directory
    assert wrap["r"] == 4 and wrap["lora_dropout"] == 0.0 and wrap["target_modules"] == plugin.ALL_LINEAR
    assert wrap["use_gradient_checkpointing"] == "unsloth"
    ctx.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={})  # the core's call afterwards
    assert all(name != "transformers_checkpointing" for name, _ in StandIn.calls)  # unsloth's stays in place


def four_bit_context(monkeypatch, tmp_path, loaded):
    from tunerkit.models.loading import resolve_model

    class Loader(StandIn):
        @classmethod
        def from_pretrained(cls, **kwargs):
            cls.calls.append(("from_pretrained", kwargs))
            return loaded, "tokenizer"

    monkeypatch.setenv("TUNERKIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=Loader))
    StandIn.calls.clear()
    row = make_row("u", ["unsloth"], model="tiny-llama", max_length=256, unsloth={"bits": 4})
    ctx = types.SimpleNamespace(settings=row.settings, device=torch.device("cuda"), dtype=torch.bfloat16,
                                model_source=resolve_model("tiny-llama"), state={}, attention_used=None)
    return plugin.Unsloth(row.options["unsloth"]), ctx


def test_a_4bit_preset_row_reads_the_full_random_checkpoint(monkeypatch, tmp_path):
    # bitsandbytes quantizes only the weights a checkpoint stores: the 4-bit row must read them all.
    linear = torch.nn.Linear(2, 2)
    linear.weight.quant_state = object()  # what a bitsandbytes 4-bit weight carries
    p, ctx = four_bit_context(monkeypatch, tmp_path, torch.nn.Sequential(linear))
    p.load_model(ctx)
    (_, load), = StandIn.calls
    path = Path(load["model_name"])
    assert load["load_in_4bit"] is True
    assert any(path.glob("*.safetensors")) and (path / "tokenizer_config.json").exists()
    from safetensors import safe_open
    with safe_open(str(next(path.glob("*.safetensors"))), "pt") as f:
        assert any(k.endswith("q_proj.weight") for k in f.keys())  # every weight stored, not only the norm
    assert ctx.state["unsloth:quantized_linears"] == 1
    # the preset's checkpoint is shared with every quantizing loader: unsloth's tokenizer lives
    # in a folder of its own that links to it
    shared = tmp_path / "models" / path.name.removeprefix("unsloth-")
    assert (shared / "config.json").exists() and not (shared / "tokenizer_config.json").exists()


@pytest.mark.parametrize("bits", [4, 16])
def test_a_killed_preset_folder_write_leaves_nothing_that_looks_complete(monkeypatch, tmp_path, bits):
    """The folders unsloth reads are published in one rename: a write that dies halfway (here the
    tokenizer fails) leaves no folder behind, and the next row writes it whole."""
    from tunerkit.models import loading

    linear = torch.nn.Linear(2, 2)
    linear.weight.quant_state = object()
    p, ctx = four_bit_context(monkeypatch, tmp_path, torch.nn.Sequential(linear))
    p.options.bits = bits
    real = loading.ids_tokenizer
    monkeypatch.setattr(loading, "ids_tokenizer", lambda vocab: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        p.load_model(ctx)
    assert not [d for d in (tmp_path / "models").iterdir() if d.name.startswith("unsloth-")]
    monkeypatch.setattr(loading, "ids_tokenizer", real)
    p.load_model(ctx)
    path = Path(StandIn.calls[-1][1]["model_name"])
    assert (path / "config.json").exists() and (path / "tokenizer_config.json").exists()


def test_a_4bit_row_whose_weights_stayed_bf16_fails_instead_of_measuring_them(monkeypatch, tmp_path):
    from tunerkit.errors import RowFailed

    p, ctx = four_bit_context(monkeypatch, tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(RowFailed, match="no layer of the loaded model holds bitsandbytes 4-bit weights"):
        p.load_model(ctx)
