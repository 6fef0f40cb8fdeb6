"""deepspeed: the options, the config handed to accelerate, the refusals.

Training under ZeRO-2/3 is checked in tests/test_multi_gpu_engines.py (two gloo processes).
"""

from __future__ import annotations

import json

import pytest
import torch

from tunerkit.errors import UserError
from tunerkit.validation import validate_row
from tunerkit_plugins.parallel import deepspeed as ds_plugin
from tunerkit_plugins.parallel.deepspeed import DeepSpeed, deepspeed_config


def test_options_are_range_checked(tiny_row):
    with pytest.raises(UserError, match=r"zero_stage: 1 is out of range.*>= 2 and <= 3"):
        tiny_row("lora", "deepspeed", deepspeed={"zero_stage": 1})
    with pytest.raises(UserError, match="offload_param needs zero_stage = 3"):
        tiny_row("lora", "deepspeed", deepspeed={"offload_param": "cpu"})
    with pytest.raises(UserError, match="offload_optimizer"):
        tiny_row("lora", "deepspeed", deepspeed={"offload_optimizer": "nvme"})


def test_config_leaves_accumulation_clipping_and_dtype_to_the_row(tiny_row):
    row = tiny_row("full", "deepspeed", batch_size=3, gradient_accumulation_steps=8, max_grad_norm=0.5, dtype="bf16",
                   deepspeed={"zero_stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"})
    config = deepspeed_config(row.settings, row.options["deepspeed"])
    assert config["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                           "offload_param": {"device": "cpu", "pin_memory": True}}
    # The loop accumulates and normalises over the window itself: DeepSpeed must not divide again.
    assert config["gradient_accumulation_steps"] == 1
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert "optimizer" not in config and "scheduler" not in config and "train_batch_size" not in config


def test_sequence_parallel_alone_gets_deepspeed_without_zero(tiny_row):
    row = tiny_row("lora", "sequence_parallel", dtype="fp32")
    config = deepspeed_config(row.settings, None)
    assert config["zero_optimization"] == {"stage": 0}
    assert config["bf16"]["enabled"] is False


def test_config_file_is_the_base_and_loop_keys_still_win(tiny_row, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": True},
                                "gradient_accumulation_steps": 16, "communication_data_type": "fp32"}))
    row = tiny_row("full", "deepspeed", deepspeed={"config": str(path)})
    config = deepspeed_config(row.settings, row.options["deepspeed"])
    assert config["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert config["communication_data_type"] == "fp32"
    assert config["gradient_accumulation_steps"] == 1


def test_config_file_with_its_own_optimizer_is_refused(tiny_row, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}))
    row = tiny_row("full", "deepspeed", deepspeed={"config": str(path)})
    with pytest.raises(UserError, match="sets optimizer") as err:
        validate_row(row, file="recipe.toml")
    assert "\n" not in str(err.value)
    missing = tiny_row("full", "deepspeed", deepspeed={"config": str(tmp_path / "nope.json")})
    with pytest.raises(UserError, match="not found"):
        validate_row(missing, file="recipe.toml")


def test_validate_names_the_install_when_deepspeed_is_missing(tiny_row, monkeypatch):
    real = ds_plugin.importlib.util.find_spec
    monkeypatch.setattr(ds_plugin.importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real(name, *a))
    row = tiny_row("lora", "deepspeed")
    reason = DeepSpeed().validate(row)
    assert reason.startswith("deepspeed is not installed") and "pip install" in reason
    with pytest.raises(UserError) as err:
        validate_row(row, file="recipe.toml")
    assert "pip install" in str(err.value) and err.value.key == "plugins" and "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo backend is the CPU path")
def test_accelerator_on_cpu_asks_for_gloo(tiny_row, monkeypatch):
    captured = {}

    class FakeAccelerator:
        def __init__(self, **kwargs):
            captured.update(kwargs)

    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    row = tiny_row("lora", "deepspeed", "sequence_parallel", attention="sdpa", sequence_parallel={"sp_size": 2})

    from tunerkit.context import RunContext

    ctx = RunContext(row=row, hook=None, out_dir=None)
    ds_plugin.make_deepspeed_accelerator(ctx)
    assert captured["deepspeed_plugin"].deepspeed_config["zero_optimization"]["stage"] == 2
    assert captured["kwargs_handlers"][0].backend == "gloo"
    pc = captured["parallelism_config"]
    assert (pc.sp_backend, pc.sp_size, pc.sp_handler.sp_attn_implementation) == ("deepspeed", 2, "sdpa")
    assert ctx.undo_changes() == []  # accelerate's state is reset after the row


@pytest.mark.parametrize("stage,offload_optimizer,offload_param", [
    (2, "none", "none"), (2, "cpu", "none"), (3, "none", "none"), (3, "cpu", "none"), (3, "cpu", "cpu")])
def test_estimate_shards_model_states_as_deepspeeds_own_estimator(tiny_row, stage, offload_optimizer, offload_param):
    """Full fine-tuning of a bf16 model on 2 GPUs: one GPU's weights, gradients, optimizer state
    and gathered module in the estimate equal DeepSpeed's ``estimate_zero2/3_model_states_mem_needs``,
    except where stage 3 converts its gradients to fp32 one sub-group at a time (DeepSpeed's
    estimator counts 18 bytes a parameter for both stages; stage 3 holds 16 and one sub-group's
    fp32 gradients)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from tunerkit.estimate import build_estimate, shape_of

    row = tiny_row("full", "deepspeed", gpus=2, dtype="bf16", deepspeed={
        "zero_stage": stage, "offload_optimizer": offload_optimizer, "offload_param": offload_param})
    plain = build_estimate(tiny_row("full", dtype="bf16"), gpu=True).memory_parts()
    parts = build_estimate(row, gpu=True).memory_parts()
    states = parts["weights"] + parts["added"] + parts["gradients"] + parts["optimizer"] + parts["other"] - plain["other"]
    shape = shape_of(row.settings.model)
    total, offloaded = shape.params, offload_optimizer == "cpu"
    if stage == 2:
        expected = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=2, cpu_offload=offloaded)[1]
    else:
        largest = max(shape.embed_params, shape.head_params, *(i * o for i, o in shape.layer_linear.values()))
        expected = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=2, cpu_offload=offloaded,
                                                         cpu_offload_params=offload_param == "cpu")[1]
        if not offloaded:
            expected += -2 * total / 2 + 4 * min(ds_plugin.SUB_GROUP_PARAMS, total / 2)
    assert states == pytest.approx(expected, rel=1e-6, abs=8)
    assert parts["activations"] == pytest.approx(plain["activations"])  # each GPU still runs its own micro-batch
