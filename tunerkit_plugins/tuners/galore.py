"""galore: full fine-tuning whose optimizer state lives in a low-rank gradient subspace.

GaLore (Zhao et al. 2024, arXiv:2403.03507) projects the gradient ``G`` (m x n) of every
targeted 2-D weight onto ``r`` singular vectors of a recent gradient (``P^T G``, refreshed by
an SVD every ``update_proj_gap`` steps), runs Adam/Adafactor on the small projected matrix and
projects the update back (``scale * P N``). The weights still all train; only the optimizer
state shrinks from 2·m·n to 2·r·n numbers per matrix. Q-GaLore (Zhang et al. 2024,
arXiv:2407.08296) adds 8-bit optimizer state, projections stored in ``proj_bits`` bits and
lazy refreshes: a layer whose subspace stops moving (mean cosine similarity of the last
``queue_size`` refreshes >= ``cos_threshold``) refreshes ``gamma_proj`` times less often.

Targets: every ``nn.Linear`` except the output head, plus the input embedding when
``with_embedding``; everything else (norms, biases, head, embedding) trains with the same
optimizer at full rank. Implemented on galore-torch (GaLoreAdamW, GaLoreAdamW8bit,
GaLoreAdafactor) and q-galore-torch (QGaLoreAdamW8bit), imported only when a row runs.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from torch import nn

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import MissingPackage, RowFailed
from tunerkit.optimizer import groups_by_decay, make_schedule
from tunerkit_plugins._helpers.optimizer_state import state_gib
from tunerkit_plugins._helpers.per_parameter import PerParameterScheduler, build_per_parameter
from tunerkit_plugins._helpers import estimates


#: galore-torch's class for each ``optimizer`` choice
OPTIMIZER_CLASSES = {"adamw": "GaLoreAdamW", "adamw8bit": "GaLoreAdamW8bit", "adafactor": "GaLoreAdafactor"}


@dataclass
class GaLoreOptions:
    rank: int = option(128, "rank r of the gradient projection (ms-swift's benchmark page: 128, 64, 32)", min=1)
    update_proj_gap: int = option(50, "optimizer steps between two SVD refreshes of the projection (ms-swift's benchmark: 200)", min=1)
    scale: float = option(1.0, "factor on the projected-back update", gt=0)
    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = option(
        "std", "which side is projected: std = the smaller dimension of each matrix")
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = option(
        "adamw", "GaLoreAdamW, GaLoreAdamW8bit (bitsandbytes, GPU only) or GaLoreAdafactor")
    with_embedding: bool = option(False, "also project the input embedding's gradient")
    per_parameter: bool = option(
        False, "one optimizer per parameter, stepped inside backward: whole-model gradients never coexist;"
               " single GPU only, no gradient clipping")
    quantize: bool = option(False, "Q-GaLore (q-galore-torch): 8-bit AdamW state and lazy layer-adaptive refreshes; GPU only")
    proj_quant: bool = option(False, "Q-GaLore: keep the projection matrices in proj_bits bits (needs quantize)")
    proj_bits: int = option(4, "bits of a quantized projection matrix", min=1, max=8)
    proj_group_size: int = option(256, "values sharing one scale in a quantized projection matrix", min=1)
    cos_threshold: float = option(0.4, "Q-GaLore: mean cosine similarity of successive projections above which refreshes slow down", min=-1, max=1)
    gamma_proj: float = option(2.0, "Q-GaLore: factor by which a stable layer's refresh gap grows", min=1)
    queue_size: int = option(5, "Q-GaLore: refreshes averaged for the cosine similarity", min=1)
    svd_driver: Literal["auto", "torch", "gesvd", "gesvdj", "gesvda"] = option(
        "auto", "cuSOLVER method of the projector's SVD on a GPU; auto = gesvda (much faster than torch's "
                "choice on large gradients: docs/tuners/galore.md); torch = torch's own choice")

    def __post_init__(self):
        if self.proj_quant and not self.quantize:
            raise ValueError("proj_quant needs quantize = true (it is a Q-GaLore option)")
        if self.quantize and self.optimizer != "adamw":
            raise ValueError(f"quantize uses Q-GaLore's 8-bit AdamW; optimizer must be 'adamw', got {self.optimizer!r}")
        if self.quantize and self.proj_type != "std":
            raise ValueError(f"q-galore-torch projects only with proj_type 'std', got {self.proj_type!r}")


class SvdDriver:
    """``torch.linalg.svd`` with a chosen cuSOLVER driver for CUDA inputs, while one row runs.

    galore-torch and q-galore-torch refresh every projection with
    ``torch.linalg.svd(grad.float(), full_matrices=False)`` and take no driver argument.
    torch's choice of driver is many times slower on large gradients than gesvda
    (docs/tuners/galore.md has the measurement), and GaLore keeps only the leading ``rank``
    singular vectors, the part an approximate SVD gets right. So the call is routed through
    this wrapper from the optimizer's construction to the end of the row.
    """

    def __init__(self, driver: str):
        self.driver = driver
        self.fallbacks = 0  # SVDs the driver failed on, redone with torch's choice

    def install(self, ctx) -> None:
        """Route ``torch.linalg.svd`` through the driver until the row ends (``ctx.patch``)."""
        import torch

        original, driver = torch.linalg.svd, self.driver

        def svd(A, *args, **kwargs):
            if not A.is_cuda or kwargs.get("driver") is not None:
                return original(A, *args, **kwargs)
            try:
                return original(A, *args, **kwargs, driver=driver)
            except torch.linalg.LinAlgError:
                # gesvda does not converge on some rank-deficient gradients (see
                # docs/tuners/galore.md): torch's own choice takes those.
                self.fallbacks += 1
                return original(A, *args, **kwargs)

        ctx.patch(torch.linalg, "svd", svd)


def amortised_step(step_seconds: list[float], gap: int) -> dict:
    """Step time with the projector refresh spread over the steps it serves.

    galore-torch recomputes each projector (one SVD per projected matrix) at every step whose
    index is a multiple of ``update_proj_gap``, the first step included. A short row times
    mostly the steps between refreshes; the amortised time is one refresh step plus
    ``gap - 1`` steps between refreshes, divided by ``gap``. The refresh step also carries
    the row's first-step costs when it is the first step, so its extra time is an upper bound.
    """
    refresh = [t for i, t in enumerate(step_seconds) if i % gap == 0]
    between = [t for i, t in enumerate(step_seconds) if i % gap != 0]
    if not refresh or not between:
        return {}
    step = float(np.median(between))
    extra = max(float(np.mean(refresh)) - step, 0.0)
    return {"galore_step_s": step, "galore_refresh_step_s": float(np.mean(refresh)),
            "galore_refresh_extra_s": extra, "galore_amortised_step_s": step + extra / gap}


def resolved_svd_driver(options: GaLoreOptions) -> str | None:
    """The cuSOLVER driver a row's SVDs use on a GPU; ``None`` leaves torch's choice."""
    if options.svd_driver == "torch":
        return None
    return "gesvda" if options.svd_driver == "auto" else options.svd_driver


def galore_targets(model: nn.Module, with_embedding: bool) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every trainable matrix whose gradient is projected.

    Every ``nn.Linear`` except the output head; the input embedding when ``with_embedding``
    (a head tied to it then shares the projected weight).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    targets, seen = [], set()
    for name, module in model.named_modules():
        wanted = (isinstance(module, nn.Linear) and module is not head) or (with_embedding and module is embed)
        weight = getattr(module, "weight", None) if wanted else None
        if weight is None or weight.ndim != 2 or not weight.requires_grad or id(weight) in seen:
            continue
        seen.add(id(weight))
        targets.append((f"{name}.weight", weight))
    return targets


# -- the libraries ------------------------------------------------------------------------


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingPackage(module, package)


def _bnb_lost_positional_args() -> bool:
    """True for bitsandbytes releases whose Optimizer2State no longer takes percentile_clipping.

    galore-torch 1.0 and q-galore-torch 1.0 pass ``percentile_clipping, block_wise``
    positionally; those releases read them as ``max_unorm=100, skip_zeros=True``.
    """
    from bitsandbytes.optim.optimizer import Optimizer2State

    return "percentile_clipping" not in inspect.signature(Optimizer2State.__init__).parameters


def _restore_bnb_defaults(optimizer) -> None:
    """Undo the shifted positional arguments: no update-norm clipping, zeros not skipped."""
    if _bnb_lost_positional_args():
        optimizer.args.max_unorm = 0.0
        optimizer.args.skip_zeros = False


def _q_galore_adamw8bit():
    _require("q_galore_torch", "q-galore-torch")
    _require("bitsandbytes", "bitsandbytes")
    from q_galore_torch import QGaLoreAdamW8bit

    if not _bnb_lost_positional_args():
        return QGaLoreAdamW8bit
    from bitsandbytes.optim.optimizer import Optimizer2State

    class QGaLoreAdamW8bitCompat(QGaLoreAdamW8bit):
        """q-galore-torch 1.0's own update_step reads the removed percentile_clipping setting;
        the bitsandbytes update it copied is otherwise the same, so use the current one."""

        def update_step(self, group, p, gindex, pindex, flag_use_float_grad=False):
            if flag_use_float_grad:  # Q-GaLore's int8 weights: not wired here
                raise RowFailed("8-bit weights (float_grad) are not supported by tunerkit's galore")
            Optimizer2State.update_step(self, group, p, gindex, pindex)

    return QGaLoreAdamW8bitCompat


def build_optimizer(options: GaLoreOptions, groups: list[dict], lr: float):
    """The galore-torch / q-galore-torch optimizer for ``groups`` (GaLore keys on projected groups)."""
    if options.quantize:
        opt = _q_galore_adamw8bit()(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
        _restore_bnb_defaults(opt)
        return opt
    _require("galore_torch", "galore-torch")
    if options.optimizer == "adamw":
        from galore_torch import GaLoreAdamW

        # eps as torch's AdamW (the core's optimizer), not galore-torch's 1e-6
        return GaLoreAdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, no_deprecation_warning=True)
    if options.optimizer == "adamw8bit":
        _require("bitsandbytes", "bitsandbytes")
        from galore_torch import GaLoreAdamW8bit

        opt = GaLoreAdamW8bit(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
        _restore_bnb_defaults(opt)
        return opt
    from galore_torch import GaLoreAdafactor

    # a fixed learning rate from the schedule, as ms-swift ran it (no relative steps)
    return GaLoreAdafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def build_per_parameter_optimizer(options: GaLoreOptions, group: list[dict], lr: float):
    """One parameter's optimizer in per-parameter mode.

    A projected matrix gets galore-torch's optimizer. An unprojected one (embedding, head,
    norms) gets torch's AdamW, fused on a GPU: galore-torch's AdamW is a Python loop whose
    ``exp_avg_sq.sqrt()`` and division allocate two parameter-sized temporaries, about 2.3 GiB
    at the 622M-parameter embedding or head of the qwen-7b shape, at the moment the other
    parameters' state already fills memory. The update is the same AdamW (decoupled decay;
    eps added after the bias correction instead of before, a difference far below bf16's step).
    """
    if "rank" in group[0] or options.quantize or options.optimizer != "adamw":
        return build_optimizer(options, group, lr)
    import torch

    return torch.optim.AdamW(group, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=group[0]["params"][0].is_cuda)


def _distributed(row) -> bool:
    return row.settings.gpus > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1


# -- the plugin ---------------------------------------------------------------------------


class GaLore(Plugin):
    name = "galore"
    conformance = {"companions": ["full"]}
    summary = "GaLore / Q-GaLore: full fine-tuning with low-rank projected optimizer state (galore-torch)"
    Options = GaLoreOptions
    requires = ("full",)
    # LISA re-chooses what trains under the optimizer's feet; ZeRO flattens the 2-D weights GaLore projects.
    conflicts = ("lisa", "deepspeed")

    def __init__(self, options=None):
        super().__init__(options)
        self.targets: list[tuple[str, nn.Parameter]] = []
        self.per_parameter = None  # PerParameterOptimizer when options.per_parameter
        self.svd = None  # SvdDriver while a GPU row runs with a chosen driver

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        estimates.projected_state(estimate, shape, self.options.rank, self.options.per_parameter,
                                  row.settings.gradient_accumulation_steps)

    @hookimpl
    def validate(self, row):
        import torch

        o = self.options
        if o.per_parameter and _distributed(row):
            return ("galore per_parameter steps each parameter inside backward, before data-parallel gradients"
                    " are averaged; use gpus = 1 or per_parameter = false")
        if (o.quantize or o.optimizer == "adamw8bit") and not torch.cuda.is_available():
            what = "quantize (Q-GaLore)" if o.quantize else "optimizer 'adamw8bit'"
            return f"galore {what} needs a CUDA GPU: its bitsandbytes step calls torch.cuda.synchronize()"
        needs = [("galore_torch", "galore-torch")]
        if o.quantize:
            needs = [("q_galore_torch", "q-galore-torch"), ("bitsandbytes", "bitsandbytes")]
        elif o.optimizer == "adamw8bit":
            needs.append(("bitsandbytes", "bitsandbytes"))
        for module, package in needs:
            if importlib.util.find_spec(module) is None:
                return f"galore needs the {package} package (pip install {package})"
        return None

    def projection_settings(self) -> dict:
        """The GaLore keys of a projected parameter group, as galore-torch / q-galore-torch read them."""
        o = self.options
        settings = {"rank": o.rank, "update_proj_gap": o.update_proj_gap, "scale": o.scale, "proj_type": o.proj_type}
        if o.quantize:
            settings.update(quant=o.proj_quant, quant_n_bit=o.proj_bits, quant_group_size=o.proj_group_size,
                            cos_threshold=o.cos_threshold, gamma_proj=o.gamma_proj, queue_size=o.queue_size)
        return settings

    @hookimpl
    def param_groups(self, ctx):
        model = ctx.unwrapped_model()
        self.targets = galore_targets(model, self.options.with_embedding)
        projected = {id(p) for _, p in self.targets}
        wd = ctx.settings.weight_decay
        rest = groups_by_decay([(n, p) for n, p in model.named_parameters() if id(p) not in projected], wd)
        groups = [{"params": [p for _, p in self.targets], "weight_decay": wd, **self.projection_settings()}, *rest]
        return [g for g in groups if g["params"]]

    @hookimpl
    def make_optimizer(self, ctx, groups):
        lr = ctx.settings.learning_rate
        driver = resolved_svd_driver(self.options)
        if ctx.device.type == "cuda" and driver is not None:
            self.svd = SvdDriver(driver)
            self.svd.install(ctx)
        if not self.options.per_parameter:
            return build_optimizer(self.options, groups, lr)
        if ctx.world_size > 1:  # validate() refuses gpus > 1; this catches a launch by hand
            raise RowFailed("galore per_parameter cannot run data-parallel: use one process or per_parameter = false")
        if ctx.settings.max_grad_norm > 0:
            ctx.log(f"galore per_parameter: max_grad_norm={ctx.settings.max_grad_norm} is not applied"
                    " (each parameter steps before the whole gradient exists)")
        self.per_parameter = build_per_parameter(groups, lambda g: build_per_parameter_optimizer(self.options, g, lr),
                                                 should_step=lambda: ctx.is_last_micro_step)
        ctx.on_teardown(self.per_parameter.remove_hooks, "galore per-parameter hooks")
        return self.per_parameter

    @hookimpl
    def make_scheduler(self, ctx):
        if self.per_parameter is None:
            return None  # the core's schedule on the one optimizer
        return PerParameterScheduler([make_schedule(ctx, opt) for opt in self.per_parameter.optimizers.values()])

    @hookimpl
    def collect_metrics(self, ctx):
        o = self.options
        optimizer = self.per_parameter if self.per_parameter is not None else ctx.optimizer
        target_params = sum(p.numel() for _, p in self.targets)
        return {
            "galore_rank": o.rank,
            "galore_update_proj_gap": o.update_proj_gap,
            "galore_optimizer": "QGaLoreAdamW8bit" if o.quantize else OPTIMIZER_CLASSES[o.optimizer],
            "galore_per_parameter": o.per_parameter,
            "galore_with_embedding": o.with_embedding,
            "galore_quantize": o.quantize,
            "galore_proj_quant": o.proj_quant,
            "galore_target_matrices": len(self.targets),
            "galore_target_params": target_params,
            "galore_target_params_m": target_params / 1e6,
            "galore_svd_driver": self.svd.driver if self.svd is not None else "torch",
            "galore_svd_fallbacks": self.svd.fallbacks if self.svd is not None else 0,
            "galore_grad_clipping": not o.per_parameter and ctx.settings.max_grad_norm > 0,
            "galore_optimizer_state_gib": state_gib(dict(optimizer.state)) if optimizer is not None else None,
            **amortised_step(ctx.metrics.get("step_seconds") or [], o.update_proj_gap),
        }
