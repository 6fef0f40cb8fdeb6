"""galore: projected updates of the configured rank, projector refreshes, per-parameter stepping."""

from __future__ import annotations

import pytest
import torch

from tunerkit.errors import UserError

pytest.importorskip("galore_torch")

VOCAB = 49152  # tiny-llama


def token_batch(seed: int, rows: int = 2, length: int = 12) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (rows, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def tuned(tiny_row, tiny_context, steps: int, **galore):
    """A tiny galore context with its optimizer and scheduler built through the hooks."""
    from accelerate import Accelerator

    row = tiny_row("full", "galore", galore=galore, max_steps=steps, weight_decay=0.0, max_grad_norm=0.0)
    ctx = tiny_context(row)
    ctx.accelerator = Accelerator(cpu=True)
    ctx.total_steps = steps
    ctx.optimizer = ctx.hook.make_optimizer(ctx=ctx, groups=ctx.hook.param_groups(ctx=ctx))
    ctx.scheduler = ctx.hook.make_scheduler(ctx=ctx)
    return ctx


def run_steps(ctx, windows) -> None:
    """One real loop step (tunerkit.loop.train_step) per window of micro-batches."""
    from tunerkit.loop import train_step

    for window in windows:
        train_step(ctx, [dict(b) for b in window])
        ctx.global_step += 1


def numeric_rank(matrix: torch.Tensor) -> int:
    s = torch.linalg.svdvals(matrix.double())
    return int((s > 1e-4 * s[0]).sum())


def test_targets_every_linear_but_the_head(tiny_row, tiny_context):
    ctx = tuned(tiny_row, tiny_context, steps=1, rank=4)
    groups = ctx.optimizer.param_groups
    projected = [g for g in groups if "rank" in g]
    assert len(projected) == 1
    g = projected[0]
    assert (g["rank"], g["update_proj_gap"], g["scale"], g["proj_type"]) == (4, 50, 1.0, "std")
    model = ctx.model
    linears = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert len(linears) == 4 * 7  # q, k, v, o, gate, up, down in each of 4 layers
    assert {id(p) for p in g["params"]} == {id(p) for p in linears}
    assert all(p is not model.lm_head.weight and p is not model.model.embed_tokens.weight for p in g["params"])
    # every other trainable parameter sits in a plain group, exactly once
    plain = [p for gr in groups if "rank" not in gr for p in gr["params"]]
    assert {id(p) for p in plain} | {id(p) for p in linears} == {id(p) for p in model.parameters()}
    assert len(plain) + len(linears) == len(list(model.parameters()))


def test_with_embedding_projects_the_embedding(tiny_row, tiny_context):
    ctx = tuned(tiny_row, tiny_context, steps=1, rank=4, with_embedding=True)
    projected = next(g for g in ctx.optimizer.param_groups if "rank" in g)["params"]
    assert any(p is ctx.model.model.embed_tokens.weight for p in projected)
    assert not any(p is ctx.model.lm_head.weight for p in projected)


def test_update_has_the_configured_rank_and_projector_refreshes_every_gap(tiny_row, tiny_context):
    ctx = tuned(tiny_row, tiny_context, steps=5, rank=4, update_proj_gap=2)
    up = ctx.model.model.layers[1].mlp.up_proj.weight  # 128 x 64
    head = ctx.model.lm_head.weight  # not projected: full-rank update
    projectors, ranks = [], []
    for step in range(5):
        before, head_before = up.detach().clone(), head.detach().clone()
        run_steps(ctx, [[token_batch(step)]])
        ranks.append(numeric_rank(up.detach() - before))
        projectors.append(ctx.optimizer.state[up]["projector"].ortho_matrix)
        if step == 0:
            assert numeric_rank(head.detach() - head_before) > 16  # an unprojected update is not low-rank
    assert ranks == [4] * 5
    assert min(projectors[0].shape) == 4
    # projected at optimizer steps 0..4: a fresh SVD at 0, 2, 4, the same matrix in between
    assert projectors[1] is projectors[0]
    assert projectors[2] is not projectors[1] and not torch.equal(projectors[2], projectors[1])
    assert projectors[3] is projectors[2]
    assert projectors[4] is not projectors[3]


def test_per_parameter_steps_each_parameter_once_per_optimizer_step(tiny_row, tiny_context):
    ctx = tuned(tiny_row, tiny_context, steps=3, rank=4, per_parameter=True)
    front = ctx.optimizer
    trainable = [p for p in ctx.model.parameters() if p.requires_grad]
    assert set(front.optimizers) == set(trainable)
    # two micro-batches per optimizer step: each parameter must step once per window, not per micro-batch
    run_steps(ctx, [[token_batch(2 * i), token_batch(2 * i + 1)] for i in range(3)])
    assert set(front.step_counts.values()) == {3}
    state = front.state
    assert all(state[p]["step"] == 3 for p in trainable)
    assert all(p.grad is None for p in trainable)  # freed right after each step
    # the loop's scheduler advanced every per-parameter schedule once per step
    assert all(s.last_epoch == 3 for s in ctx.scheduler.schedulers)


def test_per_parameter_never_holds_the_whole_gradient(tiny_row, tiny_context):
    ctx = tuned(tiny_row, tiny_context, steps=1, rank=4, per_parameter=True)
    front = ctx.optimizer
    params = list(front.optimizers)
    live = []
    original = front._should_step

    def watching():
        live.append(sum(p.grad is not None for p in params))
        return original()

    front._should_step = watching
    run_steps(ctx, [[token_batch(0)]])
    assert len(live) == len(params)
    assert max(live) == 1  # only the parameter being stepped has a gradient


def test_per_parameter_matches_one_optimizer(tiny_row, tiny_context, monkeypatch):
    """The per-parameter machinery (hooks, stepping inside backward, schedules) gives the grouped
    optimizer's result; here every parameter keeps galore-torch's optimizer, so only the machinery differs."""
    import tunerkit_plugins.tuners.galore as galore

    monkeypatch.setattr(galore, "build_per_parameter_optimizer", galore.build_optimizer)
    windows = [[token_batch(10 + 2 * i), token_batch(11 + 2 * i)] for i in range(3)]
    results = []
    for per_parameter in (False, True):
        ctx = tuned(tiny_row, tiny_context, steps=3, rank=4, update_proj_gap=2, per_parameter=per_parameter)
        start = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
        run_steps(ctx, windows)
        results.append({n: p.detach().clone() for n, p in ctx.model.named_parameters()})
    grouped, layerwise = results
    moved = max((grouped[n] - start[n]).abs().max().item() for n in grouped)
    assert moved > 1e-3  # the comparison below is not between untouched weights
    worst = max((grouped[n] - layerwise[n]).abs().max().item() for n in grouped)
    assert worst < 1e-5


def test_per_parameter_unprojected_parameters_take_torch_adamw_with_the_same_update(tiny_row, tiny_context):
    """Embedding, head and norms step with torch's AdamW in per-parameter mode (fused on a GPU:
    no parameter-sized temporaries); its update is galore-torch's AdamW but for where eps enters."""
    from galore_torch import GaLoreAdamW

    ctx = tuned(tiny_row, tiny_context, steps=2, rank=4, per_parameter=True)
    kinds = {type(o).__name__ for p, o in ctx.optimizer.optimizers.items() if p.ndim < 2 or p.shape[0] == VOCAB}
    assert kinds == {"AdamW"} and all(type(o).__module__.startswith("torch.optim")
                                      for p, o in ctx.optimizer.optimizers.items() if p.ndim < 2)
    projected = [o for p, o in ctx.optimizer.optimizers.items() if "rank" in o.param_groups[0]]
    assert projected and all(isinstance(o, GaLoreAdamW) for o in projected)
    assert not ctx.close()

    torch.manual_seed(0)
    theirs = torch.nn.Parameter(torch.randn(64, 8))
    ours = torch.nn.Parameter(theirs.detach().clone())
    start = theirs.detach().clone()
    a = GaLoreAdamW([{"params": [theirs], "weight_decay": 0.01}], lr=1e-3, eps=1e-8, no_deprecation_warning=True)
    from tunerkit_plugins.tuners.galore import GaLoreOptions, build_per_parameter_optimizer

    b = build_per_parameter_optimizer(GaLoreOptions(), [{"params": [ours], "weight_decay": 0.01}], lr=1e-3)
    for _ in range(3):
        # gradients far above eps (magnitudes 1e-2..3e-2): where eps enters does not show
        grad = (torch.rand(64, 8) * 2e-2 + 1e-2) * torch.sign(torch.randn(64, 8))
        theirs.grad, ours.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    # atol: a few float32 roundings of weights near 1 (one ulp there is 1.2e-7); the steps are ~1e-3
    torch.testing.assert_close(ours - start, theirs - start, rtol=1e-4, atol=1e-6)


def test_galore_row_runs_through_the_loop(tiny_row, run_tiny):
    m = run_tiny(tiny_row("full", "galore", galore={"rank": 4, "per_parameter": True}, max_steps=2,
                          gradient_accumulation_steps=2, batch_size=2, max_train_samples=8))
    assert m["optimizer_steps"] == 2
    assert m["galore_rank"] == 4 and m["galore_per_parameter"] is True
    assert m["galore_target_matrices"] == 28
    assert m["galore_optimizer"] == "GaLoreAdamW"
    assert m["galore_grad_clipping"] is False
    assert 0 < m["galore_optimizer_state_gib"]
    assert all(loss == loss for loss in m["train_loss_curve"])  # no NaN


def test_adafactor_update_is_low_rank():
    from tunerkit_plugins.tuners.galore import GaLoreOptions, build_optimizer

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(48, 32))
    group = {"params": [w], "rank": 3, "update_proj_gap": 10, "scale": 1.0, "proj_type": "std", "weight_decay": 0.0}
    opt = build_optimizer(GaLoreOptions(optimizer="adafactor"), [group], lr=1e-2)
    before = w.detach().clone()
    w.grad = torch.randn_like(w)
    opt.step()
    assert type(opt).__name__ == "Adafactor"
    assert numeric_rank(w.detach() - before) == 3


def test_quantized_galore_wiring(monkeypatch):
    """Q-GaLore's optimizer through tunerkit's compatibility layer (its step syncs CUDA: stubbed on CPU)."""
    pytest.importorskip("q_galore_torch")
    from tunerkit_plugins.tuners.galore import GaLore, GaLoreOptions, build_optimizer

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    options = GaLoreOptions(rank=16, update_proj_gap=2, quantize=True, proj_quant=True)
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(512, 256))  # a projected state of 8192 values: bitsandbytes keeps it in 8 bits
    b = torch.nn.Parameter(torch.randn(256))
    groups = [{"params": [w], "weight_decay": 0.0, **GaLore(options).projection_settings()},
              {"params": [b], "weight_decay": 0.0}]
    opt = build_optimizer(options, groups, lr=1e-3)
    assert opt.args.max_unorm == 0.0 and opt.args.skip_zeros is False
    for step in range(3):
        before = w.detach().clone()
        w.grad, b.grad = torch.randn_like(w), torch.randn_like(b)
        opt.step()
        assert numeric_rank(w.detach() - before) == 16
    state = opt.state[w]
    assert state["state1"].dtype == torch.uint8 and state["state1"].shape == (512, 16)  # 8-bit, rank-16 state
    projector = state["projector"]
    assert projector.ortho_matrix.dtype == torch.uint8 and int(projector.ortho_matrix.max()) < 2 ** 4
    assert projector.svd_count == 2  # refreshed at steps 0 and 2


def test_bad_combinations_fail_early(tiny_row):
    from tunerkit.validation import validate_row

    with pytest.raises(UserError, match="needs 'full'"):
        tiny_row("galore")
    with pytest.raises(UserError, match="cannot run with"):
        tiny_row("full", "galore", "lisa")
    with pytest.raises(UserError, match="proj_quant needs quantize"):
        tiny_row("full", "galore", galore={"proj_quant": True})
    with pytest.raises(UserError, match="optimizer must be 'adamw'"):
        tiny_row("full", "galore", galore={"quantize": True, "optimizer": "adafactor"})
    with pytest.raises(UserError, match="per_parameter") as err:
        validate_row(tiny_row("full", "galore", galore={"per_parameter": True}, gpus=2), file="t.toml")
    assert "\n" not in str(err.value)
    if not torch.cuda.is_available():
        for galore in ({"quantize": True}, {"optimizer": "adamw8bit"}):
            with pytest.raises(UserError, match="needs a CUDA GPU"):
                validate_row(tiny_row("full", "galore", galore=galore), file="t.toml")
    validate_row(tiny_row("full", "galore"), file="t.toml")  # the plain row passes


def test_svd_driver_routes_gpu_svds_while_the_row_runs_and_is_removed_after(tiny_row, tiny_context, monkeypatch):
    """galore-torch takes no SVD driver: the wrapper adds the chosen one to CUDA inputs only, from the
    optimizer's construction to teardown, and a CPU row leaves torch.linalg.svd alone."""
    from types import SimpleNamespace

    from tunerkit_plugins.tuners.galore import GaLoreOptions, SvdDriver, resolved_svd_driver

    assert resolved_svd_driver(GaLoreOptions()) == "gesvda"
    assert resolved_svd_driver(GaLoreOptions(svd_driver="torch")) is None
    calls = []

    def fake_svd(A, *args, **kwargs):
        calls.append(kwargs)
        if getattr(A, "unconverging", False) and kwargs.get("driver") == "gesvda":
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return "result"

    monkeypatch.setattr(torch.linalg, "svd", fake_svd)
    fake_original = torch.linalg.svd
    from tunerkit.context import RunContext

    row_ctx = RunContext(row=None, hook=None, out_dir=None)
    wrapper = SvdDriver("gesvda")
    wrapper.install(row_ctx)
    assert torch.linalg.svd(SimpleNamespace(is_cuda=True), full_matrices=False) == "result"
    torch.linalg.svd(SimpleNamespace(is_cuda=False), full_matrices=False)
    torch.linalg.svd(SimpleNamespace(is_cuda=True), driver="gesvdj")
    assert calls == [{"full_matrices": False, "driver": "gesvda"}, {"full_matrices": False}, {"driver": "gesvdj"}]
    # a matrix gesvda does not converge on is redone with torch's own choice, and counted
    calls.clear()
    assert torch.linalg.svd(SimpleNamespace(is_cuda=True, unconverging=True), full_matrices=False) == "result"
    assert calls == [{"full_matrices": False, "driver": "gesvda"}, {"full_matrices": False}]
    assert wrapper.fallbacks == 1
    assert row_ctx.undo_changes() == []
    assert torch.linalg.svd is fake_original
    monkeypatch.undo()

    # a CPU row: nothing installed, the metric says torch's own choice ran
    original = torch.linalg.svd
    ctx = tuned(tiny_row, tiny_context, 2, rank=4, update_proj_gap=1)
    assert torch.linalg.svd is original
    run_steps(ctx, [[token_batch(1)]])
    metrics = {k: v for d in ctx.hook.collect_metrics(ctx=ctx) for k, v in d.items()}
    assert metrics["galore_svd_driver"] == "torch"
    assert not ctx.close()
    assert torch.linalg.svd is original


def test_amortised_step_spreads_the_projector_refresh_over_its_gap():
    from tunerkit_plugins.tuners.galore import amortised_step

    # refreshes at steps 0 and 4 (gap 4): 5 s and 3 s against 1 s between them
    m = amortised_step([5.0, 1.0, 1.0, 1.0, 3.0, 1.0], gap=4)
    assert m["galore_step_s"] == 1.0 and m["galore_refresh_step_s"] == 4.0
    assert m["galore_refresh_extra_s"] == 3.0
    assert m["galore_amortised_step_s"] == pytest.approx(1.0 + 3.0 / 4)
    assert amortised_step([5.0], gap=200) == {}  # no step between refreshes: nothing to amortise
