"""``tunerkit estimate`` against what a tiny row really holds on the CPU.

Parameter, gradient and optimizer-state bytes are compared exactly with the trained row's
tensors. Activations are compared with torch's profiler memory timeline (tensor bytes the
allocator handed out during one micro-batch's forward and backward, deterministic on a CPU),
within a stated tolerance; the tiny preset's vocabulary makes the loss's logits most of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tunerkit.estimate import GIB, estimate_row
from tunerkit.hookspecs import hookimpl
from tunerkit.loop import run_row

#: equal-length samples, so every micro-batch is the longest one the estimate plans for
DATA = "synthetic:lengths?mean=32&sd=0&min=32&max=32&rows=8"
SMALL = dict(dataset=DATA, max_train_samples=8, val_size=0, evaluate=[], batch_size=2, max_length=32, max_steps=1)
#: measured activation peak / predicted activations on the tiny preset must lie inside this
ACTIVATION_TOLERANCE = 0.15


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Holdings:
    """What a row holds: parameters (trainable or not), gradients before the step and the
    optimizer's state tensors after it (its scalar step counters left out), GaLore's
    projection matrices included."""

    def __init__(self):
        self.seen = {}

    @hookimpl
    def on_before_optimizer_step(self, ctx):
        self.seen["gradients"] = nbytes(p.grad for p in ctx.model.parameters() if p.grad is not None)

    @hookimpl
    def on_train_end(self, ctx):
        params = list(ctx.model.parameters())
        values = [v for s in ctx.optimizer.state.values() for v in s.values()]
        # GaLore keeps each weight's projection matrix in a projector object beside the states
        values += [getattr(v, "ortho_matrix", None) for v in values]
        state = [t for t in values if torch.is_tensor(t) and t.dim() > 0]
        self.seen.update(param_bytes=nbytes(params), optimizer=nbytes(state),
                         trainable=sum(p.numel() for p in params if p.requires_grad))


class ActivationPeak:
    """Peak tensor bytes of the first micro-batch's forward and backward, parameters left
    out, from the profiler's memory timeline."""

    def __init__(self, folder: Path):
        self.folder, self.peak, self.prof = folder, None, None

    @hookimpl(hookwrapper=True)
    def compute_loss(self, ctx, model, batch):
        if self.prof is None and self.peak is None:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                                with_stack=True)
            self.prof.__enter__()
        yield

    @hookimpl
    def on_before_optimizer_step(self, ctx):
        if self.prof is None:
            return
        self.prof.__exit__(None, None, None)
        path = self.folder / "timeline.json"
        self.prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
        # columns: time, then parameter, optimizer state, input, temporary, activation,
        # gradient, autograd detail, unknown (torch.profiler._memory_profiler's order)
        sizes = np.array(sizes)[:, 1:]
        self.peak, self.prof = int(np.delete(sizes, 0, axis=1).sum(axis=1).max()), None


def parts(row) -> dict:
    return {k: v * GIB for k, v in estimate_row(row, tflops=1.0, gpu=False)["parts_gib"].items()}


@pytest.mark.parametrize("plugins,options", [
    (("lora",), {}), (("dora",), {}), (("loraplus",), {}), (("adapter",), {}), (("llamapro",), {}),
    (("full",), {}), (("full", "lisa"), {"lisa": {"activated_layers": 2}}),
    # rank 16 projects every layer linear of the tiny preset; 128 exceeds them all (no projection)
    (("full", "galore"), {"galore": {"rank": 16}}), (("full", "galore"), {"galore": {"rank": 128}}),
], ids=lambda v: "+".join(v) if isinstance(v, tuple) else "")
def test_parameters_gradients_and_optimizer_state_match_the_trained_row(tiny_row, tmp_path, plugins, options):
    row = tiny_row(*plugins, **{**SMALL, **options})
    probe = Holdings()
    metrics = run_row(row, tmp_path, extra_plugins=[probe])
    pred, got = estimate_row(row, tflops=1.0, gpu=False), probe.seen
    p = parts(row)
    assert pred["trainable_params"] == got["trainable"] == metrics["trainable_params"]
    assert p["weights"] + p["added"] == got["param_bytes"]
    assert p["gradients"] == got["gradients"]
    assert p["optimizer"] == got["optimizer"]


class GradientsBetweenMicroBatches:
    """The gradient bytes a row holds when each micro-batch's loss is computed: under
    accumulation, what the earlier micro-batches of the window left in ``.grad``."""

    def __init__(self):
        self.held = 0

    @hookimpl(hookwrapper=True)
    def compute_loss(self, ctx, model, batch):
        self.held = max(self.held, nbytes(p.grad for p in ctx.model.parameters() if p.grad is not None))
        yield


def test_per_parameter_galore_holds_whole_gradients_under_accumulation(tiny_row, tmp_path):
    galore = {"galore": {"rank": 16, "per_parameter": True}}
    alone = parts(tiny_row("full", "galore", **{**SMALL, **galore}))
    row = tiny_row("full", "galore", **{**SMALL, **galore, "gradient_accumulation_steps": 2})
    probe = GradientsBetweenMicroBatches()
    run_row(row, tmp_path, extra_plugins=[probe])
    # stepping inside the backward frees gradients only in a window's last micro-batch: before
    # it, every trained weight's gradient accumulates whole, as the estimate now counts
    assert probe.held == parts(row)["gradients"] > alone["gradients"]


def test_activation_peak_is_within_tolerance_of_the_profiled_step(tiny_row, tmp_path):
    for batch in (2, 4):
        row = tiny_row("lora", **{**SMALL, "batch_size": batch})
        probe = ActivationPeak(tmp_path)
        run_row(row, tmp_path / str(batch), extra_plugins=[probe])
        p = parts(row)
        predicted = p["activations"] + p["gradients"]
        assert abs(probe.peak / predicted - 1) <= ACTIVATION_TOLERANCE, (batch, probe.peak, predicted)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_eager_attention_keeps_its_probabilities_as_profiled(tiny_row, tmp_path, dtype):
    """Eager attention keeps heads x length probabilities per token and layer: the fp32 softmax
    output and, in bf16, its bf16 cast as well. The profiled difference between an eager and
    an SDPA row (no checkpointing: every layer's probabilities are alive at the peak) must
    match the predicted difference."""
    data = "synthetic:lengths?mean=256&sd=0&min=256&max=256&rows=4"
    common = dict(SMALL, dataset=data, max_length=256, batch_size=1, max_train_samples=4, dtype=dtype,
                  gradient_checkpointing=False)
    measured, predicted = {}, {}
    for attention in ("sdpa", "eager"):
        row = tiny_row("lora", **common, attention=attention)
        probe = ActivationPeak(tmp_path)
        run_row(row, tmp_path / attention, extra_plugins=[probe])
        p = parts(row)
        measured[attention], predicted[attention] = probe.peak, p["activations"] + p["gradients"]
    got, want = measured["eager"] - measured["sdpa"], predicted["eager"] - predicted["sdpa"]
    assert abs(want / got - 1) <= 0.05, (dtype, got, want)


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_doras_magnitude_terms_match_the_profiled_difference_from_lora(tiny_row, tmp_path, dropout):
    """DoRA keeps, beside LoRA's tensors, each adapted linear's LoRA and base results for the
    magnitude's gradient, and with dropout the weight it re-multiplies in fp32. Without
    checkpointing every layer's are alive at the peak; the SmolLM2 quality row on one H100
    measured 1.08 GiB more than LoRA, which the estimate had put at zero."""
    data = "synthetic:lengths?mean=128&sd=0&min=128&max=128&rows=4"
    common = dict(SMALL, dataset=data, max_length=128, batch_size=2, max_train_samples=4, dtype="bf16",
                  gradient_checkpointing=False)
    measured, predicted = {}, {}
    for tuner in ("lora", "dora"):
        row = tiny_row(tuner, **common, **{tuner: {"targets": "ALL", "dropout": dropout}})
        probe = ActivationPeak(tmp_path)
        run_row(row, tmp_path / f"{tuner}{dropout}", extra_plugins=[probe])
        p = parts(row)
        measured[tuner], predicted[tuner] = probe.peak, p["activations"] + p["gradients"]
    got, want = measured["dora"] - measured["lora"], predicted["dora"] - predicted["lora"]
    assert got > 0 and abs(want / got - 1) <= 0.15, (dropout, got, want)


def test_a_text_row_peaks_at_its_tokenized_lengths_not_max_length(tiny_row, tmp_path):
    """Chat data is tokenized (with the borrowed bundled tokenizer a preset uses) to learn its
    lengths: padded batches hold batch x the longest sample, and the arithmetic task's samples
    are far under max_length (assuming max_length put the SmolLM2 quality rows at three times
    their measured memory). The longest batch the loop really built bounds the prediction."""
    from tunerkit.estimate import estimate_row

    class LongestBatch:
        longest = 0

        @hookimpl(hookwrapper=True)
        def compute_loss(self, ctx, model, batch):
            LongestBatch.longest = max(LongestBatch.longest, batch["input_ids"].numel())
            yield

    row = tiny_row("lora", dataset="builtin:arithmetic", max_train_samples=64, val_size=0, evaluate=[],
                   batch_size=8, max_length=256, max_steps=8)
    planned = estimate_row(row, tflops=1.0, gpu=False)["peak_tokens"]
    assert planned < 8 * 256 / 3
    run_row(row, tmp_path, extra_plugins=[LongestBatch()])
    assert LongestBatch.longest <= planned <= 1.25 * LongestBatch.longest, (planned, LongestBatch.longest)


def test_a_flattened_batch_peaks_at_its_real_tokens_not_batch_times_the_longest(tiny_row):
    """Padding-free rows hold only their samples' tokens: on varied lengths their predicted peak
    is the largest sum of batch_size lengths a run meets, below the padded batch's, and the
    same at batch 1. (On one H200 the 8,192-token padding-free row peaked at 47.3 GiB, which
    batch x longest had put at 72.0; docs/performance.md.)"""
    from tunerkit.estimate import build_estimate, sample_lengths

    varied = dict(SMALL, dataset="synthetic:lengths?mean=64&sd=40&min=8&max=128&rows=64", max_length=128,
                  max_train_samples=None, token_budget=4096)
    for batch in (1, 4):
        padded = build_estimate(tiny_row("lora", **{**varied, "batch_size": batch}), gpu=False)
        flat_row = tiny_row("lora", "padding_free", **{**varied, "batch_size": batch})
        flat = build_estimate(flat_row, gpu=False)
        lengths = sorted(sample_lengths(flat_row))
        if batch == 1:
            assert flat.peak_tokens == padded.peak_tokens
            continue
        assert sum(lengths[-batch:]) >= flat.peak_tokens > lengths[-1]
        assert flat.peak_tokens < 0.9 * padded.peak_tokens
        assert flat.memory_parts()["activations"] < padded.memory_parts()["activations"]


def test_activations_scale_with_tokens_and_tuners_differ_by_training_state(tiny_row):
    one = parts(tiny_row("lora", **SMALL))
    two = parts(tiny_row("lora", **{**SMALL, "batch_size": 4}))
    longer = parts(tiny_row("lora", **{**SMALL, "dataset": DATA.replace("32", "16"), "max_length": 16}))
    assert two["activations"] == pytest.approx(2 * one["activations"])
    assert one["activations"] == pytest.approx(2 * longer["activations"])
    full = parts(tiny_row("full", **SMALL))
    assert full["weights"] + full["added"] == pytest.approx(one["weights"])  # same base, adapters aside
    assert full["optimizer"] == pytest.approx(2 * full["gradients"])  # AdamW: two fp32 states
    assert full["optimizer"] - one["optimizer"] > 100 * one["optimizer"]
    checkpointed = parts(tiny_row("lora", **{**SMALL, "gradient_checkpointing": True}))
    assert checkpointed["activations"] < one["activations"]


# ---------------------------------------------------------------------------
# the command

RECIPE = """
[recipe]
name = "est"

[defaults]
model = "tiny-llama"
dataset = "synthetic:lengths?mean=32&sd=0&min=32&max=32&rows=8"
max_length = 32
batch_size = 2
val_size = 0
evaluate = []

[[row]]
name = "lora"
plugins = ["lora"]

[[row]]
name = "full"
plugins = ["full"]
"""


def cli(*args):
    from tunerkit.cli import main

    return CliRunner().invoke(main, ["estimate", *args])


def test_cli_prints_each_rows_prediction(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    result = cli(str(path), "--json")
    assert result.exit_code == 0, result.output
    out = {e["row"]: e for e in json.loads(result.output)}
    assert set(out) == {"lora", "full"}
    assert out["full"]["peak_alloc_gib"] > out["lora"]["peak_alloc_gib"]
    text = cli(str(path))
    assert text.exit_code == 0
    for name, e in out.items():
        assert f"{name}: predicted peak {e['peak_alloc_gib']:.2f} GiB" in text.output


@pytest.mark.parametrize("args,fragment", [
    (("--only", "nope"), "nope"),
    ((), None),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path, args, fragment):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    result = cli(str(path), *args) if args else cli()
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    if fragment:
        assert fragment in lines[0]


def test_cli_set_overrides_every_row_as_run_does(tmp_path):
    """--set: the rows predicted are the ones `run --set` would train (a larger batch predicts
    more memory, a larger rank more trainable parameters); an unknown key is refused in one line, and --set without a recipe."""
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    plain = {e["row"]: e for e in json.loads(cli(str(path), "--json").output)}
    result = cli(str(path), "--json", "--set", "batch_size=8", "--set", "lora.rank=64")
    assert result.exit_code == 0, result.output
    longer = {e["row"]: e for e in json.loads(result.output)}
    assert all(longer[n]["peak_alloc_gib"] > plain[n]["peak_alloc_gib"] for n in plain)
    assert longer["lora"]["trainable_params"] > plain["lora"]["trainable_params"]
    for args in (("--set", "batch_sise=8"), ("--db", str(tmp_path / "t.db"), "--set", "batch_size=8")):
        result = cli(str(path), *args) if args[0] == "--set" else cli(*args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output


def test_cli_refuses_a_bad_recipe_in_one_line(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.replace('plugins = ["full"]', 'plugins = ["full"]\nbatch_sizes = 3'))
    result = cli(str(path))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "batch_sizes" in lines[0] and "recipe.toml" in lines[0], result.output


def test_a_stores_rows_are_predicted_for_the_device_they_ran_on_beside_their_measurement(tiny_row, tmp_path):
    """``tunerkit estimate --db``: each stored row is predicted from its recorded config for the
    device its record names (a GPU row checked on a CPU-only machine), and the errors are
    prediction over measurement; a store with one row under two profiles names the profile.
    The measurements are written by hand: this checks the comparison, not a GPU."""
    from dataclasses import replace

    from tunerkit.estimate import device_tflops
    from tunerkit.estimate_cli import compare, render, stored_rows
    from tunerkit.store import Store

    db = tmp_path / "t.db"
    store = Store(db)
    row = tiny_row("lora", name="lora", **SMALL)
    for profile, gib, speed in (("bench", 2.0, 1000.0), ("fast", 1.5, 3000.0)):
        store.record(recipe="tuners", row=replace(row, profile=profile), repeat=0, status="ok", reason=None,
                     metrics={"tokens_per_s": speed, "memory": [{"device": "cuda", "peak_allocated_gib": gib}]},
                     environment={"device_name": "NVIDIA H200"}, started=0.0)
    records = stored_rows(db)
    assert [(r["profile"], r["on_gpu"], r["device"]) for r in records] == [
        ("bench", True, "NVIDIA H200"), ("fast", True, "NVIDIA H200")]
    entries = compare(records)
    expected = estimate_row(row, device_tflops("NVIDIA H200")[1], gpu=True)
    for entry, gib, speed in zip(entries, (2.0, 1.5), (1000.0, 3000.0)):
        assert entry["predicted_gib"] == pytest.approx(expected["peak_alloc_gib"])
        assert entry["memory_error"] == pytest.approx(expected["peak_alloc_gib"] / gib - 1)
        assert entry["speed_error"] == pytest.approx(expected["tokens_per_s"] / speed - 1)
    text = render(entries)
    assert "| tuners | lora (bench) |" in text and "| tuners | lora (fast) |" in text
    result = cli("--db", str(db))
    assert result.exit_code == 0, result.output
    assert "lora (fast)" in result.output


def test_cli_predicts_for_a_named_device_and_plans_a_gpu_run_on_a_smaller_machine(tmp_path):
    """--device: the prediction for that device (bf16 weights and its matmul rate on a GPU),
    without this machine's checks; without it, a preset larger than this machine is refused
    in one line that names --device; an unknown device is refused in one line."""
    from tunerkit.estimate import DEVICE_TFLOPS
    from tunerkit.recipe import load_recipe

    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    here = {e["row"]: e for e in json.loads(cli(str(path), "--json").output)}
    result = cli(str(path), "--json", "--device", "NVIDIA H200")
    assert result.exit_code == 0, result.output
    on_gpu = {e["row"]: e for e in json.loads(result.output)}
    row = load_recipe(path).rows[0]
    assert on_gpu[row.name]["peak_alloc_gib"] == pytest.approx(
        estimate_row(row, DEVICE_TFLOPS["H200"], gpu=True)["peak_alloc_gib"])
    # the base weights in bf16 on the GPU, fp32 on this CPU
    assert on_gpu["full"]["parts_gib"]["weights"] == pytest.approx(here["full"]["parts_gib"]["weights"] / 2)

    big = tmp_path / "big.toml"
    big.write_text(RECIPE.replace('model = "tiny-llama"', 'model = "qwen-72b-chat"'))
    refused = cli(str(big))
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and "--device" in lines[0], refused.output
    planned = cli(str(big), "--device", "H100", "--only", "lora")
    assert planned.exit_code == 0, planned.output
    assert "lora: predicted peak" in planned.output

    unknown = cli(str(path), "--device", "V100")
    lines = [line for line in unknown.output.splitlines() if line.strip()]
    assert unknown.exit_code == 2 and len(lines) == 1 and "V100" in lines[0] and "H100" in lines[0]


def test_mfu_counts_the_model_flops_of_real_tokens_against_named_ceilings(tiny_row):
    """Model FLOPs per token: 4N for every weight plus 2N for trained ones, adapters at 6N, and
    causal attention; MFU divides the sustained rate by the practical matmul rate and by the
    datasheet peak of the device named, and an unknown device gets the rate without MFU."""
    from tunerkit.estimate import build_estimate, model_flops_per_token, utilisation

    lora, full = (tiny_row(t, **SMALL) for t in ("lora", "full"))
    e_lora, e_full = build_estimate(lora, gpu=True), build_estimate(full, gpu=True)
    s = e_full.shape
    attention = 6 * 32 * s.hidden * s.layers  # 32-token samples
    assert model_flops_per_token(e_full) == pytest.approx(6 * s.dense_params + attention)
    assert model_flops_per_token(e_lora) == pytest.approx(4 * s.dense_params + 6 * e_lora.added_params + attention)

    rate = model_flops_per_token(e_lora) * 1e6 / 1e12  # a million tokens/s
    h200 = utilisation(lora, 1e6, "NVIDIA H200")
    assert h200["model_tflops_per_s"] == pytest.approx(rate)
    assert h200["mfu_pct"] == pytest.approx(100 * rate / 790) and h200["mfu_ceiling_tflops"] == 790
    assert h200["mfu_datasheet_pct"] == pytest.approx(100 * rate / 989)
    assert utilisation(lora, 1e6, "Some GPU") == {"model_tflops_per_s": pytest.approx(rate)}


def test_a_cpu_row_records_no_mfu_and_the_report_explains_the_gpu_column(tiny_row, tmp_path):
    from tunerkit.report.tables import mfu_note

    metrics = run_row(tiny_row("lora", **SMALL), tmp_path)
    assert "mfu_pct" not in metrics and "model_tflops_per_s" not in metrics
    note = mfu_note([{"metrics": {"mfu_pct": 40.0, "mfu_ceiling_tflops": 790.0, "mfu_datasheet_tflops": 989.0}}])
    assert "790 TFLOP/s" in note and "989 TFLOP/s" in note
    assert mfu_note([{"metrics": metrics}]) is None


def test_a_4bit_base_is_predicted_slower_than_bf16_weights(tiny_row):
    # bitsandbytes dequantizes each block in every forward and backward; the matmul count
    # alone would predict the same speed as bf16 weights
    pytest.importorskip("bitsandbytes")
    plain = estimate_row(tiny_row("lora"), tflops=100.0, gpu=True)["tokens_per_s"]
    quantized = estimate_row(tiny_row("lora", "bnb"), tflops=100.0, gpu=True)["tokens_per_s"]
    assert quantized < 0.95 * plain


def test_memory_budget_applies_checkpointing_then_the_plugins_offers_then_shorter_rows(tiny_row):
    """--memory-budget: each try adds to the one before (checkpointing, then what plugins offer
    through ``memory_savings``, cheapest first, then shorter rows), and the advice names every
    change that got the row under the budget, with a prediction that is under it."""
    from tunerkit.estimate_cli import fitting, memory_savings
    from tunerkit.recipe import make_row

    row = tiny_row("full", **{**SMALL, "max_length": 1024,
                              "dataset": "synthetic:lengths?mean=1024&sd=0&min=1024&max=1024&rows=8"})
    offers = memory_savings(row)
    assert [o["label"] for o in offers] == ["+ offload"]  # a row without offload, nor deepspeed
    assert memory_savings(tiny_row("lora", "offload", gradient_checkpointing=True)) == []

    as_written = estimate_row(row)["peak_alloc_gib"]
    checkpointed = estimate_row(make_row("c", ["full"], **{**row.config()["settings"], "gradient_checkpointing": True}))
    assert "fits" in fitting([row], as_written + 0.01)[0]
    between = (as_written + checkpointed["peak_alloc_gib"]) / 2
    assert fitting([row], between)[0].startswith(f"{row.name}: gradient_checkpointing = true -> ")
    shortest = fitting([row], 1e-6)[0]
    assert "nothing tried fits" in shortest
    # a budget only the shorter rows meet: every change before them is named, cumulative
    short = estimate_row(make_row("s", ["full", "offload"], **{**row.config()["settings"], "gradient_checkpointing": True,
                                                            "max_length": 512}))
    advice = fitting([row], short["peak_alloc_gib"] + 1e-6)[0]
    assert advice.startswith(f"{row.name}: gradient_checkpointing = true, + offload, max_length = 512 -> "), advice
    assert float(advice.split("-> ")[1].split(" GiB")[0]) <= short["peak_alloc_gib"] + 0.05


def test_a_deepspeed_row_is_offered_its_optimizer_and_weight_offload(tiny_row):
    pytest.importorskip("deepspeed")
    from tunerkit.estimate_cli import memory_savings

    zero3 = tiny_row("full", "deepspeed", gpus=2, dtype="bf16", deepspeed={"zero_stage": 3})
    labels = [o["label"] for o in memory_savings(zero3)]
    assert labels == ["+ offload", 'deepspeed.offload_optimizer = "cpu"', 'deepspeed.offload_param = "cpu"']
    zero2 = tiny_row("full", "deepspeed", gpus=2, dtype="bf16", deepspeed={"zero_stage": 2, "offload_optimizer": "cpu"})
    assert [o["label"] for o in memory_savings(zero2)] == [  # stage 2 is first offered stage 3's sharded weights
        "+ offload", "deepspeed.zero_stage = 3", 'deepspeed.offload_param = "cpu"']
    on = estimate_row(tiny_row("full", "deepspeed", gpus=2, dtype="bf16",
                               deepspeed={"zero_stage": 3, "offload_optimizer": "cpu"}), gpu=True)
    off = estimate_row(zero3, gpu=True)
    assert on["parts_gib"]["optimizer"] == 0 and off["parts_gib"]["optimizer"] > 0
    assert any("not counted" in n for n in off["notes"])  # its speed leaves ZeRO's communication out


@pytest.mark.parametrize("sp", [2, 4])
def test_a_sequence_parallel_gpu_keeps_the_activations_of_its_share_of_the_tokens(tiny_row, sp):
    """Ulysses: each of sp GPUs holds 1/sp of every sequence's activations and the whole of
    the weights and optimizer state (the defining trade of sequence parallelism)."""
    pytest.importorskip("deepspeed")
    settings = {**SMALL, "batch_size": 1, "gpus": 4, "attention": "sdpa", "max_length": 1024,
                "dataset": "synthetic:lengths?mean=1024&sd=0&min=1024&max=1024&rows=8"}
    plain = estimate_row(tiny_row("lora", **settings), gpu=True)
    split = estimate_row(tiny_row("lora", "sequence_parallel", sequence_parallel={"sp_size": sp}, **settings), gpu=True)
    for part in ("weights", "added", "gradients", "optimizer"):
        assert split["parts_gib"][part] == pytest.approx(plain["parts_gib"][part])
    assert split["peak_tokens"] == plain["peak_tokens"] / sp
    assert split["parts_gib"]["activations"] == pytest.approx(plain["parts_gib"]["activations"] / sp, rel=0.01)
