"""``tunerkit plot RECIPE``: figures from the results database, as PNG and SVG.

Which figures a recipe gets depends on what its records hold:

- ``memory_speed``: peak memory against training tokens/s, one labelled point per row,
  the Pareto front (no other row is both faster and smaller) drawn as a line;
- ``max_length``: samples/s, tokens/s and memory against max_length, one line per model
  (ms-swift's numbers dashed beside ours on GPU runs);
- ``metrics``: one bar panel per metric (losses, accuracies, speed, memory, trainable
  parameters), rows side by side: the Tuners table at a glance;
- ``loss_curves``: the training loss of every row, step by step;
- ``series``: every per-step series the rows recorded (the learning rate, the gradient norm,
  a plugin's own), one panel each, one curve per row.

Metrics a plugin declares (``tunerkit.MetricSpec``) get a bar panel, or a series panel.

Rows on random weights (model presets) say so in the title: their losses mean nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from tunerkit.paths import inside
from tunerkit.report.reference import axis_key, point_values, resolve_reference
from tunerkit.report.tables import (RANDOM_NOTE, combine_repeats, declared_specs, differing_settings,
                                    environment_line, flat_metrics, order_by_row, show_seed, split_name)
from tunerkit.series import CORE_SERIES, series_of

DEFAULT_DB = "runs/tunerkit.db"
FORMATS = ("png", "svg")


# ---------------------------------------------------------------------------
# what is plotted


def memory_gib(m: dict) -> tuple[float | None, str]:
    """(largest device's peak, what it is): reserved on GPUs (ms-swift's measure), else RSS."""
    for key, what in (("peak_reserved_gib", "peak reserved GiB (largest GPU)"),
                      ("peak_allocated_gib", "peak allocated GiB (largest GPU)"),
                      ("peak_rss_gib", "peak RSS GiB (CPU process)")):
        if m.get(key) is not None:
            return m[key], what
    return None, "memory GiB"


def seed_memory(ref: dict) -> float | None:
    value = ref.get("memory_gib")
    if isinstance(value, list):
        return max(value) if value else None
    return value


def point_label(record: dict) -> str:
    """Row name with its sweep values: ``qwen-7b-chat[max_length=512]`` -> ``qwen-7b-chat 512``."""
    base, keys = split_name(record["row"])
    if not keys:
        return base
    values = point_values(record.get("config") or {})
    return base + " " + ",".join(axis_key(values[k]) for k in keys if k in values)


# Short names for the settings a label adds; a setting not listed keeps its own name.
SHORT_SETTING = {"learning_rate": "lr", "gradient_accumulation_steps": "ga", "batch_size": "bs",
                 "max_length": "len"}


def row_labels(records: list[dict]) -> list[str]:
    """Each record's label, in order: its ``point_label`` plus the settings that differ between
    the plotted rows without being in the row's name, as the table's columns do (a row re-run
    at another learning rate reads ``full lr=2e-05``, not the recipe's row)."""
    values = [point_values(r.get("config") or {}) for r in records]
    shown = differing_settings(values)
    labels = []
    for r, v in zip(records, values):
        named = split_name(r["row"])[1]
        extra = [f"{SHORT_SETTING.get(k, k)}={axis_key(v[k])}" for k in shown if k in v and k not in named]
        labels.append(" ".join([point_label(r), *extra]))
    return labels


def is_random(records: list[dict]) -> bool:
    return any((r.get("metrics") or {}).get("random_weights") for r in records if r["status"] == "ok")


def title_of(what: str, records: list[dict]) -> str:
    recipe, profile = records[0].get("recipe"), records[0].get("profile")
    title = f"{recipe}" + (f" ({profile})" if profile else "") + f": {what}"
    env = environment_line(records)
    lines = [title]
    if env:
        lines.append(env)
    if is_random(records):
        lines.append(RANDOM_NOTE)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# labels that do not overlap


def place_labels(ax, xs, ys, labels, fontsize: float = 8.0) -> None:
    """Annotate points so that no label overlaps another label or any point.

    Greedy: labels of the highest points first; each tries offsets on growing rings around
    its point and takes the first whose box is free and inside the axes; a leader line joins
    labels placed further out. When no spot is free, the one overlapping least is used.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    points = ax.transData.transform(list(zip(xs, ys)))
    taken = [Bbox.from_bounds(px - 5, py - 5, 10, 10) for px, py in points]
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent(renderer))
    frame = ax.get_window_extent(renderer)
    angles = [math.radians(a) for a in (45, -45, 135, -135, 90, -90, 0, 180, 20, -20, 160, -160, 70, -70, 110, -110)]
    candidates = [(round(r * math.cos(a), 1), round(r * math.sin(a), 1))
                  for r in (6, 14, 24, 36, 50, 66, 85, 105, 130, 160) for a in angles]
    order = sorted(range(len(labels)), key=lambda i: (-points[i][1], points[i][0]))
    for i in order:
        best = None  # (overlap area, offset)
        for dx, dy in candidates:
            box = _label_box(ax, renderer, labels[i], xs[i], ys[i], dx, dy, fontsize)
            outside = (box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1)
            overlap = sum(_overlap_area(box, other) for other in taken) + (1e6 if outside else 0)
            if best is None or overlap < best[0]:
                best = (overlap, (dx, dy), box)
            if overlap == 0:
                break
        _, (dx, dy), box = best
        far = math.hypot(dx, dy) > 10
        ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                    ha=_align(dx, "left", "right"), va=_align(dy, "bottom", "top"), fontsize=fontsize,
                    arrowprops=dict(arrowstyle="-", color="0.6", lw=0.6, shrinkA=0, shrinkB=3) if far else None)
        taken.append(box)


def _align(offset: float, positive: str, negative: str) -> str:
    return positive if offset > 0.5 else negative if offset < -0.5 else "center"


def _label_box(ax, renderer, label, x, y, dx, dy, fontsize):
    """The display-space box a label would take at offset (dx, dy) points, with a little air."""
    text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                       ha=_align(dx, "left", "right"), va=_align(dy, "bottom", "top"), fontsize=fontsize)
    box = text.get_window_extent(renderer).expanded(1.04, 1.2)
    text.remove()
    return box


def _overlap_area(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


# ---------------------------------------------------------------------------
# figures


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both less memory (x) and more speed (y)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_memory_speed(records: list[dict]):
    return _pareto_plot(records, "tokens_per_s", "training speed: tokens/s over timed steps  (more is better)",
                        "dominated (another row is faster and smaller)", "memory vs training speed")


def plot_memory_accuracy(records: list[dict]):
    """Held-out accuracy against memory, the Pareto view of PEFT's method comparison (real weights only)."""
    if is_random(records):
        return None
    return _pareto_plot(records, "accuracy", "accuracy on held-out problems  (more is better)",
                        "dominated (another row is more accurate and smaller)", "memory vs held-out accuracy")


def _pareto_plot(records: list[dict], key: str, ylabel: str, dominated: str, what: str):
    import matplotlib.pyplot as plt

    rows = []
    for r in records:
        m = flat_metrics(r)
        mem, memory_what = memory_gib(m)
        if r["status"] == "ok" and mem is not None and m.get(key) is not None:
            rows.append((r, mem, m[key], memory_what))
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(10, 6.5), layout="constrained")
    xs = [mem for _, mem, _, _ in rows]
    ys = [y for _, _, y, _ in rows]
    front = set(pareto_front(list(zip(xs, ys))))
    others = [i for i in range(len(rows)) if i not in front]
    ax.scatter([xs[i] for i in others], [ys[i] for i in others], s=36, facecolors="white", edgecolors="0.45",
               label=dominated, zorder=3)
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=44, color="tab:blue", label="Pareto front", zorder=4)
    line = sorted(front, key=lambda i: xs[i])
    ax.step([xs[i] for i in line], [ys[i] for i in line], where="post", color="tab:blue", lw=1, alpha=0.6, zorder=2)
    ax.set_xlabel(f"memory: {rows[0][3]}  (less is better)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.2)
    ax.set_xlim(left=max(ax.get_xlim()[0], 0))  # no negative GiB or tokens/s from the margins
    ax.set_ylim(bottom=max(ax.get_ylim()[0], 0))
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title_of(what, records), fontsize=10)
    place_labels(ax, xs, ys, row_labels([r for r, *_ in rows]))
    return fig


def plot_max_length(records: list[dict]):
    import matplotlib.pyplot as plt

    ok = [r for r in records if "max_length" in ((r.get("config") or {}).get("settings") or {})]
    lengths = {r["config"]["settings"]["max_length"] for r in ok}
    if len(lengths) < 2:
        return None
    with_seed = show_seed(records)
    series: dict[str, list[dict]] = {}
    for r in ok:
        key = f"{r['config']['settings']['model']} ({'+'.join(r['config'].get('plugins') or []) or '-'})"
        series.setdefault(key, []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.8), layout="constrained")
    panels = [("samples/s", lambda m: m.get("samples_per_s"), lambda ref: ref.get("samples_per_s")),
              ("tokens/s", lambda m: m.get("tokens_per_s"), None),
              (None, lambda m: memory_gib(m)[0], seed_memory)]
    colors = _colors(len(series))
    mem_label = next((memory_gib(flat_metrics(r))[1] for r in ok if memory_gib(flat_metrics(r))[0] is not None),
                     "memory GiB")
    any_seed = any_failed = False
    for (name, rows), color in zip(series.items(), colors):
        rows = sorted(rows, key=lambda r: r["config"]["settings"]["max_length"])
        for ax, (label, ours, seed) in zip(axes, panels):
            pts = [(r["config"]["settings"]["max_length"], ours(flat_metrics(r))) for r in rows if r["status"] == "ok"]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=4, color=color, label=name)
            if seed is not None and with_seed:
                spts = [(r["config"]["settings"]["max_length"],
                         seed(resolve_reference(r.get("reference"), r["config"]))) for r in rows]
                spts = [(x, y) for x, y in spts if y is not None]
                if spts:
                    any_seed = True
                    ax.plot(*zip(*spts), ls="--", lw=1, marker=".", color=color, alpha=0.55)
            failed = [r["config"]["settings"]["max_length"] for r in rows if r["status"] == "failed"]
            if failed and ax is axes[2]:
                any_failed = True
                ax.scatter(failed, [0] * len(failed), marker="x", s=60, color=color, zorder=5, clip_on=False)
    for ax, (label, _, _) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(lengths), [str(x) for x in sorted(lengths)])
        ax.set_xlabel("max_length (tokens; longer samples deleted, as ms-swift did)")
        ax.set_ylabel(label or mem_label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_title("training speed, samples/s")
    axes[1].set_title("training speed, tokens/s")
    axes[2].set_title("memory" + ("  (x = failed, e.g. OOM)" if any_failed else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    if any_seed:
        from matplotlib.lines import Line2D

        handles += [Line2D([], [], color="0.3"), Line2D([], [], color="0.3", ls="--")]
        labels += ["ours (solid)", "ms-swift, A100 / torch 2.1 (dashed)"]
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(title_of("speed and memory against max_length", records), fontsize=10)
    return fig


#: (metric key, panel title, better) of the bar panels, in order
BAR_METRICS = [
    ("train_loss", "train loss", "lower"),
    ("eval_loss", "eval loss", "lower"),
    ("accuracy", "accuracy (builtin task)", "higher"),
    ("gsm8k_acc", "gsm8k accuracy", "higher"),
    ("arc_acc", "ARC accuracy", "higher"),
    ("ceval_weighted_acc", "C-Eval weighted accuracy", "higher"),
    ("tokens_per_s", "training tokens/s", "higher"),
    ("samples_per_s", "training samples/s", "higher"),
    ("memory", "peak memory GiB", "lower"),
    ("infer_tokens_per_s", "decoding tokens/s", "higher"),
    ("trainable_params_m", "trainable params (M)", ""),
]


#: metrics that only mean something on trained real weights
QUALITY = {"train_loss", "eval_loss", "accuracy", "gsm8k_acc", "arc_acc", "ceval_weighted_acc"}


def plot_metric_bars(records: list[dict]):
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["status"] == "ok"]
    if len(rows) < 2:
        return None
    metrics = [flat_metrics(r) for r in rows]
    with_seed = show_seed(records)
    refs = [resolve_reference(r.get("reference"), r.get("config") or {}) for r in rows]

    def value(m, key):
        return memory_gib(m)[0] if key == "memory" else m.get(key)

    def seed_value(ref, key):
        return seed_memory(ref) if key == "memory" else ref.get(key)

    panels = _bar_panels(records, metrics, value)
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    height = max(2.2, 0.28 * len(rows) + 1.2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols + 1.5, height * nrows), layout="constrained",
                             squeeze=False)
    labels = row_labels(rows)
    positions = list(range(len(rows)))
    any_seed = False
    for index, (key, title, better) in enumerate(panels):
        ax = axes[index // ncols][index % ncols]
        vals = [value(m, key) for m in metrics]
        ax.barh(positions, [v if v is not None else 0 for v in vals], color="tab:blue", alpha=0.8, height=0.7)
        for y, v in zip(positions, vals):
            if v is not None:
                ax.text(v, y, " " + bar_number(v), va="center", fontsize=7)
        present = [v for v in vals if v]
        if present and min(present) > 0 and max(present) / min(present) > 100:
            ax.set_xscale("log")  # e.g. trainable params: full 7,721 M beside LoRA's 18 M
        if with_seed:
            seeds = [(y, seed_value(ref, key)) for y, ref in zip(positions, refs)]
            seeds = [(y, s) for y, s in seeds if s is not None]
            if seeds:
                any_seed = True
                ax.scatter([s for _, s in seeds], [y for y, _ in seeds], marker="|", s=160, color="black", zorder=4,
                           label="ms-swift, A100 / torch 2.1")
        ax.set_yticks(positions, labels if index % ncols == 0 else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title + (f"  ({better} is better)" if better else ""), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.18)
    for index in range(len(panels), nrows * ncols):
        axes[index // ncols][index % ncols].axis("off")
    if any_seed:
        handles = next(h for h in (ax.get_legend_handles_labels() for ax in axes.flat) if h[0])
        fig.legend(*handles, loc="outside lower center", fontsize=8)
    fig.suptitle(title_of("every metric per row", records), fontsize=10)
    return fig


def _bar_panels(records: list[dict], metrics: list[dict], value) -> list[tuple]:
    """(key, title, better) of every metric some row has: the built-in ones, then the plugins' declared ones."""
    memory_what = next((memory_gib(m)[1] for m in metrics if memory_gib(m)[0] is not None), "memory GiB")
    built_in = {key for key, _, _ in BAR_METRICS}
    declared = [(s.name, s.header, s.better) for s in declared_specs(records) if not s.series and s.name not in built_in]
    panels = [p if p[0] != "memory" else (p[0], memory_what, p[2])
              for p in BAR_METRICS + declared if any(_is_number(value(m, p[0])) for m in metrics)]
    if all(m.get("random_weights") for m in metrics):  # losses and accuracies of random weights mean nothing
        panels = [p for p in panels if p[0] not in QUALITY]
    return panels


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def bar_number(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def plot_loss_curves(records: list[dict]):
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["status"] == "ok" and (r.get("metrics") or {}).get("train_loss_curve")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(11, 6), layout="constrained")
    styles = ["-", "--", ":", "-."]
    for i, (r, color, label) in enumerate(zip(rows, _colors(len(rows)), row_labels(rows))):
        curve = r["metrics"]["train_loss_curve"]
        ax.plot(range(1, len(curve) + 1), curve, color=color, ls=styles[(i // 10) % len(styles)], lw=1.4,
                marker="o" if len(curve) <= 12 else None, ms=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (token-mean cross-entropy)")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, ncols=1 if len(rows) <= 24 else 2)
    ax.set_title(title_of("training loss per row", records), fontsize=10)
    return fig


def plot_series(records: list[dict]):
    """One panel per recorded series, one curve per row (step on x)."""
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["status"] == "ok" and series_of(r.get("metrics"))]
    names = list(dict.fromkeys(n for r in rows for n in series_of(r["metrics"])))
    if not names:
        return None
    specs = {s.name: s for s in (*CORE_SERIES, *declared_specs(records)) if s.series}
    ncols = min(2, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols + 2.5, 3.6 * nrows), layout="constrained",
                             squeeze=False)
    colors = _colors(len(rows))
    labels = row_labels(rows)
    for index, name in enumerate(names):
        ax = axes[index // ncols][index % ncols]
        for r, color, label in zip(rows, colors, labels):
            points = [(s, v) for s, v in series_of(r["metrics"]).get(name, []) if _is_number(v)]
            if points:
                ax.plot(*zip(*points), color=color, lw=1.3, marker="o" if len(points) <= 12 else None, ms=3,
                        label=label)
        spec = specs.get(name)
        title = spec.header if spec else name
        if spec is not None and spec.better:
            title += f"  ({spec.better} is better)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for index in range(len(names), nrows * ncols):
        axes[index // ncols][index % ncols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle(title_of("per-step series per row", records), fontsize=10)
    return fig


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


FIGURES = {
    "memory_speed": plot_memory_speed,
    "memory_accuracy": plot_memory_accuracy,
    "max_length": plot_max_length,
    "metrics": plot_metric_bars,
    "loss_curves": plot_loss_curves,
    "series": plot_series,
}


def make_plots(records: list[dict], out_dir: Path) -> list[Path]:
    """Every figure that applies, for each (recipe, profile) in ``records``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("recipe"), r.get("profile")), []).append(r)
    for (recipe, profile), group in groups.items():
        group = order_by_row(combine_repeats(group))
        for kind, make in FIGURES.items():
            fig = make(group)
            if fig is None:
                continue
            stem = "-".join(str(p) for p in (recipe, profile, kind) if p)
            for fmt in FORMATS:
                path = inside(out_dir, f"{stem}.{fmt}")  # names come from the database: never a path
                fig.savefig(path, dpi=130)
                written.append(path)
            plt.close(fig)
    return written


@click.command(name="plot")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="folder for the figures [default: runs/plots/RECIPE]")
@click.option("--profile", "-p", help="only records of this profile")
def command(recipe, db, out_dir, profile):
    """Figures (PNG and SVG) of RECIPE's recorded results: a recipe file or a recipe name."""
    from tunerkit.report import recorded

    name = recipe.stem
    if recipe.suffix == ".toml":
        from tunerkit.recipe import read_toml

        name = (read_toml(recipe).get("recipe") or {}).get("name", recipe.stem)
    records = recorded(db, name, profile)
    written = make_plots(records, out_dir or inside(Path("runs") / "plots", name))
    if not written:
        click.echo(f"nothing to plot for {name}: no finished rows with metrics")
    for path in written:
        click.echo(str(path))
