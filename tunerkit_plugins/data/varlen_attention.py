"""Attention confined to each sample of a flattened row (shared by packing and padding_free).

The flattening collator sends one row of concatenated samples with ``position_ids`` and
the varlen kwargs ``cu_seq_lens_q/k`` and ``max_length_q/k``, and no attention mask.
:func:`install` registers an attention function through transformers'
``AttentionInterface`` that, given those kwargs, runs causal attention per sample with:

1. ``flash_attn.flash_attn_varlen_func`` when the flash-attn package is importable;
2. else ``torch.nn.attention.varlen.varlen_attn`` when this torch has it (its causal
   switch differs between versions and is read from its signature at import time);
3. else scaled-dot-product attention sample by sample (any device, any dtype: the CPU
   path, and the reference the others are checked against).
The first two need a CUDA device and fp16/bf16 tensors; anything else takes the third.

Without varlen kwargs (evaluation batches, generation) the function is plain SDPA with
the usual padding mask, so the model works unchanged outside training. The matching mask
function builds no mask for flattened rows (``attention_mask`` is None there) and the
standard SDPA mask otherwise.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from tunerkit import hookimpl
from tunerkit_plugins._helpers.attention_registry import keep_for_row

NAME = "tunerkit_varlen"
KERNELS = ("auto", "flash_attn", "torch_varlen", "sdpa")


# -- what this machine offers ---------------------------------------------------------------


def _probe_torch_varlen():
    """(varlen_attn, causal kwargs, takes scale, takes enable_gqa), or None on this torch."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:  # torch >= 2.11: causal is a (-1, 0) window
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:  # torch 2.10
        causal = {"is_causal": True}
    else:
        return None
    return varlen_attn, causal, "scale" in params, "enable_gqa" in params


TORCH_VARLEN = _probe_torch_varlen()


def _probe_flash_attn():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


# Probed once at import, not at the first call: the kernel is resolved inside every
# attention call, and under ``compile`` those calls are traced, where an import that fails
# is a graph break, several per compiled decoder layer on a machine without flash-attn.
FLASH_ATTN = _probe_flash_attn()


def resolve_kernel(preference: str, device: torch.device, dtype: torch.dtype) -> str:
    """The kernel a call on ``device``/``dtype`` uses, given the preference (see module doc)."""
    fast_ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if preference == "sdpa" or not fast_ok:
        if preference in ("flash_attn", "torch_varlen"):
            raise RuntimeError(f"the {preference} kernel needs a CUDA device and fp16/bf16 (got {device.type}, {dtype})")
        return "sdpa"
    if preference in ("auto", "flash_attn") and FLASH_ATTN is not None:
        return "flash_attn"
    if preference == "flash_attn":
        raise RuntimeError("kernel 'flash_attn' asked for, but the flash-attn package is not installed")
    if TORCH_VARLEN is not None:
        return "torch_varlen"
    if preference == "torch_varlen":
        raise RuntimeError(f"kernel 'torch_varlen' asked for, but torch {torch.__version__} has no varlen_attn")
    return "sdpa"


def describe_kernel(kernel: str) -> str:
    if kernel == "flash_attn":
        import flash_attn

        return f"varlen: flash_attn {getattr(flash_attn, '__version__', '')}".strip()
    if kernel == "torch_varlen":
        return f"varlen: torch {torch.__version__.split('+')[0]} varlen_attn"
    return "varlen: sdpa per sample"


# -- the kernels: q, k, v are (1, heads, tokens, head_dim) -----------------------------------


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _sdpa_per_sample(q, k, v, cu, scale, dropout, groups):
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    bounds = cu.tolist()
    outs = [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], dropout_p=dropout,
                                           is_causal=True, scale=scale)
            for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    return torch.cat(outs, dim=2).transpose(1, 2)  # (1, tokens, heads, head_dim)


def _flash(q, k, v, cu, max_len, scale, dropout, groups):
    out = FLASH_ATTN(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, max_len, max_len,
             dropout_p=dropout, softmax_scale=scale, causal=True)
    return out.unsqueeze(0)


def _torch_varlen(q, k, v, cu, max_len, scale, dropout, groups):
    varlen_attn, causal, takes_scale, takes_gqa = TORCH_VARLEN
    kwargs = dict(causal)
    if takes_scale:
        kwargs["scale"] = scale
    if groups > 1:
        if takes_gqa:
            kwargs["enable_gqa"] = True
        else:
            k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    out = varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, max_len, max_len,
                      **kwargs)
    return out.unsqueeze(0)


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     preference: str = "auto", **kwargs):
    """A transformers attention function: per-sample causal attention on flattened rows."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"varlen attention expects one flattened row, got a batch of {query.shape[0]}")
    cu = cu.reshape(-1).to(device=query.device, dtype=torch.int32)  # the collator adds a batch dim of 1
    max_len = kwargs.get("max_length_q")
    if max_len is None:  # dropped by callers that keep only tensors
        max_len = int((cu[1:] - cu[:-1]).max())
    groups = query.shape[1] // key.shape[1]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    kernel = resolve_kernel(preference, query.device, query.dtype)
    if kernel == "torch_varlen" and dropout:
        kernel = "sdpa"  # torch's varlen kernel has no dropout
    if kernel == "flash_attn":
        out = _flash(query, key, value, cu, int(max_len), scale, dropout, groups)
    elif kernel == "torch_varlen":
        out = _torch_varlen(query, key, value, cu, int(max_len), scale, dropout, groups)
    else:
        out = _sdpa_per_sample(query, key, value, cu, scale, dropout, groups)
    return out, None


def _make(preference: str):
    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
        return varlen_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                preference=preference, **kwargs)

    attention.__name__ = f"{NAME}_{preference}"
    return attention


def varlen_mask(*args, **kwargs):
    """No mask for flattened rows (the kernels use cu_seq_lens); SDPA's mask for padded batches."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)


def implementation_name(preference: str) -> str:
    return NAME if preference == "auto" else f"{NAME}_{preference}"


def register(preference: str = "auto") -> str:
    """Register the attention and mask functions with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if preference not in KERNELS:
        raise ValueError(f"unknown varlen kernel '{preference}' (known: {', '.join(KERNELS)})")
    name = implementation_name(preference)
    AttentionInterface.register(name, _make(preference))
    AttentionMaskInterface.register(name, varlen_mask)
    return name


def install(model, preference: str = "auto") -> str:
    """Switch ``model`` to varlen attention; returns the implementation it had before."""
    name = register(preference)
    before = model.config._attn_implementation
    _set(model, name)
    if model.config._attn_implementation != name:
        raise RuntimeError(f"{type(model).__name__} does not accept attention functions registered through "
                           "transformers' AttentionInterface, which varlen training needs")
    return before


def restore(model, implementation: str) -> None:
    _set(model, implementation)


def _set(model, implementation: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(implementation)
    else:  # older transformers: the config attribute is what the attention layers read
        model.config._attn_implementation = implementation


# -- the hooks packing and padding_free share ---------------------------------------------------


class FlatBatchHooks:
    """Hooks of a plugin that trains on flattened rows: attention and collator.

    The subclass is a :class:`tunerkit.Plugin` whose options have a ``kernel`` field.
    Only the training split is flattened; evaluation keeps the core's padded batches
    (the attention function is plain SDPA for them).
    """

    _kernel = "sdpa"

    @hookimpl
    def modify_model(self, ctx):
        # The registered function stays registered only for this row; the model gets its
        # own attention back after it (evaluation or export in the same process run plain).
        keep_for_row(ctx)
        previous = install(ctx.model, self.options.kernel)
        ctx.on_teardown(functools.partial(restore, ctx.model, previous), "varlen attention of the model")
        self._kernel = resolve_kernel(self.options.kernel, ctx.device, ctx.dtype)
        ctx.attention_used = describe_kernel(self._kernel)

    @hookimpl
    def make_collator(self, ctx, split):
        if split != "train":
            return None
        from tunerkit.data.collate import FlatteningCollator

        return FlatteningCollator()
