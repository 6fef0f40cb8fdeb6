"""Report tables and plots from a results database filled with FAKE numbers.

Every number recorded here is made up for the test (structurally real records: real rows
from the recipes, real metric keys); none of it is a measurement or may be published.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunerkit.recipe import load_recipe, make_row
from tunerkit.report import plots
from tunerkit.report.tables import SEED_MARK, SEED_NOTE, render, table_rows
from tunerkit.store import Store

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
FAKE_GPU = {"device_name": "FAKE GPU (test data)", "cuda": "0.0", "gpu_count": 2,
            "versions": {"torch": "0.0-test"}}
FAKE_CPU = {"device_name": "x86_64", "versions": {"torch": "0.0-test"}}


def fake_metrics(i: int, row, *, random_weights: bool, quality: bool = False) -> dict:
    """Made-up metrics shaped like the loop's: no measurement behind any of them."""
    world = row.settings.gpus
    reserved = 8.0 + 2.5 * i + 3.0 * (i % 3)
    params = 7721.3 if "full" in row.plugins else 4.0 + i
    m = {
        "trainable_params_m": params, "trainable_pct": 0.05 * (i + 1), "trainable_params": int(params * 1e6),
        "samples_per_s": 6.0 / (1 + 0.3 * i), "tokens_per_s": 9000.0 / (1 + 0.2 * i) + 900 * (i % 3),
        "train_samples": 64 * world, "optimizer_steps": 4, "timed_steps": 3,
        "memory": [{"device": f"cuda:{k}", "peak_allocated_gib": reserved - 2, "peak_reserved_gib": reserved + k}
                   for k in range(world)],
        "train_loss_curve": [3.0 * math.exp(-0.3 * s) + 0.05 * i for s in range(8)],
        "random_weights": random_weights, "world_size": world,
    }
    m["train_loss"] = m["train_loss_curve"][-1]
    if quality:
        m.update(eval_loss=1.5 + 0.1 * i, accuracy=0.1 * (i % 5), infer_tokens_per_s=20.0 + i)
    if not random_weights:
        m["memory"] = [{"device": "cpu", "peak_rss_gib": 1.0 + 0.1 * i + 0.25 * (i % 2)}]
    return m


PENDING_RECIPE = """
[recipe]
name = "export"
seed_table = "Export"

[defaults]
model = "qwen-7b-chat"
dataset = "synthetic:lengths"

[profiles.bench]
description = "a pending row of ms-swift's Export table"

[[row]]
name = "awq-ms-bench-mini"
plugins = ["lora"]
reference = { infer_tokens_per_s = 27.25 }
pending = "quantized export runs elsewhere"
"""


@pytest.fixture
def db(tmp_path) -> Path:
    """A results DB: part of max_length_lora (bench, on a fake GPU) and of tuners (cpu)."""
    store = Store(tmp_path / "fake.db")
    bench = load_recipe(RECIPES / "max_length_lora.toml", "bench", check_files=False)
    wanted = [r for r in bench.rows if r.base_name in ("qwen-1_8b-chat", "qwen-7b-chat", "qwen-72b-chat")]
    for i, row in enumerate(wanted):
        if row.base_name == "qwen-72b-chat" and row.settings.max_length >= 4096:
            store.record(recipe=bench.name, row=row, repeat=0, status="failed",
                         reason="OOM: CUDA out of memory. Tried to allocate 2.00 GiB (fake)", metrics={},
                         environment=FAKE_GPU, started=0.0)
        else:
            store.record(recipe=bench.name, row=row, repeat=0, status="ok", reason=None,
                         metrics=fake_metrics(i, row, random_weights=True), environment=FAKE_GPU, started=0.0)
    # No shipped recipe has a pending row any more: one written here keeps the status reported.
    (tmp_path / "pending.toml").write_text(PENDING_RECIPE)
    quant = load_recipe(tmp_path / "pending.toml", "bench", check_files=False)
    pending = next(r for r in quant.rows if r.pending)
    store.record(recipe=quant.name, row=pending, repeat=0, status="pending",
                 reason=f"not implemented: {pending.pending}", metrics={}, environment={}, started=0.0)
    cpu = load_recipe(RECIPES / "tuners.toml", "cpu", check_files=False)
    for i, row in enumerate(r for r in cpu.rows if r.base_name in ("lora", "full", "dora", "rslora", "full+lisa_2")):
        store.record(recipe=cpu.name, row=row, repeat=0, status="ok", reason=None,
                     metrics=fake_metrics(i, row, random_weights=False, quality=True), environment=FAKE_CPU,
                     started=0.0)
    return store.path


def records(db: Path, recipe: str) -> list[dict]:
    return Store(db).latest(recipe)


def line_of(md: str, *cells: str) -> str:
    return next(line for line in md.splitlines() if all(f"| {c} |" in line for c in cells))


def test_markdown_puts_the_seeds_numbers_beside_ours(db):
    md = render(records(db, "max_length_lora"), "md")
    headers = [h.strip() for h in md.splitlines()[[i for i, l in enumerate(md.splitlines()) if l.startswith("| row")][0]].split("|")]
    assert {"row", "model", "max_length", "status", "samples/s", f"samples/s {SEED_MARK}", "tokens/s",
            "reserved GiB", f"reserved GiB {SEED_MARK}"} <= set(headers)
    assert SEED_NOTE in md
    assert "All rows: random weights" in md  # every ok row ran on a preset
    line = line_of(md, "qwen-7b-chat", "4096")
    assert "| 2.05 |" in line and "| 35.31 |" in line  # ms-swift's numbers of this very sweep point
    line = line_of(md, "qwen-1_8b-chat", "512")
    assert "| 9.88 |" in line and "| 6.99 |" in line


def test_failed_rows_show_their_reason_and_multi_gpu_memory_per_device(db):
    md = render(records(db, "max_length_lora"), "md")
    oom = line_of(md, "qwen-72b-chat", "8192")
    assert "failed: OOM: CUDA out of memory" in oom and "OOM (2*A100)" in oom
    two_gpus = line_of(md, "qwen-72b-chat", "1024")
    assert "70.25+77.11" in two_gpus  # ms-swift's per-device figures, never summed
    assert "+" in two_gpus.split("|")[headers_index(md, "reserved GiB")]


def headers_index(md: str, header: str) -> int:
    head = next(line for line in md.splitlines() if line.startswith("| row"))
    return [h.strip() for h in head.split("|")].index(header)


def test_pending_rows_are_reported_not_implemented(db):
    md = render(records(db, "export"), "md")
    assert "not implemented: quantized export runs elsewhere" in md
    assert "| 27.25 |" in md  # ms-swift's numbers still show: the table keeps ms-swift's shape


def test_cpu_runs_leave_the_seed_out_and_show_quality(db):
    headers, body = table_rows(records(db, "tuners"))
    assert not any(SEED_MARK in h for h in headers)
    assert {"accuracy", "eval loss", "train loss", "peak RSS GiB", "plugins"} <= set(headers)
    assert "(random weights)" not in " ".join(cell for line in body for cell in line)
    md = render(records(db, "tuners"), "md")
    assert "not shown: this profile ran on CPU" in md


def test_csv_has_the_same_table_with_the_seed_columns_named(db):
    text = render(records(db, "max_length_lora"), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 15
    seed_col = next(h for h in rows[0] if h.startswith("samples/s [ms-swift"))
    assert "A100" in seed_col and "torch 2.1" in seed_col
    assert all(r["random_weights"] == "True" for r in rows if r["status"] == "ok")


def test_repeats_are_combined_by_median(tmp_path):
    store = Store(tmp_path / "r.db")
    row = make_row("lora", ["lora"], model="tiny-llama")
    for repeat, speed in enumerate([1.0, 5.0, 2.0]):
        m = fake_metrics(0, row, random_weights=True)
        m["samples_per_s"] = speed
        store.record(recipe="r", row=row, repeat=repeat, status="ok", reason=None, metrics=m,
                     environment=FAKE_GPU, started=0.0)
    headers, body = table_rows(store.latest("r"))
    assert body[0][headers.index("samples/s")] == "2.00" and body[0][headers.index("repeats")] == "3/3 ok"


def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 100), (12, 90), (20, 300), (5, 50), (20, 250), (30, 300)]
    assert sorted(plots.pareto_front(points)) == [0, 2, 3]


def test_labels_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [1.0, 1.05, 1.1, 1.0, 2.0, 2.02, 3.0, 1.02]
    ys = [5.0, 5.1, 5.0, 4.9, 3.0, 3.05, 1.0, 5.05]
    ax.scatter(xs, ys)
    ax.margins(0.3)
    plots.place_labels(ax, xs, ys, [f"a rather long row name {i}" for i in range(len(xs))])
    from matplotlib.text import Text

    fig.canvas.draw()  # annotations find their final positions while drawn
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text, not its leader line
    assert len(boxes) == len(xs)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_plots_are_written_as_png_and_svg(db, tmp_path):
    out = tmp_path / "plots"
    written = plots.make_plots(records(db, "max_length_lora") + records(db, "tuners"), out)
    names = {p.name for p in written}
    for stem in ("max_length_lora-bench-memory_speed", "max_length_lora-bench-max_length",
                 "max_length_lora-bench-loss_curves", "tuners-cpu-metrics", "tuners-cpu-loss_curves",
                 "tuners-cpu-memory_speed"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    for path in written:
        assert path.stat().st_size > 1000
    assert (out / "max_length_lora-bench-max_length.png").read_bytes()[:4] == b"\x89PNG"
    assert "random weights" in (out / "max_length_lora-bench-memory_speed.svg").read_text()
    assert "random weights" not in (out / "tuners-cpu-metrics.svg").read_text()


def test_cli_report_and_plot(db, tmp_path):
    from tunerkit.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["report", str(RECIPES / "max_length_lora.toml"), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "| 9.88 |" in result.output
    result = runner.invoke(main, ["plot", str(RECIPES / "tuners.toml"), "--db", str(db), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "tuners-cpu-metrics.png").exists()
    result = runner.invoke(main, ["plot", str(RECIPES / "awq.toml"), "--db", str(db)])
    assert result.exit_code == 2 and "no results for awq" in result.output


def test_the_table_says_how_many_steps_were_timed_and_under_which_budget(db):
    # fake_metrics times 3 steps a row; the bench profile of max_length_lora sets one token budget.
    bench = load_recipe(RECIPES / "max_length_lora.toml", "bench", check_files=False)
    budget = bench.rows[0].settings.token_budget
    md = render(records(db, "max_length_lora"), "md")
    assert f"timed over 3 optimizer steps a row (token budget {budget:,} training tokens a row)" in md


def test_the_first_row_a_gpu_process_trained_is_marked(tmp_path):
    from tunerkit.report.tables import FIRST_MARK, FIRST_NOTE

    store = Store(tmp_path / "first.db")
    for before, name in enumerate(["r2", "r8"]):
        row = make_row(name, ["lora"], model="tiny-llama")
        m = fake_metrics(before, row, random_weights=True)
        m["rows_before_in_process"] = before
        store.record(recipe="r", row=row, repeat=0, status="ok", reason=None, metrics=m,
                     environment=FAKE_GPU, started=0.0)
    md = render(store.latest("r"), "md")
    assert FIRST_MARK in line_of(md, "r2") and FIRST_MARK not in line_of(md, "r8")
    assert FIRST_NOTE in md
    cpu = Store(tmp_path / "cpu.db")  # CPU rows are never marked
    row = make_row("r2", ["lora"], model="tiny-llama")
    m = fake_metrics(0, row, random_weights=False)
    m["rows_before_in_process"] = 0
    cpu.record(recipe="r", row=row, repeat=0, status="ok", reason=None, metrics=m, environment=FAKE_CPU, started=0.0)
    assert FIRST_MARK not in render(cpu.latest("r"), "md")
    pinned = Store(tmp_path / "pinned.db")  # SDPA pinned away from cuDNN: no plans per length to build
    for kernels, name in ((["flash"], "flash"), (["cudnn", "flash"], "cudnn")):
        row = make_row(name, ["lora"], model="tiny-llama", sdpa_kernels=kernels)
        m = fake_metrics(0, row, random_weights=True)
        m.update(rows_before_in_process=0, sdpa_kernels=",".join(kernels))
        pinned.record(recipe="r", row=row, repeat=0, status="ok", reason=None, metrics=m, environment=FAKE_GPU,
                      started=0.0)
    md = render(pinned.latest("r"), "md")
    assert FIRST_MARK not in line_of(md, "flash") and FIRST_MARK in line_of(md, "cudnn")


def test_a_row_marked_by_the_plans_its_timed_steps_counted_not_by_its_place(tmp_path):
    """Records that count their timed steps' new lengths are marked by what those plans take:
    a row after another model's rows (every length new) is marked though not first; a first
    row whose warm-up met every length it timed is not."""
    from tunerkit.estimate import SHAPE_PLAN_SECONDS
    from tunerkit.report.tables import FIRST_MARK, paid_cudnn_plans, plan_share

    store = Store(tmp_path / "plans.db")
    # (name, place in its process, lengths its timed steps met first); three timed 2 s steps
    for name, before, new in (("yi-after-qwen", 3, 40), ("first-warm", 0, 0), ("one-new", 2, 1)):
        row = make_row(name, ["lora"], model="tiny-llama")
        m = fake_metrics(before, row, random_weights=True)
        m.update(rows_before_in_process=before, timed_new_input_shapes=new, timing_warmup_steps=1,
                 step_seconds=[9.0, 2.0, 2.0, 2.0])
        store.record(recipe="r", row=row, repeat=0, status="ok", reason=None, metrics=m,
                     environment=FAKE_GPU, started=0.0)
    records = {r["row"]: r for r in store.latest("r")}
    assert plan_share(records["yi-after-qwen"]["metrics"]) == pytest.approx(40 * SHAPE_PLAN_SECONDS / 6.0)
    assert [paid_cudnn_plans(records[n]) for n in ("yi-after-qwen", "first-warm", "one-new")] == [True, False, False]
    md = render(store.latest("r"), "md")
    assert FIRST_MARK in line_of(md, "yi-after-qwen") and FIRST_MARK not in line_of(md, "first-warm")

def test_runs_record_how_many_rows_their_process_trained_before(tmp_path):
    from tunerkit.recipe import load_recipe as load
    from tunerkit.runner import run_recipe

    recipe_file = tmp_path / "two.toml"
    recipe_file.write_text(
        '[recipe]\nname = "two"\n[defaults]\nmodel = "tiny-llama"\ndataset = "synthetic:lengths?mean=40&sd=5&min=8&max=60&rows=16"\n'
        'max_length = 64\nmax_steps = 1\nevaluate = []\nval_size = 0\n'
        '[[row]]\nname = "a"\nplugins = ["lora"]\n[[row]]\nname = "b"\nplugins = ["lora"]\n')
    store = Store(tmp_path / "two.db")
    outcomes = run_recipe(load(recipe_file, None), store, runs_dir=tmp_path / "runs", progress=False, echo=lambda *_: None)
    assert [o.metrics["rows_before_in_process"] for o in outcomes] == [0, 1]


def test_report_of_a_recipe_lists_its_rows_without_records_as_not_run(db):
    """Rows the store has no record of are shown, not dropped: ms-swift's numbers stand beside "not run"."""
    from tunerkit.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["report", str(RECIPES / "max_length_lora.toml"), "-p", "bench", "--db", str(db)])
    assert result.exit_code == 0, result.output
    yi = line_of(result.output, "yi-6b-chat", "2048")  # a row the fixture never recorded
    assert "| not run |" in yi
    seed = load_recipe(RECIPES / "max_length_lora.toml", "bench", check_files=False)
    point = next(r for r in seed.rows if r.name == "yi-6b-chat[max_length=2048]")
    assert f"| {point.reference['max_length']['2048']['samples_per_s']:.2f} |" in yi
    assert "| ok |" in line_of(result.output, "qwen-7b-chat", "4096")  # recorded rows are unchanged
    shown = {line.split("|")[1].strip() for line in result.output.splitlines() if line.startswith("| ")}
    assert shown - {"row", "---"} == {r.base_name for r in seed.rows}

    result = runner.invoke(main, ["report", str(RECIPES / "max_length_lora.toml"), "-p", "bench", "--db", str(db),
                                  "--only", "yi-6b-chat,qwen-7b-chat[max_length=4096]"])
    assert result.exit_code == 0, result.output
    rows = [line.split("|")[1].strip() for line in result.output.splitlines() if line.startswith("| ")][1:]
    assert sorted(set(rows)) == ["qwen-7b-chat", "yi-6b-chat"] and rows.count("qwen-7b-chat") == 1
    result = runner.invoke(main, ["report", str(RECIPES / "max_length_lora.toml"), "--db", str(db), "--only", "nope"])
    assert result.exit_code == 2 and "--only matches no row: nope" in result.output


def test_timed_steps_get_a_column_only_where_rows_differ(tmp_path):
    store = Store(tmp_path / "steps.db")
    recipe = load_recipe(RECIPES / "batch_size.toml", "bench", check_files=False)
    for i, row in enumerate(recipe.rows):
        m = fake_metrics(i, row, random_weights=True)
        m["timed_steps"] = 9 - 2 * i  # made up: bigger batches, fewer steps under one budget
        store.record(recipe=recipe.name, row=row, repeat=0, status="ok", reason=None, metrics=m,
                     environment=FAKE_GPU, started=0.0)
    md = render(Store(store.path).latest("batch_size"), "md")
    col = headers_index(md, "timed steps")
    assert [line.split("|")[col].strip() for line in md.splitlines() if line.startswith("| lora")] == ["9", "7", "5", "3"]
    same = render(records_with_steps(store.path, 3), "md")
    assert "timed steps" not in same  # every row timed alike: the note under the table says it once


def records_with_steps(db: Path, steps: int) -> list[dict]:
    out = Store(db).latest("batch_size")
    for r in out:
        r["metrics"]["timed_steps"] = steps
    return out


def test_records_of_a_profile_the_recipe_dropped_still_show(db, tmp_path):
    from tunerkit.cli import main

    recipe = tmp_path / "max_length_lora.toml"
    recipe.write_text('[recipe]\nname = "max_length_lora"\n[profiles.cpu]\nmodel = "tiny-llama"\n'
                      '[[row]]\nname = "qwen-7b-chat"\nplugins = ["lora"]\n')
    result = CliRunner().invoke(main, ["report", str(recipe), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "| ok |" in line_of(result.output, "qwen-7b-chat", "4096") and "not run" not in result.output


def test_a_setting_left_out_of_a_rows_identity_shows_its_default(tmp_path):
    """``uncheckpointed_layers`` at 0 is not in a row's stored config (``added_later``); the
    table still shows 0 there beside the rows that set it (fake metrics, no measurement)."""
    store = Store(tmp_path / "fake.db")
    recipe = load_recipe(RECIPES / "beyond_seed" / "checkpointing.toml", "cpu", check_files=False)
    for i, row in enumerate(recipe.rows):
        store.record(recipe=recipe.name, row=row, repeat=0, status="ok", reason=None,
                     metrics=fake_metrics(i, row, random_weights=False), environment=FAKE_CPU, started=0.0)
    assert "uncheckpointed_layers" not in next(r for r in recipe.rows if r.name == "all").config()["settings"]
    md = render(store.latest(recipe.name), "md")
    header = next(line for line in md.splitlines() if line.startswith("| row"))
    assert "| gradient_checkpointing | uncheckpointed_layers |" in header
    assert "| all | smollm2-135m-instruct | true | 0 |" in md
    assert "| 24_left_out | smollm2-135m-instruct | true | 24 |" in md
    assert "| none | smollm2-135m-instruct | false | 0 |" in md


def test_a_row_on_a_sparse_zero_code_preset_is_named_in_a_note(db):
    """A GPTQ preset too large for the disk is written with zero codes; its rows must say so."""
    recs = records(db, "max_length_lora")
    plain = render(recs, "md")
    assert "code zero" not in plain
    ok = [r for r in recs if r["status"] == "ok"]
    ok[0]["metrics"]["preset_zero_codes"] = 1
    md = render(recs, "md")
    assert f"_{ok[0]['row']}: a preset checkpoint too large for the cache's disk, written sparse: every packed code zero" in md


def lora_and_full_at_2e5(tmp_path) -> Store:
    """The quality recipe's lora row at its 2e-4 and full re-run at 2e-5 (fake metrics)."""
    store = Store(tmp_path / "lr.db")
    recipe = load_recipe(RECIPES / "beyond_seed" / "quality.toml", "cpu", check_files=False)
    lora, full = (next(r for r in recipe.rows if r.name == name) for name in ("lora", "full"))
    full_low = dataclasses.replace(full, settings=dataclasses.replace(full.settings, learning_rate=2e-5))
    for i, row in enumerate([lora, full_low]):
        store.record(recipe=recipe.name, row=row, repeat=0, status="ok", reason=None,
                     metrics=fake_metrics(i, row, random_weights=False, quality=True), environment=FAKE_CPU, started=0.0)
    return Store(store.path)


def test_a_row_trained_at_its_own_learning_rate_says_so(tmp_path):
    """Rows of one table that differ in learning rate (one run with ``--set learning_rate=...``)
    get a learning_rate column; a table whose rows share the rate has none (fake metrics)."""
    store = lora_and_full_at_2e5(tmp_path)
    md = render(store.latest("quality"), "md")
    col = headers_index(md, "learning_rate")
    cells = {line.split("|")[1].strip(): line.split("|")[col].strip() for line in md.splitlines()
             if line.startswith(("| lora", "| full"))}
    assert cells == {"lora": "0.0002", "full": "2e-05"}, md
    same = render([r for r in store.latest("quality") if r["row"] == "lora"], "md")
    assert "learning_rate" not in same


def test_a_plotted_row_trained_at_its_own_learning_rate_says_so(tmp_path):
    """Plot labels carry the settings the plotted rows differ in, as the table's columns do:
    a full row re-run at 2e-5 is labelled so, and rows sharing every setting keep their names."""
    from tunerkit.report.plots import row_labels

    records = lora_and_full_at_2e5(tmp_path).latest("quality")
    assert sorted(row_labels(records)) == ["full lr=2e-05", "lora lr=0.0002"]
    assert row_labels([r for r in records if r["row"] == "lora"]) == ["lora"]
