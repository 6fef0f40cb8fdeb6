"""tunerkit export --quantize: GPT-QModel's GPTQ/AWQ on a merged checkpoint, loadable by plain transformers."""

import json

import pytest
import torch
from click.testing import CliRunner

from tunerkit.cli import main


def merge_tiny(tiny_row, tiny_context, tmp_path, model: str):
    """A tiny LoRA row merged into its base: the folder export --quantize is meant for."""
    ctx = tiny_context(tiny_row("lora", lora={"targets": "ALL", "rank": 4}, model=model))
    ctx.hook.save_artifacts(ctx=ctx, out_dir=tmp_path / "row")
    out = tmp_path / "merged"
    result = CliRunner().invoke(main, ["export", str(tmp_path / "row" / "model"), "--base", model, "--merge",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def merged(tiny_row, tiny_context, tmp_path):
    return merge_tiny(tiny_row, tiny_context, tmp_path, "tiny-llama")


def test_quantize_mistakes_are_one_line_errors(merged, tmp_path):
    q = ["export", str(merged), "--quantize"]
    cases = [
        ([*q, "gptq", "--out", str(tmp_path / "a")], "--calibration"),
        ([*q, "gptq", "--merge", "--calibration", "builtin:arithmetic", "--out", str(tmp_path / "a")], "separate"),
        ([*q, "gptq", "--bits", "3", "--calibration", "builtin:arithmetic", "--out", str(tmp_path / "a")], "4 or 8 bits"),
        ([*q, "awq", "--bits", "8", "--calibration", "builtin:arithmetic", "--out", str(tmp_path / "a")], "4 bits"),
        ([*q, "gptq", "--samples", "0", "--calibration", "builtin:arithmetic", "--out", str(tmp_path / "a")], "--samples"),
        ([*q, "gptq", "--calibration", "no-such-data", "--out", str(tmp_path / "a")], "unknown dataset"),
        ([*q, "gptq", "--calibration", "builtin:arithmetic", "--out", str(merged)], "not empty"),
        (["export", "tiny-llama", "--quantize", "gptq", "--calibration", "builtin:arithmetic", "--out",
          str(tmp_path / "a")], "random-weight preset"),
        # refused before GPT-QModel starts: its AWQ would fail inside a worker thread, halfway through
        ([*q, "awq", "--group-size", "48", "--calibration", "builtin:arithmetic", "--out", str(tmp_path / "a")],
         "groups input features by 48"),
        ([*q, "awq", "--calibration", "builtin:arithmetic", "--out", str(tmp_path / "a")], "--group-size 64"),
        ([*q, "awq", "--group-size", "32", "--calibration", "builtin:arithmetic", "--out", str(tmp_path / "a")],
         "multiples of 64"),
    ]
    # a folder without a tokenizer, which GPT-QModel would refuse only after calibrating
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in merged.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            (bare / f.name).symlink_to(f)
    cases.append(([*q[:1], str(bare), "--quantize", "gptq", "--calibration", "synthetic:lengths", "--out",
                   str(tmp_path / "a")], "holds no tokenizer"))
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, (args, result.output)
    assert not (tmp_path / "a").exists()  # nothing half-written


# GPT-QModel's AWQ clip search takes output features in blocks of 64: tiny-llama's k/v
# projections have 32, tiny-qwen2's 64.
@pytest.mark.parametrize("method, model", [("gptq", "tiny-llama"), ("awq", "tiny-qwen2")])
def test_quantized_checkpoint_loads_in_plain_transformers_and_stays_close(method, model, tiny_row, tiny_context,
                                                                          tmp_path):
    pytest.importorskip("gptqmodel")
    merged = merge_tiny(tiny_row, tiny_context, tmp_path, model)
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import AutoModelForCausalLM

    out = tmp_path / method
    result = CliRunner().invoke(main, ["export", str(merged), "--quantize", method, "--bits", "4", "--group-size", "32",
                                       "--calibration", "builtin:arithmetic", "--samples", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == method and config["bits"] == 4 and config["group_size"] == 32
    quantized = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
    assert sum(isinstance(m, BaseQuantLinear) for m in quantized.modules()) == 28  # 4 layers x 7 linears
    full = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = full(input_ids=ids).logits.float(), quantized(input_ids=ids).logits.float()
    # 4-bit weights move the logits, but they stay those of the same model
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_decode_kernel_overrides_the_checkpoints_backend_when_transformers_loads_it(method):
    """GPT-QModel's own pick on a Hopper GPU (Machete) downloads CUTLASS at load time and failed
    on an offline H100 after the whole quantization (2026-12-07): ``decode_kernel`` must reach
    the config transformers loads with, in each method's spelling; "auto" leaves it alone."""
    from transformers.quantizers.auto import AutoHfQuantizer

    from tunerkit_plugins.quant.export import decoding_config

    stored = {"quant_method": method, "bits": 4, "group_size": 128, "sym": method == "gptq", "desc_act": False}
    if method == "awq":
        stored.update(zero_point=True, version="gemm")
    assert decoding_config(method, 4, "auto") is None
    expected = {"gptq": {"marlin": "marlin", "triton": "triton", "torch": "torch"},
                "awq": {"marlin": "marlin", "triton": "gemm_triton", "torch": "torch_awq"}}[method]
    for kernel, backend in expected.items():
        with pytest.warns(UserWarning, match="loading attributes"):
            merged = AutoHfQuantizer.merge_quantization_configs(dict(stored), decoding_config(method, 4, kernel))
        assert (merged.quant_method, merged.backend, merged.group_size) == (method, backend, 128)


def test_decode_kernel_reaches_gptqmodels_kernel_choice(tiny_row, tiny_context, tmp_path):
    """End to end on a CPU: "torch" loads GPT-QModel's torch kernel, "marlin" (GPU only) is refused
    by GPT-QModel, so the option is what picks the kernel, not the library's auto choice."""
    pytest.importorskip("gptqmodel")
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import AutoModelForCausalLM

    from tunerkit_plugins.quant.export import decoding_config

    merged = merge_tiny(tiny_row, tiny_context, tmp_path, "tiny-llama")
    out = tmp_path / "gptq"
    result = CliRunner().invoke(main, ["export", str(merged), "--quantize", "gptq", "--bits", "4", "--group-size", "32",
                                       "--calibration", "builtin:arithmetic", "--samples", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", quantization_config=decoding_config(
        "gptq", 4, "torch"))
    kernels = {type(m).__name__ for m in model.modules() if isinstance(m, BaseQuantLinear)}
    assert kernels == {"TorchLinear"}, kernels
    with pytest.raises(Exception, match="(?i)marlin|cuda|backend"):
        AutoModelForCausalLM.from_pretrained(out, device_map="cpu", quantization_config=decoding_config(
            "gptq", 4, "marlin"))


def test_synthetic_calibration_needs_no_tokenizer_and_spans_the_models_vocabulary():
    """A random-weight model folder may hold no tokenizer; its synthetic calibration ids come from
    the model's own vocabulary size (the 2026-12-07 GPU rows took len() of a tokenizer built
    from nothing and failed), and text calibration without a tokenizer is a one-line error."""
    from tunerkit.errors import UserError
    from tunerkit.quantize import calibration_samples

    data = calibration_samples("synthetic:lengths?mean=64&sd=0&min=64&max=64&rows=8", None, 8, 32, vocab_size=151_936)
    assert len(data) == 8 and all(d["input_ids"].shape == (1, 32) for d in data)
    ids = torch.cat([d["input_ids"] for d in data])
    assert int(ids.max()) < 151_936 and int(ids.max()) > 49_152  # the model's vocabulary, not a borrowed tokenizer's
    with pytest.raises(UserError, match="needs a tokenizer"):
        calibration_samples("builtin:arithmetic", None, 8, 32, vocab_size=1000)
