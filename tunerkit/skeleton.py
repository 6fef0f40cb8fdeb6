"""A row's model built on PyTorch's meta device: its modules and config, no weights, no memory.

What ``validate_model`` hooks look at while a recipe is checked (module names, layer count),
so a target that matches nothing fails at ``--check``. ``None`` where the config cannot be
read without a download or a conversion (a hub id offline, the bundled model not yet
converted): those rows are checked when they load.
"""

from __future__ import annotations

import functools

from tunerkit.models.loading import SMOLLM2, cache_dir, resolve_model


def model_skeleton(row):
    """The row's ``PreTrainedModel`` with every parameter on the meta device, or ``None``."""
    return _skeleton(row.settings.model)


@functools.lru_cache(maxsize=8)
def _skeleton(spec: str):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model(spec)
    try:
        if source.preset is not None:
            config = source.preset.config()
        else:
            path = {"local": source.path, "bundled": cache_dir() / "models" / SMOLLM2}.get(source.kind, source.spec)
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError):  # not on this machine: nothing to look at yet
        return None
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)
