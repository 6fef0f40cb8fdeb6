"""compile: regional ``torch.compile`` of every decoder layer.

Compiling each repeated block (``layer.compile()``) instead of the whole model is
PyTorch's "regional compilation" recipe: the decoder layers share one code object, so
one compiled graph serves all of them and cold start costs one layer, not the model.
The loss head, the embedding and the optimizer stay eager, so kernel patches (liger's
fused cross-entropy) and the loop's hooks are untouched.

Varying lengths: with ``dynamic = true`` the layers are compiled with symbolic shapes from
the start (parameters stay static), so padding-free and packed batches whose token counts
change every step reuse one graph. Duck shaping is off while a row trains: a row exactly as
long as the hidden size would otherwise share its symbol, be specialised with it by the
weights, and recompile at the next length.

Gradient checkpointing keeps working: the recompute runs the same compiled code. Where
transformers puts the checkpoint call decides what ``layer.compile()`` covers. Outside
``_call_impl`` (in the layer's ``__call__``), the layer body is compiled and the checkpoint
call, with what ``offload`` or ``selective_checkpointing`` wrapped around it, stays eager.
Inside ``forward`` (a ``forward_with_checkpointing`` wrapper), those wrappers would land in
the compiled region, where dynamo cannot trace ``saved_tensors_hooks``; for those layers
the plugin compiles the wrapped original ``forward`` and hands it to the checkpoint call
instead, so the compiled region is the same layer body either way. docs/performance.md
says which transformers versions do which, and what was measured.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed

from tunerkit_plugins._helpers.layers import decoder_layers, wrap_checkpoint_calls
from tunerkit_plugins._helpers import estimates

#: Compiled graphs one code object may keep. Decoder layers share their code; some torch
#: versions still guard per layer, and the default (8) would drop the rest to eager.
RECOMPILE_LIMIT = 64


@dataclass
class CompileOptions:
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = option(
        "default", "torch.compile mode")
    dynamic: bool = option(True, "symbolic sequence lengths: varlen batches reuse one graph instead of recompiling")
    backend: str = option("inductor", "torch.compile backend (inductor; aot_eager or eager to debug)")
    fullgraph: bool = option(False, "fail instead of falling back to eager at a graph break")
    cpp_wrapper: bool = option(
        False, "inductor writes the code that launches a compiled graph's kernels in C++ instead of Python "
               "(less host time per layer call; compiling takes longer)", added_later=True)
    skip_guard_eval: bool = option(
        False, "after the row's warm-up steps, check only the guards that tell the layers' compiled graphs apart "
               "(torch.compiler.set_stance(skip_guard_eval_unsafe=True)): less host time per layer call, "
               "wrong if something the skipped guards check changes later", added_later=True)


def checkpointed_inside_forward(layer: torch.nn.Module):
    """The original ``forward`` when this transformers version checkpoints inside the layer's
    ``forward`` (its class's forward is a ``functools.wraps`` wrapper of it), else ``None``."""
    forward = type(layer).forward
    original = getattr(forward, "__wrapped__", None)
    # functools.wraps copies the names, not the code: the wrapper's own code says what it is
    code = getattr(forward, "__code__", None)
    if original is not None and code is not None and code.co_name == "forward_with_checkpointing":
        return original
    return None


def compiling_checkpoint(original_forward, compiled_forward):
    """A wrap for the layer's checkpoint call: the ``partial(forward, layer, **kwargs)`` it is
    given runs through ``compiled_forward``; anything else passes through unchanged."""

    def wrap(checkpoint):
        def call(function, *args, **kwargs):
            if isinstance(function, functools.partial) and function.func is original_forward:
                function = functools.partial(compiled_forward, *function.args, **function.keywords)
            return checkpoint(function, *args, **kwargs)

        return call

    return wrap


def dynamo_counts() -> dict:
    """Dynamo's process-wide counters that say whether compiled layers really run as one
    graph: frames it compiled, graphs it captured, graph breaks and their reasons."""
    from torch._dynamo.utils import counters, guard_failures

    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "breaks": dict(counters["graph_break"]),
            "guard_failures": {code: len(reasons) for code, reasons in guard_failures.items()}}


def recompile_reasons(before: dict, limit: int = 5) -> list[str]:
    """The guards that failed since ``before`` (each failure made dynamo compile the code
    again), one line each without dynamo's cache-entry prefix: a compiled row that
    recompiles every step (a new length with ``dynamic = false``, a changing Python value
    read in the layer) is slow for a reason these lines name."""
    import re

    from torch._dynamo.utils import guard_failures

    seen: dict[str, None] = {}
    for code, reasons in list(guard_failures.items()):
        for reason in reasons[before.get(code, 0):]:
            line = re.sub(r"^\d+/\d+:\s*", "", str(reason).strip().splitlines()[0])
            seen.setdefault(" ".join(line.split("#")[0].split())[:120])
    return list(seen)[:limit]


def shape_config():
    """torch's symbolic-shape settings (``use_duck_shape``), a module of ``torch.fx.experimental``."""
    import torch.fx.experimental._config

    return torch.fx.experimental._config


def _limit_name() -> str:
    config = torch._dynamo.config
    return "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"


class Compile(Plugin):
    name = "compile"
    conformance = {"companions": ["lora"],
                   "skip": "inductor compiles every layer for minutes on a CPU; tests/plugins/test_compile.py covers it"}
    summary = "regional torch.compile of each decoder layer (symbolic lengths for varlen batches)"
    Options = CompileOptions
    #: the fast mode (speed = "max"): compiled decoder layers
    fast_switch = {}
    fast_order = 20

    def __init__(self, options=None):
        super().__init__(options)
        self.layers: list[torch.nn.Module] = []
        self.counts_before: dict | None = None
        self.placement = "layer"  # what was compiled: the layer call, or the forward its checkpoint runs
        self.guards_skipped = False

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        # fewer kernel launches: the host cost of a micro-batch shrinks (batch-1 rows wait on it)
        estimate.host_op_factor *= 0.5

    @hookimpl
    def on_train_begin(self, ctx):
        # After every wrap (PEFT) and gradient checkpointing: compilation is lazy, the first
        # step traces the final layer, adapters included.
        layers = decoder_layers(ctx.unwrapped_model())
        if not layers:
            raise RowFailed("compile found no decoder layer to compile")
        o = self.options
        import torch._dynamo

        # Undone last: forget this row's graphs, they hold its model's modules and would only miss later.
        ctx.on_teardown(torch._dynamo.reset, "torch._dynamo.reset")
        name = _limit_name()
        ctx.patch(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), RECOMPILE_LIMIT))
        if o.dynamic:  # read when each frame's shape environment is made, i.e. during training
            ctx.patch(shape_config(), "use_duck_shape", False)
        if o.cpp_wrapper:  # read when inductor compiles, i.e. during the row's first steps
            import torch._inductor.config as inductor_config

            ctx.patch(inductor_config, "cpp_wrapper", True)
        mode = None if o.mode == "default" else o.mode
        self.counts_before = dynamo_counts()
        settings = dict(backend=o.backend, mode=mode, dynamic=o.dynamic, fullgraph=o.fullgraph)
        compiled = {}  # one compiled function per original forward (per layer class): the layers share its graphs
        for layer in layers:
            original = checkpointed_inside_forward(layer)
            if original is None or not getattr(layer, "gradient_checkpointing", False):
                layer.compile(**settings)
                continue
            if original not in compiled:
                compiled[original] = torch.compile(original, **settings)
            wrap_checkpoint_calls([layer], compiling_checkpoint(original, compiled[original]), ctx)
            self.placement = "checkpointed forward"
        self.layers = layers
        ctx.log(f"compiled {len(layers)} decoder layers ({o.backend}, mode {o.mode}, dynamic {o.dynamic}; "
                f"{self.placement})")

    @hookimpl
    def on_step_begin(self, ctx):
        # The warm-up steps compile every graph the row needs (forward, recompute, backward,
        # each length class); from then on a layer call's guards only pick among them. The
        # skipped guards are the ones every cached graph passed at least once.
        warmup = max(ctx.settings.timing_warmup_steps, 1)
        if self.options.skip_guard_eval and not self.guards_skipped and ctx.global_step >= warmup:
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
            ctx.on_teardown(functools.partial(torch.compiler.set_stance, "default", skip_guard_eval_unsafe=False),
                            "torch.compiler.set_stance")
            self.guards_skipped = True
            ctx.metrics["compile_guards_skipped_from_step"] = ctx.global_step + 1

    @hookimpl
    def collect_metrics(self, ctx):
        metrics = {"compiled_layers": len(self.layers), "compile_placement": self.placement}
        if self.counts_before is not None:
            # Graph breaks split a layer into several graphs with eager Python between them
            # (and a sync where a break reads a tensor's value): the first thing to look at
            # when a compiled row is slower than expected.
            now, before = dynamo_counts(), self.counts_before
            breaks = {r: n - before["breaks"].get(r, 0) for r, n in now["breaks"].items()}
            breaks = {r: n for r, n in breaks.items() if n > 0}
            metrics.update(compile_frames=now["frames"] - before["frames"],
                           compile_graphs=now["graphs"] - before["graphs"],
                           compile_graph_breaks=sum(breaks.values()),
                           compile_graph_break_reasons=sorted({r.strip().splitlines()[0][:120] for r in breaks}),
                           compile_recompile_reasons=recompile_reasons(before["guard_failures"]))
        return metrics
