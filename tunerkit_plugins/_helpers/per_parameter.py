"""One optimizer per parameter, stepped inside backward (layer-wise updates).

Each trainable parameter gets its own optimizer (and learning-rate schedule). A
post-accumulate-grad hook steps that optimizer as soon as the parameter's gradient of the
last micro-batch is complete, then drops the gradient, so gradients of the whole model never
exist at once: while backward runs through layer ``i``, layers ``i+1..`` have already been
updated and their gradients freed.

The training loop still calls ``optimizer.step()``, ``zero_grad()`` and ``scheduler.step()``
once per optimizer step; here the first two do nothing and the scheduler advances every
per-parameter schedule, so learning rates follow the global step exactly as they would with
one optimizer.

What this costs: gradient clipping over the whole model is impossible (no moment holds all
gradients), and under gradient accumulation the gradients of the earlier micro-batches still
accumulate in ``.grad`` as usual; only the last micro-batch of a window frees them early.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class PerParameterOptimizer:
    """Optimizer-like front for the per-parameter optimizers; the loop's calls are no-ops.

    ``should_step()`` says whether the backward now running is the last micro-batch of its
    accumulation window: only then does a hook step its parameter.
    """

    def __init__(self, optimizers: dict[torch.nn.Parameter, Any], should_step: Callable[[], bool]):
        self.optimizers = optimizers
        self._should_step = should_step
        #: how often each parameter's optimizer stepped (by parameter), for tests and metrics
        self.step_counts: dict[torch.nn.Parameter, int] = {p: 0 for p in optimizers}
        self._handles = [p.register_post_accumulate_grad_hook(self._make_hook(opt))
                         for p, opt in optimizers.items()]

    def _make_hook(self, optimizer):
        def step_now(param: torch.nn.Parameter) -> None:
            if not self._should_step():
                return  # the gradient of this window is not complete yet
            optimizer.step()
            self.step_counts[param] += 1
            param.grad = None  # free it now: the point of stepping inside backward

        return step_now

    # -- what the loop calls ----------------------------------------------------------
    def step(self, closure=None):
        """Nothing to do: every parameter already stepped during backward."""
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do: every gradient was freed right after its step."""

    # -- inspection -------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def state(self) -> dict:
        """All per-parameter states in one mapping, parameter -> state dict."""
        merged: dict = {}
        for opt in self.optimizers.values():
            merged.update(opt.state)
        return merged

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class PerParameterScheduler:
    """Steps every per-parameter learning-rate schedule once per optimizer step."""

    def __init__(self, schedulers: list[Any]):
        self.schedulers = schedulers

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def get_last_lr(self) -> list[float]:
        return [lr for s in self.schedulers for lr in s.get_last_lr()]


def build_per_parameter(groups: list[dict], make_optimizer: Callable[[list[dict]], Any],
                        should_step: Callable[[], bool]) -> PerParameterOptimizer:
    """Split ``groups`` into one single-parameter group per parameter, keeping each group's settings."""
    optimizers = {}
    for group in groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            optimizers[p] = make_optimizer([{"params": [p], **settings}])
    return PerParameterOptimizer(optimizers, should_step)
