"""RunContext: everything one row's hooks share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


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
