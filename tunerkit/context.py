"""RunContext: everything one row's hooks share, and the undo list of its process-wide changes."""

from __future__ import annotations

import types
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_MISSING = object()


@dataclass
class RunContext:
    row: Any  # tunerkit.recipe.Row
    hook: Any  # pluggy hook relay of this row's PluginManager: ctx.hook.evaluate(ctx=ctx)
    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    accelerator: Any = None
    model_source: Any = None  # tunerkit.models.loading.ModelSource
    model: Any = None
    tokenizer: Any = None
    datasets: dict[str, Any] = field(default_factory=dict)  # "train"/"eval" -> tokenized dataset
    collators: dict[str, Any] = field(default_factory=dict)
    optimizer: Any = None
    scheduler: Any = None
    #: optimizer steps done so far, and the planned total (what schedulers and AdaLoRA need)
    global_step: int = 0
    total_steps: int = 0
    #: index of the micro-batch inside the current accumulation window, and the window's size
    micro_step: int = 0
    window_size: int = 1
    #: label tokens in the current accumulation window, summed over processes
    window_label_tokens: int = 1
    #: metrics merged into the row's record (plugins may add keys directly)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: free space for plugins, keyed by plugin name by convention
    state: dict[str, Any] = field(default_factory=dict)
    #: what the attention choice resolved to ("sdpa (torch's fused kernels; ...)", ...)
    attention_used: str = ""
    #: (who, undo) for every change made through patch/patch_item/on_teardown, oldest first
    _undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list, repr=False)

    @property
    def settings(self):
        return self.row.settings

    def options(self, plugin: str):
        return self.row.options.get(plugin)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def is_last_micro_step(self) -> bool:
        return self.micro_step == self.window_size - 1

    def unwrapped_model(self):
        if self.accelerator is not None:
            return self.accelerator.unwrap_model(self.model)
        return self.model

    def log(self, message: str) -> None:
        if self.is_main_process:
            print(f"tunerkit [{self.row.name}] {message}", flush=True)

    # -- changes that outlive the row unless undone ---------------------------------
    def patch(self, obj: Any, attr: str, value: Any) -> Any:
        """Set ``obj.attr = value`` for this row; the loop puts the old value back (or deletes
        the attribute where there was none) after the row, whether it succeeded or not.
        Returns the old value (None where there was none)."""
        old = getattr(obj, attr, _MISSING)
        # An attribute an instance or class only inherits is deleted again, not copied onto it.
        # Modules (torch's config modules included) always get their old value back.
        inherited = (old is not _MISSING and not isinstance(obj, types.ModuleType)
                     and isinstance(getattr(obj, "__dict__", None), (dict, types.MappingProxyType))
                     and attr not in vars(obj))

        def undo():
            if old is _MISSING or inherited:
                if attr in getattr(obj, "__dict__", {}) or (old is _MISSING and hasattr(obj, attr)):
                    delattr(obj, attr)
            else:
                setattr(obj, attr, old)

        setattr(obj, attr, value)
        self._undo.append((f"{getattr(obj, '__name__', type(obj).__name__)}.{attr}", undo))
        return None if old is _MISSING else old

    def patch_item(self, mapping: MutableMapping, key: Any, value: Any) -> Any:
        """``mapping[key] = value`` for this row (a registry such as transformers' attention
        functions); after it, the old value comes back or the key goes again."""
        missing = key not in mapping
        old = mapping.get(key)

        def undo():
            if missing:
                mapping.pop(key, None)
            else:
                mapping[key] = old

        mapping[key] = value
        self._undo.append((f"[{key!r}]", undo))
        return old

    def on_teardown(self, fn: Callable[[], None], name: str | None = None) -> None:
        """Call ``fn()`` after the row (with the patches, newest first)."""
        self._undo.append((name or getattr(fn, "__qualname__", repr(fn)), fn))

    def undo_changes(self) -> list[str]:
        """Undo every change of this row, newest first, each on its own: one undo that raises
        does not keep the others from running. Returns one line per undo that failed."""
        errors = []
        while self._undo:
            name, undo = self._undo.pop()
            try:
                undo()
            except Exception as err:  # the remaining undos must still run
                errors.append(f"{name}: {type(err).__name__}: {err}")
        return errors

    def close(self) -> list[str]:
        """The end of every row: each plugin's ``teardown`` hook, then :meth:`undo_changes`.

        Called hook by hook rather than through pluggy, which stops at the first hook that
        raises and would leave the other plugins' changes in place. Returns one line per
        failure."""
        errors = []
        for impl in reversed(self.hook.teardown.get_hookimpls()):  # pluggy's order: newest first
            try:
                impl.function(*[{"ctx": self}[arg] for arg in impl.argnames])
            except Exception as err:  # every other plugin must still tear down
                errors.append(f"plugin '{impl.plugin_name}' teardown: {type(err).__name__}: {err}")
        return errors + self.undo_changes()
