"""The fast mode: ``speed = "max"`` gives a row every speed switch it can take.

A plugin offers itself as a switch through class metadata, so this module names none:

    fast_switch: ClassVar[dict | None]  # the options it joins a fast row with (None: not a switch)
    fast_order: ClassVar[int]           # switches are tried in this order (later ones see earlier ones)

For each switch the row does not list already, in ``fast_order``: the plugin joins unless
its declared conflicts refuse the combination or its ``validate`` hook refuses the row
(e.g. no CUDA device); each refusal is kept with its one-line reason in ``row.fast_mode``,
which the row's recorded config carries. On a machine with CUDA the row also runs under
``autocast`` (fp32 adapter matmuls in bf16).

With ``memory_budget_gib`` the row's prediction (:mod:`tunerkit.estimate`) must fit: of the
variants tried (checkpointing as written; none, with the switches chosen again) the one
predicted fastest inside the budget is kept, and the choice is recorded beside the refusals.
"""

from __future__ import annotations

import torch

from tunerkit.errors import UserError


def switches() -> list[tuple[str, type]]:
    from tunerkit.plugins import registry

    found = [(name, cls) for name, cls in registry().items()
             if getattr(cls, "fast_switch", None) is not None and not getattr(cls, "load_error", None)]
    return sorted(found, key=lambda item: (getattr(item[1], "fast_order", 100), item[0]))


def refusal(row, name: str, cls) -> str | None:
    """Why ``row`` cannot take the switch ``name`` (its conflicts, then its validate hook), or None."""
    from tunerkit.plugins import check_combination

    try:
        check_combination([*row.plugins, name])
    except UserError as err:
        return str(err).splitlines()[0]
    plugin = cls(cls.Options(**cls.fast_switch))
    check = getattr(plugin, "validate", None)
    if check is None:
        return None
    trial = _with(row, name, plugin.options)
    return check(trial)


def _with(row, name: str, options):
    from dataclasses import replace

    return replace(row, plugins=[*row.plugins, name], options={**row.options, name: options})


def add_switches(row):
    """``row`` with every switch it can take, and ``row.fast_mode`` saying what joined and what not."""
    from dataclasses import replace

    added, refused = [], {}
    for name, cls in switches():
        if name in row.plugins:
            continue
        reason = refusal(row, name, cls)
        if reason:
            refused[name] = reason
            continue
        row = _with(row, name, cls.Options(**cls.fast_switch))
        added.append(name)
    if torch.cuda.is_available():
        row = replace(row, settings=replace(row.settings, autocast=True))
        added.append("autocast")
    else:
        refused["autocast"] = "no CUDA device: autocast's bf16 matmuls speed up fp32 adapters on a GPU only"
    row.fast_mode = {"added": added, "refused": refused}
    return row


def apply_fast_mode(row):
    """``row`` with every switch it can take when it asks for speed = "max"; else ``row`` itself."""
    if row.settings.speed != "max" or row.pending is not None:
        return row
    fast = add_switches(row)
    if row.settings.memory_budget_gib is None:
        return fast
    return fit_budget(fast, row)


def fit_budget(fast, row):
    """Of the fast row and its variant without gradient checkpointing (switches chosen again,
    since some need checkpointing), the one predicted fastest under ``memory_budget_gib``."""
    from dataclasses import replace

    from tunerkit.estimate import device_tflops, estimate_row, local_host_op_us

    budget = row.settings.memory_budget_gib
    # one rate and one host speed for every variant: each is timed on this machine, and two
    # timings would let noise pick the variant
    tflops = device_tflops()[1]
    host = local_host_op_us()
    variants = [("checkpointing as written", fast)]
    if row.settings.gradient_checkpointing and not row.settings.uncheckpointed_layers:
        plain = replace(row, settings=replace(row.settings, gradient_checkpointing=False))
        variants.append(("no checkpointing", add_switches(plain)))
    best = None
    for label, candidate in variants:
        try:
            pred = estimate_row(candidate, tflops, host_op_us=host)
        except Exception as err:  # noqa: BLE001 - a model the estimator cannot read keeps the row as resolved
            fast.fast_mode["budget"] = f"not checked: {type(err).__name__}: {err}"
            return fast
        if pred["peak_alloc_gib"] <= budget and (best is None or pred["tokens_per_s"] > best[2]["tokens_per_s"]):
            best = (label, candidate, pred)
    if best is None:
        fast.fast_mode["budget"] = f"no variant is predicted under {budget:g} GiB; kept as resolved"
        return fast
    label, chosen, pred = best
    chosen.fast_mode["budget"] = (f"{label}: predicted {pred['peak_alloc_gib']:.1f} GiB <= {budget:g} GiB, "
                                  f"{pred['tokens_per_s']:,.0f} tokens/s")
    return chosen
