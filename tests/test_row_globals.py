"""No row leaves process-wide state changed: torch's functions and compiler settings,
transformers' attention registries and modeling module, accelerate's environment switch.

A snapshot of those globals is taken before and after a row of every built-in plugin on the
tiny CPU model, a row that fails mid-way included; plugins that need a GPU or several
processes run the hooks that change process-wide state against stand-ins."""

from __future__ import annotations

import os
import types

import pytest
import torch

from tunerkit import Plugin, hookimpl
from tunerkit.plugins import registry

_ABSENT = object()
DYNAMO_NAMES = ("__compiled_fn", "__resume_at", "__import_", "__builtins_dict")


def snapshot() -> dict:
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from transformers.models.llama import modeling_llama

    from tunerkit_plugins._helpers.attention_registry import registries
    from tunerkit_plugins.speed.compile import _limit_name, shape_config

    pairs = [(torch.linalg, "svd"), (torch._dynamo.config, _limit_name()), (shape_config(), "use_duck_shape"),
             (inductor_config, "cpp_wrapper"), (modeling_llama.LlamaForCausalLM, "forward"),
             (modeling_llama.LlamaDecoderLayer, "forward"), (torch._dynamo.eval_frame, "_stance")]
    state = {f"{getattr(obj, '__name__', obj)}.{attr}": getattr(obj, attr, _ABSENT) for obj, attr in pairs}
    state["dynamo stance"] = repr(torch._dynamo.eval_frame._stance)
    # dynamo writes the compiled frames' helpers into the globals of the module it compiled
    # (__compiled_fn_*, __resume_at_*, __import_*): its own cache, not a name any code reads
    state["modeling_llama"] = {k: v for k, v in vars(modeling_llama).items() if not k.startswith(DYNAMO_NAMES)}
    state["attention registries"] = [dict(mapping) for mapping in registries()]
    state["float32 matmul precision"] = torch.get_float32_matmul_precision()
    for name in ("ACCELERATE_USE_DEEPSPEED", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        state[name] = os.environ.get(name)
    return state


def assert_unchanged(before: dict) -> None:
    after = snapshot()
    changed = {key: _difference(before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"changed by the row: {changed}"


def _difference(before, after):
    if isinstance(before, dict):
        return sorted(str(k) for k in set(before) | set(after) if before.get(k, _ABSENT) is not after.get(k, _ABSENT))
    return (before, after)


SMALL = dict(max_steps=2, batch_size=2, max_train_samples=4, max_length=48, evaluate=[])
CHECKPOINTED = dict(SMALL, gradient_checkpointing=True)
ONE_STEP = dict(SMALL, max_steps=1)
#: rows run through the real loop on the CPU, each plugin in at least one
ROWS = [
    (("lora", "neftune", "packing", "offload", "selective_checkpointing"),
     dict(CHECKPOINTED, offload={"scope": "checkpoints"})),
    (("full", "galore"), dict(SMALL, galore={"rank": 4, "update_proj_gap": 1})),
    (("lora", "padding_free", "lazy_tokenize"), SMALL),
    # tuners that change only the row's own model: one step each
    (("full", "lisa"), ONE_STEP), (("rslora",), ONE_STEP), (("adalora",), dict(SMALL, max_steps=None, epochs=1.0, batch_size=1, gradient_accumulation_steps=2)),
    (("dora",), ONE_STEP), (("loraplus",), ONE_STEP), (("llamapro",), ONE_STEP), (("adapter",), ONE_STEP),
    # the tracker sets MLflow's environment only while the row logs
    (("lora", "track"), dict(ONE_STEP, track={"to": ["tensorboard", "mlflow"]})),
]
#: a row that fails at its first step's end (compile is set up by then), with a teardown hook that raises
FAILING = (("lora", "compile", "neftune", "packing", "offload", "selective_checkpointing"),
           dict(CHECKPOINTED, offload={"scope": "checkpoints"}, compile={"backend": "eager", "cpp_wrapper": True}))
#: plugins whose rows need a GPU or several processes: covered by the stand-in tests below
STAND_INS = {"liger": "Triton kernels, CUDA only", "deepspeed": "a process group", "sequence_parallel": "a process group",
             "bnb": "bitsandbytes' 4-bit layers, CUDA only (its changes stay on the row's own model)",
             "gptq": "GPT-QModel's layers (the gptq extra): tests/plugins/test_gptq_awq.py trains it on a CPU where installed",
             "awq": "GPT-QModel's layers (the gptq extra): tests/plugins/test_gptq_awq.py trains it on a CPU where installed",
             "aqlm": "aqlm's kernels, CUDA only (its backward fails on a CPU)",
             "export": "acts after training only (merge, GPT-QModel, decoding): tests/plugins/test_export_plugin.py",
             "unsloth": "CUDA only; importing unsloth patches transformers for the whole process, which no "
                        "teardown can undo (bench/peers.py runs its rows last)"}


def test_every_built_in_plugin_is_covered():
    built_in = {n for n, cls in registry().items() if cls.__module__.startswith("tunerkit_plugins.")}
    covered = {name for plugins, _ in [*ROWS, FAILING] for name in plugins} | set(STAND_INS)
    assert built_in <= covered, f"no globals check for {sorted(built_in - covered)}"


@pytest.mark.parametrize("plugins,options", ROWS, ids=["+".join(p) for p, _ in ROWS])
def test_a_row_leaves_the_process_as_it_found_it(tiny_row, run_tiny, plugins, options):
    before = snapshot()
    metrics = run_tiny(tiny_row(*plugins, **options))
    assert metrics["train_loss"] is not None
    assert_unchanged(before)


class FailAtFirstStep(Plugin):
    name = "fail_at_first_step"

    @hookimpl
    def on_step_end(self, ctx):
        if ctx.global_step == 0:
            raise RuntimeError("a plugin failed at step 1")


class BrokenTeardown(Plugin):
    name = "broken_teardown"

    @hookimpl
    def teardown(self, ctx):
        raise RuntimeError("teardown failed")


def test_a_row_failing_mid_way_leaves_the_process_as_it_found_it(tiny_row, tmp_path):
    from tunerkit.loop import run_row

    plugins, options = FAILING
    before = snapshot()
    with pytest.raises(RuntimeError, match="failed at step 1"):
        run_row(tiny_row(*plugins, **options), tmp_path / "r", extra_plugins=[FailAtFirstStep(), BrokenTeardown()])
    assert_unchanged(before)


def test_liger_with_a_stand_in_kernel_package(tiny_row, tmp_path, monkeypatch):
    """liger rebinds names of the modeling module and its fused loss function for the process."""
    import functools
    import importlib.machinery
    import sys

    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    from tunerkit.loop import build_context
    from tunerkit.models.presets import PRESETS

    def apply_liger_kernel_to_llama(rope=True, cross_entropy=False, fused_linear_cross_entropy=True,
                                    rms_norm=True, swiglu=True, model=None):
        modeling_llama.apply_rotary_pos_emb = "liger rope"
        modeling_llama.LigerAddedName = "new"
        modeling_llama.LlamaForCausalLM.forward = lambda self, **kw: None

    def fused_loss(*args, chunk_mem_const=1, **kwargs):
        return chunk_mem_const

    root = types.ModuleType("liger_kernel")
    root.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None)
    transformers_part = types.ModuleType("liger_kernel.transformers")
    transformers_part.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama
    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = fused_loss
    root.transformers, transformers_part.functional = transformers_part, functional
    for module in (root, transformers_part, functional):
        monkeypatch.setitem(sys.modules, module.__name__, module)

    before = snapshot()
    ctx = build_context(tiny_row("lora", "liger", liger={"chunk_mem_const": 4}), tmp_path)
    ctx.device = torch.device("cuda")  # the glue only reads the device; nothing runs
    ctx.model = AutoModelForCausalLM.from_config(PRESETS["tiny-llama"].config())
    ctx.hook.modify_model(ctx=ctx)
    assert modeling_llama.apply_rotary_pos_emb == "liger rope"
    assert isinstance(functional.liger_fused_linear_cross_entropy, functools.partial)
    assert ctx.close() == []
    assert_unchanged(before)
    assert functional.liger_fused_linear_cross_entropy is fused_loss


def test_sequence_parallel_and_deepspeed_with_a_stand_in_engine(tiny_row, tmp_path, monkeypatch):
    """Ulysses (through accelerate) replaces an attention registry entry and switches
    accelerate to DeepSpeed for the process; the row puts both back."""
    import accelerate
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from tunerkit.loop import build_context

    class StandInAccelerator:
        def __init__(self, **kwargs):
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            ALL_ATTENTION_FUNCTIONS["sdpa"] = lambda *args, **kw: None  # what Ulysses does to the row's attention

    monkeypatch.setattr(accelerate, "Accelerator", StandInAccelerator)
    before = snapshot()
    row = tiny_row("lora", "deepspeed", "sequence_parallel", attention="sdpa", batch_size=1,
                   sequence_parallel={"sp_size": 2})
    ctx = build_context(row, tmp_path)
    assert isinstance(ctx.hook.setup_distributed(ctx=ctx), StandInAccelerator)
    assert os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    assert ctx.close() == []
    assert_unchanged(before)
