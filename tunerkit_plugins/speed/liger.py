"""liger: liger-kernel's fused Triton kernels for the model's architecture.

``liger_kernel.transformers.apply_liger_kernel_to_<model_type>(model=...)`` swaps in:
RoPE, RMSNorm and SwiGLU kernels, and a causal-LM ``forward`` whose loss is the fused
linear cross-entropy (``lm_head`` and cross-entropy computed chunk by chunk, so the
``tokens x vocab`` logits are never materialised: at Qwen's 151,936-token vocabulary that
is the largest single activation of a step).

Loss normalisation: the core's ``compute_loss`` calls ``model(**batch, num_items_in_batch=N)``.
liger's patched forward passes ``num_items_in_batch`` on to its loss, which then uses
``reduction="sum"`` and divides by ``N`` (``liger_kernel.transformers.model.loss_utils``),
the same token-summed normalisation as transformers' own loss, so no compute_loss of
our own is needed and gradient accumulation stays exact.

The patch runs in ``modify_model``, before any tuner wraps the model: PEFT's LoRA layers
then wrap the patched modules, and ``PeftModel.forward`` reaches the patched forward.
liger rebinds a few names of the architecture's modeling module (e.g.
``modeling_qwen2.apply_rotary_pos_emb``) for the whole process; they are set again through
``ctx.patch``, so the loop puts them back after the row and a later row in the same process
(a benchmark comparing with and without) runs plain.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass

import torch

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed
from tunerkit_plugins._helpers import estimates

INSTALL_HINT = "pip install liger-kernel"


@dataclass
class LigerOptions:
    rope: bool = option(True, "liger's rotary position embedding kernel")
    rms_norm: bool = option(True, "liger's RMSNorm kernel")
    swiglu: bool = option(True, "liger's fused SwiGLU MLP (silu(gate) * up in one kernel)")
    fused_linear_cross_entropy: bool = option(
        True, "lm_head + cross-entropy in chunks: the tokens x vocab logits are never materialised")
    chunk_mem_const: int = option(
        1, "the fused cross-entropy's logits chunk holds up to C x tokens x hidden elements (liger's "
           "chunk_mem_const; 1 = liger's default): larger chunks, fewer passes over the lm_head weight", added_later=True, min=1)


#: the kernels liger puts inside a decoder layer, the region the ``compile`` plugin compiles
IN_LAYER_KERNELS = ("rope", "rms_norm", "swiglu")
KERNELS = (*IN_LAYER_KERNELS, "fused_linear_cross_entropy")
# dynamo stops inside LigerRMSNormFunction when it compiles layers holding liger's kernels
# (docs/performance.md has the run). The fused linear cross-entropy runs in the causal-LM
# forward, outside the compiled layers, so it may stay on.
COMPILE_REFUSAL = ("liger's in-layer kernels ({kernels}) do not trace under torch.compile (dynamo fails inside"
                   " LigerRMSNormFunction): with 'compile' in the row, set"
                   " liger = {{ rope = false, rms_norm = false, swiglu = false }} in the row's table and keep"
                   " fused_linear_cross_entropy, which runs outside the compiled layers")


def undo_with_row(ctx, target, before: dict) -> None:
    """Names of ``target`` (a module or class) that changed since ``before`` go back, or away,
    after the row: each is set back and set again through ``ctx.patch``."""
    after = dict(vars(target))
    for key, value in after.items():
        if key in before and before[key] is value:
            continue
        if key in before:
            setattr(target, key, before[key])
        else:
            delattr(target, key)
        ctx.patch(target, key, value)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def patch_function(model_type: str):
    """liger's ``apply_liger_kernel_to_<model_type>``, or ``None`` when it has none."""
    import liger_kernel.transformers as lt

    return getattr(lt, f"apply_liger_kernel_to_{model_type}", None)


def preset_arch(model: str) -> str | None:
    from tunerkit.models.presets import get_preset

    preset = get_preset(model)
    return preset.arch if preset is not None else None


class Liger(Plugin):
    name = "liger"
    conformance = {"companions": ["lora"]}
    summary = "liger-kernel's fused Triton kernels: RoPE, RMSNorm, SwiGLU, fused linear cross-entropy (CUDA)"
    Options = LigerOptions
    #: the fast mode (speed = "max"): the fused linear cross-entropy alone (it runs beside compile)
    fast_switch = {"rope": False, "rms_norm": False, "swiglu": False}
    fast_order = 30

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        if self.options.fused_linear_cross_entropy:
            estimates.fused_loss(estimate, shape)

    @hookimpl
    def validate(self, row):
        # Checked first, so the refusal is the same on a CPU and a GPU machine.
        if "compile" in row.plugins and self.in_layer_kernels():
            return COMPILE_REFUSAL.format(kernels=", ".join(self.in_layer_kernels()))
        if not torch.cuda.is_available():
            return "liger's Triton kernels need a CUDA GPU and none is visible; drop 'liger' on this machine"
        if not liger_available():
            return f"liger needs the liger-kernel package, which is not installed ({INSTALL_HINT})"
        arch = preset_arch(row.settings.model)
        if arch is not None and patch_function(arch) is None:
            return f"liger-kernel has no kernels for the '{arch}' architecture of model '{row.settings.model}'"
        return None

    @hookimpl
    def modify_model(self, ctx):
        if ctx.device.type != "cuda":
            raise RowFailed("liger's Triton kernels need a CUDA GPU (this row runs on "
                            f"{ctx.device.type}); drop 'liger' here")
        if not liger_available():
            raise RowFailed(f"liger needs the liger-kernel package ({INSTALL_HINT})")
        model = ctx.unwrapped_model()
        model_type = getattr(model.config, "model_type", "")
        apply = patch_function(model_type)
        if apply is None:
            raise RowFailed(f"liger-kernel has no kernels for model type '{model_type}'")
        o = self.options
        # liger rebinds names of the model class's own module (its RMSNorm and MLP classes,
        # the rotary helper) for the whole process, and may rebind the class's forward.
        touched = [sys.modules[type(model).__module__], type(model)]
        before = [dict(vars(t)) for t in touched]
        flags = dict(rope=o.rope, rms_norm=o.rms_norm, swiglu=o.swiglu,
                     fused_linear_cross_entropy=o.fused_linear_cross_entropy, cross_entropy=False)
        accepted = inspect.signature(apply).parameters
        apply(model=model, **{k: v for k, v in flags.items() if k in accepted})
        for target, saved in zip(touched, before):
            undo_with_row(ctx, target, saved)
        if self.widens_loss_chunks():
            self._widen_loss_chunks(ctx, o.chunk_mem_const)
        ctx.log("liger kernels: " + (", ".join(self.kernels()) or "none"))

    def _widen_loss_chunks(self, ctx, const: int) -> None:
        """Give liger's fused linear cross-entropy a larger chunk budget for this row.

        liger sizes a chunk so that its logits hold about ``chunk_mem_const x tokens x
        hidden`` elements; at 1 (its default) and Qwen's 151,936-token vocabulary a step of
        1.8-2k tokens runs 28-32 chunks of 64 tokens, each reading the whole lm_head weight
        twice (logits, input gradient): small, memory-bound matmuls. The patched causal-LM
        forward calls ``liger_kernel.transformers.functional.liger_fused_linear_cross_entropy``
        through its module at every step, so a partial with the budget bound in takes effect
        there; the row's context puts the original back after the row.
        """
        import functools

        import liger_kernel.transformers.functional as functional

        original = functional.liger_fused_linear_cross_entropy
        if "chunk_mem_const" not in inspect.signature(original).parameters:
            raise RowFailed("this liger-kernel has no chunk_mem_const in liger_fused_linear_cross_entropy; "
                            "leave liger = { chunk_mem_const = 1 } in the row's table or upgrade liger-kernel")
        ctx.patch(functional, "liger_fused_linear_cross_entropy", functools.partial(original, chunk_mem_const=const))

    def widens_loss_chunks(self) -> bool:
        return self.options.fused_linear_cross_entropy and self.options.chunk_mem_const != 1

    def in_layer_kernels(self) -> list[str]:
        return [k for k in IN_LAYER_KERNELS if getattr(self.options, k)]

    def kernels(self) -> list[str]:
        return [k for k in KERNELS if getattr(self.options, k)]

    @hookimpl
    def collect_metrics(self, ctx):
        metrics = {"liger_kernels": self.kernels()}
        if self.widens_loss_chunks():
            metrics["liger_chunk_mem_const"] = self.options.chunk_mem_const
        return metrics
