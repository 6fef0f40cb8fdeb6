"""The speed model's host work: the aten operations a micro-batch dispatches, as the estimate
counts them (tunerkit.estimate.LAYER_FORWARD_OPS, the adapters' counts in
tunerkit_plugins/_helpers/estimates.py), against a count of what the row's own model really
dispatches in one forward and backward on the CPU. A host-bound row's speed follows this count
(on one H100 the SmolLM2 rows ran full, LoRA and DoRA at 75, 151 and 249 ms a micro-batch,
about 11.5 us per counted operation each: docs/performance.md)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tunerkit.checkpointing import enable_gradient_checkpointing
from tunerkit.estimate import build_estimate


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def dispatched_ops(ctx) -> int:
    model = ctx.model
    model.train()
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with CountOps() as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.count


ROWS = [
    ("full", {}, False),
    ("full", {}, True),
    ("lora", {"lora": {"targets": "ALL", "dropout": 0.05}}, False),
    ("lora", {"lora": {"targets": "ALL", "dropout": 0.05}}, True),
    ("lora", {"lora": {"targets": "ALL", "dropout": 0.0}}, False),
    ("lora", {"lora": {"targets": "DEFAULT", "dropout": 0.05}}, False),
    ("dora", {"dora": {"targets": "ALL", "dropout": 0.05}}, False),
    ("adapter", {}, False),
    ("llamapro", {"llamapro": {"num_new_blocks": 2}}, False),
    ("adalora", {"adalora": {"targets": "ALL"}}, False),
]


@pytest.mark.parametrize("tuner, tables, checkpointing", ROWS,
                         ids=[f"{t}-{'-'.join(f'{k}={v}' for o in tb.values() for k, v in o.items())}{'-gc' if c else ''}"
                              for t, tb, c in ROWS])
def test_the_estimate_counts_the_operations_a_micro_batch_dispatches(tuner, tables, checkpointing, tiny_row,
                                                                      tiny_context):
    row = tiny_row(tuner, gradient_checkpointing=checkpointing, **tables)
    ctx = tiny_context(row)
    if checkpointing:
        enable_gradient_checkpointing(ctx.model)
    counted = dispatched_ops(ctx)
    est = build_estimate(row, gpu=False)
    predicted = est.host_ops() - est.step_ops / est.micro_batches  # the optimizer step's share apart
    # the estimate counts the decoder layers only; the embedding, head and loss add ~60 operations,
    # a few percent of a real model's thousands but a tenth of the 4-layer test model's
    assert predicted == pytest.approx(counted, rel=0.15), (counted, predicted)


def test_adaloras_rank_allocator_is_counted_once_per_optimizer_step(tiny_row, tiny_context):
    row = tiny_row("adalora", adalora={"targets": "ALL"})
    ctx = tiny_context(row)
    dispatched_ops(ctx)  # gradients for the importance scores
    with CountOps() as counter:
        ctx.model.base_model.update_and_allocate(1)
    assert build_estimate(row, gpu=False).step_ops == pytest.approx(counter.count, rel=0.15)


def test_adapters_and_their_kinds_order_the_host_work():
    """What the H100 measured, in the model's own terms: full < LoRA < DoRA per micro-batch."""
    from tunerkit.testing import make_tiny_row

    ops = {t: build_estimate(make_tiny_row(t, **{t: {"targets": "ALL"}} if t != "full" else {}), gpu=False).host_ops()
           for t in ("full", "lora", "dora")}
    assert ops["full"] < ops["lora"] < ops["dora"]
