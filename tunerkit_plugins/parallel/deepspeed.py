"""deepspeed: ZeRO stage 2 or 3 (optionally offloading to CPU) through accelerate's DeepSpeedPlugin.

The row's own optimizer and scheduler keep working: accelerate hands the torch optimizer to
``deepspeed.initialize``, which wraps it in the ZeRO optimizer (and swaps AdamW for
DeepSpeedCPUAdam when the optimizer is offloaded). Everything the loop already does itself
stays with the loop, so the DeepSpeed config carries neither an optimizer nor a scheduler
section, and accumulates over one micro-batch: the core normalises the loss over the whole
accumulation window, and the loop marks the window's last micro-batch (``sync_gradients``),
the only one whose ``accelerator.backward()`` runs DeepSpeed's optimizer step.

:func:`make_deepspeed_accelerator` is shared with ``sequence_parallel`` (Ulysses runs inside
the DeepSpeed engine): a row with either plugin or both gets the same Accelerator.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tunerkit import Plugin, hookimpl, option

INSTALL_HINT = "pip install 'tunerkit[multigpu]' (deepspeed>=0.17)"


@dataclass
class DeepSpeedOptions:
    zero_stage: int = option(2, "ZeRO stage: 2 shards gradients and optimizer states, 3 also the weights", min=2, max=3)
    offload_optimizer: Literal["none", "cpu"] = option("none", "keep optimizer states (and the step) on the CPU")
    offload_param: Literal["none", "cpu"] = option("none", "keep weights on the CPU between uses (stage 3 only)")
    config: str | None = option(None, "a DeepSpeed JSON config to start from (its zero_optimization wins "
                                      "over the options)")

    def __post_init__(self):
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage = 3 (only stage 3 partitions the weights)")


def deepspeed_missing() -> str | None:
    if importlib.util.find_spec("deepspeed") is None:
        return f"deepspeed is not installed ({INSTALL_HINT})"
    return None


def read_config_file(path: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"DeepSpeed config file {path} not found")
    try:
        config = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"DeepSpeed config file {path} is not JSON: {err.msg} (line {err.lineno})") from None
    clash = [k for k in ("optimizer", "scheduler") if k in config]
    if clash:
        raise ValueError(f"DeepSpeed config file {path} sets {' and '.join(clash)}: the row's optimizer and "
                         f"scheduler come from tunerkit (remove the section)")
    return config


def model_dtype(settings) -> torch.dtype:
    from tunerkit.precision import row_dtype

    return row_dtype(settings)


def deepspeed_config(settings, options: DeepSpeedOptions | None) -> dict:
    """The DeepSpeed config of a row; ``options`` None (a sequence-parallel row without ZeRO) = stage 0."""
    if options is not None and options.config:
        config = read_config_file(options.config)
    else:
        config = {}
    if "zero_optimization" not in config:
        zero: dict = {"stage": options.zero_stage if options is not None else 0}
        if options is not None and options.offload_optimizer != "none":
            zero["offload_optimizer"] = {"device": options.offload_optimizer, "pin_memory": True}
        if options is not None and options.offload_param != "none":
            zero["offload_param"] = {"device": options.offload_param, "pin_memory": True}
        config["zero_optimization"] = zero
    dtype = model_dtype(settings)
    # Keys the loop owns: it accumulates micro-batches itself (the loss is already normalised over
    # the window, so DeepSpeed must not divide it by its own accumulation count), clips at the
    # row's max_grad_norm (DeepSpeed clips inside its step, the loop's clip call only reads the
    # norm back), and the weights' dtype is the row's.
    config.update({
        "train_micro_batch_size_per_gpu": settings.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": settings.max_grad_norm,
        "bf16": {**config.get("bf16", {}), "enabled": dtype == torch.bfloat16},
        "fp16": {**config.get("fp16", {}), "enabled": dtype == torch.float16},
    })
    config.pop("train_batch_size", None)  # accelerate derives it from the two above and the world size
    return config


def offload_device(zero: dict, what: str) -> str:
    """Where a ZeRO config (its ``zero_optimization`` section) offloads ``what``
    (``"offload_optimizer"`` or ``"offload_param"``): "none", or the device a config names."""
    return (zero.get(what) or {}).get("device", "none")


#: DeepSpeed's default ``sub_group_size``: stage 3 turns its 16-bit gradients into fp32 for the
#: optimizer step one sub-group of this many parameters at a time
SUB_GROUP_PARAMS = 1_000_000_000


def shard_states(est, shape, world: int, stage: int, offload_optimizer: bool, offload_param: bool) -> None:
    """One GPU's share of the model states under ZeRO, in DeepSpeed's own accounting
    (``estimate_zero2_model_states_mem_needs`` and ``estimate_zero3_...``, which
    tests/plugins/test_deepspeed.py checks this against on full fine-tuning). DeepSpeed casts
    the whole model, adapters included, to the row's 16-bit dtype and keeps per trained
    parameter a 16-bit gradient, an fp32 master copy and AdamW's two fp32 states (2 + 12
    bytes), partitioned over the GPUs from stage 2 on and on the CPU when the optimizer is
    offloaded. Stage 2 also holds an fp32 copy of its gradient partition (4 bytes). Stage 3
    makes that copy for one sub-group at a time, which is where this differs from DeepSpeed's
    estimator (18 bytes a parameter for both stages); it partitions the 16-bit weights too,
    and gathers the largest module (an LLM's embedding or head) with its gradient while it runs."""
    if stage < 2:
        return
    est.notes.append("tokens/s is one GPU's compute alone: ZeRO's gathers and reductions"
                     + (" and the optimizer's step on the CPU" if offload_optimizer else "") + " are not counted")
    est.added_param_bytes = est.param_bytes
    est.grad_bytes = 0 if offload_optimizer else (6 if stage == 2 else 2)
    est.optimizer_bytes = 0.0 if offload_optimizer else 12.0
    est.state_shards = world
    if stage == 3:
        largest = max(shape.embed_params, shape.head_params, *(i * o for i, o in shape.layer_linear.values()))
        est.extra_bytes += 4 * largest
        if not offload_optimizer:
            trained = est.trainable_params if est.optimizer_params is None else est.optimizer_params
            est.extra_bytes += 4 * min(SUB_GROUP_PARAMS, trained / world)
        if offload_param:
            est.weight_bytes = 0.0
            est.added_param_bytes = 0
        else:
            est.weight_shards = world


def attention_for_sequence_parallel(settings) -> str:
    """The transformers attention implementation the model will load with (Ulysses wraps that one)."""
    from tunerkit.models.loading import attn_implementation
    from tunerkit.precision import row_device

    return attn_implementation(settings.attention, row_device())[0]


def make_deepspeed_accelerator(ctx):
    """One Accelerator for the row: ZeRO from the ``deepspeed`` options, Ulysses from ``sequence_parallel``'s."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(ctx.settings, ctx.options("deepspeed")))
    kwargs = {}
    sp = ctx.options("sequence_parallel")
    if sp is not None and sp.sp_size > 1:
        from accelerate.utils import ParallelismConfig
        from accelerate.utils.dataclasses import DeepSpeedSequenceParallelConfig

        kwargs["parallelism_config"] = ParallelismConfig(
            sp_backend="deepspeed", sp_size=sp.sp_size,
            sp_handler=DeepSpeedSequenceParallelConfig(
                sp_seq_length_is_variable=True, sp_attn_implementation=attention_for_sequence_parallel(ctx.settings)))
    if not torch.cuda.is_available():
        # accelerate only runs DeepSpeed on an accelerator unless told the backend: gloo on CPU.
        from accelerate.utils import InitProcessGroupKwargs

        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    # accelerate keeps one state per process: rows run one after another in the same process,
    # so drop what an earlier row set up (the process group itself stays), and this row's after it.
    reset_accelerate_state()
    ctx.on_teardown(reset_accelerate_state)
    accelerator = Accelerator(deepspeed_plugin=plugin, **kwargs)
    # accelerate announces a ZeRO-3 config to transformers, which then builds models inside
    # deepspeed.zero.Init (weights partitioned at creation, numel() = 0, initialised
    # differently). Load the model whole instead, exactly as without DeepSpeed: the engine
    # partitions it at prepare(), and parameter counts and random init stay comparable.
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    return accelerator


def reset_accelerate_state() -> None:
    """Forget accelerate's per-process state, so the next Accelerator is built from its own arguments."""
    import os

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    # Set by Accelerator(deepspeed_plugin=...); left behind it turns the next row's plain
    # Accelerator() into a default DeepSpeed one.
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)


class DeepSpeed(Plugin):
    name = "deepspeed"
    conformance = {"companions": ["lora"],
                   "skip": "needs a process group (a launcher); tests/plugins/test_deepspeed.py trains it under gloo"}
    summary = "DeepSpeed ZeRO-2/3 (optional CPU offload) through accelerate; launch with gpus = N"
    Options = DeepSpeedOptions

    @hookimpl
    def validate(self, row):
        missing = deepspeed_missing()
        if missing:
            return missing
        if self.options.config:
            try:
                read_config_file(self.options.config)
            except ValueError as err:
                return str(err)
        return None

    @hookimpl
    def setup_distributed(self, ctx):
        return make_deepspeed_accelerator(ctx)

    @hookimpl
    def memory_savings(self, row):
        # the optimizer's step on the CPU (DeepSpeedCPUAdam) costs much more speed than the
        # activations' offload, and the weights' offload more again: tried after it
        if self.name not in row.plugins:
            return None
        zero = deepspeed_config(row.settings, self.options)["zero_optimization"]
        stage = zero.get("stage", 0)
        offers = []
        if stage == 2:  # sharding the weights too costs a gather per layer, less than a CPU step
            offers.append({"label": "deepspeed.zero_stage = 3", "order": 55, "options": {self.name: {"zero_stage": 3}}})
        if stage >= 2 and offload_device(zero, "offload_optimizer") == "none":
            offers.append({"label": 'deepspeed.offload_optimizer = "cpu"', "order": 60,
                           "options": {self.name: {"offload_optimizer": "cpu"}}})
        if stage >= 2 and offload_device(zero, "offload_param") == "none":
            offers.append({"label": 'deepspeed.offload_param = "cpu"', "order": 70, "options": {
                self.name: {"zero_stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"}}})
        return offers or None

    @hookimpl(trylast=True)  # after the tuners have said what trains
    def estimate_memory(self, row, shape, estimate):
        zero = deepspeed_config(row.settings, self.options)["zero_optimization"]
        shard_states(estimate, shape, row.settings.gpus, zero.get("stage", 0),
                     offload_optimizer=offload_device(zero, "offload_optimizer") != "none",
                     offload_param=offload_device(zero, "offload_param") != "none")

    @hookimpl
    def collect_metrics(self, ctx):
        config = getattr(ctx.accelerator, "deepspeed_config", None) or {}
        zero = config.get("zero_optimization", {})
        return {"deepspeed_zero_stage": zero.get("stage"),
                "deepspeed_offload_optimizer": offload_device(zero, "offload_optimizer"),
                "deepspeed_offload_param": offload_device(zero, "offload_param")}
