"""transformers' attention registries, as they were before a row, back after it.

Attention and mask functions are looked up by name in process-wide registries
(``AttentionInterface`` / ``AttentionMaskInterface``: a class-level mapping that
``register`` fills, and the module-level ``ALL_ATTENTION_FUNCTIONS`` instance's own
mapping that item assignment fills). A plugin that registers a function, or starts an
engine that replaces one (DeepSpeed's Ulysses), keeps the registries for its row with
:func:`keep_for_row`; the row's context puts every entry back after the row.
"""

from __future__ import annotations

import functools


def registries() -> list[dict]:
    """The mappings a name-to-attention-function lookup reads, global and per instance."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return [AttentionInterface._global_mapping, ALL_ATTENTION_FUNCTIONS._local_mapping,
            AttentionMaskInterface._global_mapping, ALL_MASK_ATTENTION_FUNCTIONS._local_mapping]


def _put_back(mapping: dict, saved: dict) -> None:
    mapping.clear()
    mapping.update(saved)


def keep_for_row(ctx) -> None:
    """Every attention and mask registry as it is now, restored after the row."""
    for mapping in registries():
        ctx.on_teardown(functools.partial(_put_back, mapping, dict(mapping)), "transformers attention registry")
