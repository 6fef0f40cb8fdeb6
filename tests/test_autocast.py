"""autocast: the forward runs in 16-bit under torch.autocast while fp32 weights (PEFT's
adapters) stay fp32 masters; autograd then keeps 16-bit copies of the adapters' inputs."""

from __future__ import annotations

import torch

from tunerkit import hookimpl


class WatchAdapters:
    """Records the dtype of every LoRA A output and the bytes autograd saves in training forwards."""

    def __init__(self):
        self.output_dtypes: set[torch.dtype] = set()
        self.saved_bytes: list[int] = []
        self.handles = []
        self.weights = []

    @hookimpl
    def on_train_begin(self, ctx):
        for name, module in ctx.unwrapped_model().named_modules():
            if name.endswith("lora_A.default"):
                self.weights.append(module.weight)
                self.handles.append(module.register_forward_hook(self.seen))

    def seen(self, module, args, out):
        self.output_dtypes.add(out.dtype)

    @hookimpl
    def compute_loss(self, ctx, model, batch):
        counted = [0]

        def pack(t):
            counted[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**batch).loss
        self.saved_bytes.append(counted[0])
        return loss

    @hookimpl
    def teardown(self, ctx):
        for h in self.handles:
            h.remove()


def train(tiny_row, tmp_path, name, **settings):
    from tunerkit.loop import run_row

    watch = WatchAdapters()
    row = tiny_row("lora", name=name, max_steps=3, lora={"rank": 4, "dropout": 0.0}, **{"dtype": "bf16", **settings})
    metrics = run_row(row, tmp_path / name, extra_plugins=[watch])
    return metrics, watch


def test_autocast_runs_the_adapters_in_bf16_on_fp32_masters_and_saves_fewer_bytes(tiny_row, tmp_path):
    plain, seen_plain = train(tiny_row, tmp_path, "plain")
    auto, seen_auto = train(tiny_row, tmp_path, "autocast", autocast=True)

    # PEFT upcasts the adapters of a bf16 model to fp32 and runs them in fp32 ...
    assert seen_plain.output_dtypes == {torch.float32}
    # ... autocast runs the same fp32 weights' matmuls in bf16
    assert seen_auto.output_dtypes == {torch.bfloat16}
    assert seen_auto.weights and all(w.dtype == torch.float32 for w in seen_auto.weights)
    assert auto["autocast"] == "bfloat16" and "autocast" not in plain

    # the adapters' saved inputs are bf16 instead of fp32 copies: fewer bytes kept per forward
    assert seen_auto.saved_bytes[0] < seen_plain.saved_bytes[0]

    # the same training to bf16 precision, and the eval loss too (evaluated under autocast)
    for a, b in zip(plain["train_loss_curve"], auto["train_loss_curve"]):
        assert abs(a - b) / abs(a) < 2e-2, (plain["train_loss_curve"], auto["train_loss_curve"])
    assert abs(plain["eval_loss"] - auto["eval_loss"]) / plain["eval_loss"] < 2e-2


def test_autocast_trains_the_fp32_masters(tiny_row, tmp_path):
    """Gradients reach the fp32 weights through autocast's casts, and the optimizer moves them."""
    from tunerkit.loop import run_row

    class Snapshot:
        before = after = None

        @hookimpl
        def on_train_begin(self, ctx):
            self.params = [p for p in ctx.unwrapped_model().parameters() if p.requires_grad]
            self.before = [p.detach().clone() for p in self.params]

        @hookimpl
        def on_step_end(self, ctx):
            if self.after is None:
                self.grad_dtypes = {p.grad.dtype for p in self.params if p.grad is not None}
                self.after = [p.detach().clone() for p in self.params]

    snap = Snapshot()
    row = tiny_row("lora", dtype="bf16", max_steps=1, evaluate=[], autocast=True)
    run_row(row, tmp_path / "r", extra_plugins=[snap])
    assert snap.grad_dtypes == {torch.float32}
    assert any(not torch.equal(a, b) for a, b in zip(snap.before, snap.after))


def test_autocast_on_fp32_weights_computes_in_bf16(tiny_row, tmp_path):
    """fp32 weights (dtype auto on a CPU): classic mixed precision, bf16 compute on fp32 weights."""
    metrics, watch = train(tiny_row, tmp_path, "fp32", autocast=True, dtype="fp32")
    assert metrics["autocast"] == "bfloat16"
    assert watch.output_dtypes == {torch.bfloat16}


def test_autocast_off_leaves_a_rows_identity_as_it_was(tiny_row):
    row = tiny_row("lora", max_steps=1)
    assert "autocast" not in row.config()["settings"]
    assert tiny_row("lora", max_steps=1, autocast=True).config_hash() != row.config_hash()
