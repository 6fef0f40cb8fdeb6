"""Tables from the results database, shaped like ms-swift's, our numbers beside ms-swift's.

One table per (recipe, profile). Columns, left to right:

- what the row is: its name, the model (ms-swift's first column), every sweep axis and
  every setting or plugin option that differs between the rows (ms-swift's "Max Length",
  "Batch Size", "LoRA Rank" ... columns), the plugins when they differ;
- the status: ok, ``failed: <reason>`` (OOM and others), ``not implemented: <reason>``,
  ``not run`` (a row of the recipe with no record in the store);
- each metric as "ours" then, where ms-swift published it, "[ms-swift†]". ms-swift's numbers
  come from the recipe's ``reference`` tables (see :mod:`tunerkit.report.reference`) and
  follow ms-swift's own accounting, so they are shown for GPU runs only.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from tunerkit.report.memory_vs_seed import memory_note
from tunerkit.report.reference import axis_key, point_values, resolve_reference

SEED_MARK = "[ms-swift†]"
SEED_NOTE = ("† ms-swift: A100 / torch 2.1 / its accounting (samples/s incl. eval, "
             "reserved memory), from ms-swift 2.x's Benchmark.md")
OURS_NOTE = ("ours: samples/s and tokens/s over timed optimizer steps (warm-up and evaluation excluded), "
             "original samples counted whatever the batching; memory = peak per device, never summed")
#: status of a row the recipe has and the store does not (shown by reports, never stored)
NOT_RUN = "not run"
RANDOM_NOTE = "random weights (model presets): speed and memory only; losses and accuracies mean nothing"
ZERO_CODES_NOTE = ("{rows}: a preset checkpoint too large for the cache's disk, written sparse: every packed "
                   "code zero, only the scales random (the dense checkpoint's speed and memory)")

#: settings shown as their own column when they differ between the rows of a table (a row run
#: with its own learning rate, e.g. by ``--set`` on one invocation, must not pass as the recipe's)
AXIS_SETTINGS = ("max_length", "batch_size", "gradient_accumulation_steps", "learning_rate", "attention",
                 "gradient_checkpointing", "uncheckpointed_layers",
                 "gpus", "dataset", "dtype")
#: at most this many differing plugin options get a column each; more go into one "options" column
MAX_OPTION_COLUMNS = 3


# ---------------------------------------------------------------------------
# metrics: what is shown, ours and ms-swift's


def flat_metrics(record: dict) -> dict:
    """Metrics with per-device memory folded to the largest device (each GPU's own peak)."""
    m = dict(record.get("metrics") or {})
    for entry in m.get("memory") or []:
        for key in ("peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib"):
            if key in entry:
                m[key] = max(m.get(key, 0.0), entry[key])
    return m


def per_device(key: str) -> Callable[[dict], Any]:
    """A memory figure of every device: one number, or a list (one per GPU) like ms-swift's 73.71+78.54."""
    def get(m: dict):
        values = [e[key] for e in m.get("memory") or [] if key in e]
        if not values:
            return m.get(key)
        return values[0] if len(values) == 1 else values
    return get


def steps_per_s(m: dict) -> float | None:
    """Optimizer steps per second over the timed steps (ms-swift's "iter/s")."""
    if "steps_per_s" in m:
        return m["steps_per_s"]
    if m.get("samples_per_s") and m.get("train_samples") and m.get("optimizer_steps"):
        return m["samples_per_s"] * m["optimizer_steps"] / m["train_samples"]
    return None


@dataclass(frozen=True)
class Metric:
    header: str
    ours: str | Callable[[dict], Any] | None  # a metrics key or a function of the flat metrics
    seed: str | None = None  # the reference key
    kind: str = "num"  # num | int | acc | pct
    #: show our column only where ms-swift published this figure (context columns)
    only_with_seed: bool = False
    #: show our column only where rows differ in it (how long each row was timed)
    only_when_varies: bool = False

    def our_value(self, m: dict):
        if self.ours is None:
            return None
        return self.ours(m) if callable(self.ours) else m.get(self.ours)


METRICS = [
    Metric("trainable params (M)", "trainable_params_m", "trainable_params_m"),
    Metric("trainable %", "trainable_pct", "trainable_pct", kind="pct"),
    Metric("samples/s", "samples_per_s", "samples_per_s"),
    Metric("tokens/s", "tokens_per_s", kind="int"),
    Metric("timed steps", "timed_steps", kind="int", only_when_varies=True),
    Metric("iter/s", steps_per_s, "iter_per_s", only_with_seed=True),
    Metric("steps", "optimizer_steps", "total_steps", kind="int", only_with_seed=True),
    Metric("reserved GiB", per_device("peak_reserved_gib"), "memory_gib"),
    Metric("allocated GiB", per_device("peak_allocated_gib")),
    Metric("peak RSS GiB", "peak_rss_gib"),
    Metric("train loss", "train_loss", "train_loss", kind="loss"),
    Metric("eval loss", "eval_loss", "eval_loss", kind="loss"),
    Metric("accuracy", "accuracy", kind="acc"),
    Metric("model TFLOP/s", "model_tflops_per_s", kind=".0f"),
    Metric("MFU %", "mfu_pct", kind=".1f"),
    Metric("MFU % of datasheet", "mfu_datasheet_pct", kind=".1f"),
    Metric("infer tokens/s", "infer_tokens_per_s", "infer_tokens_per_s"),
    Metric("gsm8k acc", "gsm8k_acc", "gsm8k_acc", kind="acc"),
    Metric("arc acc", "arc_acc", "arc_acc", kind="acc"),
    Metric("ceval weighted acc", "ceval_weighted_acc", "ceval_weighted_acc", kind="acc"),
]


def declared_specs(records: list[dict]):
    """The ``MetricSpec`` of every metric the rows' plugins declare, once each, in row order
    (plugins found through the installed entry points; an uninstalled one declares nothing)."""
    from tunerkit.plugins import registry

    plugins = registry()
    seen: dict[str, Any] = {}
    for r in records:
        for name in (r.get("config") or {}).get("plugins") or []:
            for spec in getattr(plugins.get(name), "metrics", ()):
                seen.setdefault(spec.name, spec)
    return list(seen.values())


def declared_metrics(records: list[dict]) -> list[Metric]:
    """Columns for the numbers plugins declare, after the built-in ones (series are curves, not cells)."""
    built_in = {m.ours for m in METRICS if isinstance(m.ours, str)}
    arrows = {"higher": " ↑", "lower": " ↓", "": ""}
    return [Metric(spec.header + arrows[spec.better], spec.name, kind=spec.format)
            for spec in declared_specs(records) if not spec.series and spec.name not in built_in]


#: the named formats of fmt_value; any other kind is a format spec (".3f") from a MetricSpec
NAMED_KINDS = ("num", "int", "acc", "loss", "pct")


def fmt_value(value: Any, kind: str = "num") -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)):
        return "+".join(fmt_value(v, kind) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if kind not in NAMED_KINDS:
        return format(value, kind)
    if kind == "int" and (isinstance(value, int) or abs(value) >= 100):
        return f"{value:,.0f}"
    if kind in ("acc", "loss"):
        return f"{value:.3f}"
    if kind == "pct":
        return f"{value:.4f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


# ---------------------------------------------------------------------------
# rows: what each line is


_SWEEP = re.compile(r"^(?P<base>.*)\[(?P<axes>[^\[\]]*)\]$")


def split_name(name: str) -> tuple[str, list[str]]:
    """``"qwen-7b-chat[max_length=512]"`` -> ("qwen-7b-chat", ["max_length"])."""
    match = _SWEEP.match(name)
    if not match:
        return name, []
    keys = [part.split("=", 1)[0] for part in match["axes"].split(",") if "=" in part]
    return match["base"], keys


FIRST_MARK = "‡"
FIRST_NOTE = (f"{FIRST_MARK} its timed steps met sequence lengths new to its process (the first row a process "
              "trained, or one after a model of other attention heads), with torch's cuDNN attention allowed: cuDNN "
              "builds a plan for each length it meets first, and on one H200 such rows ran 1.4-1.6x slower than the "
              "same config later in a process (docs/benchmarks.md); compare it with care")
#: the share of a row's timed seconds that plans for new lengths must take for the mark
PLAN_SHARE_MARKED = 0.05


MFU_NOTE = ("MFU: model FLOPs per real token (4N for every weight's forward and input gradient, 2N more for "
            "trained weights, adapters at 6N, causal attention; no recompute, no padding) times tokens/s per GPU, "
            "over the device's practical dense bf16 matmul rate ({practical}) and, for the datasheet column, its "
            "datasheet peak ({sheet})")
ISOLATED_NOTE = ("{which} trained in a process of its own (isolation): no such row carries memory, compiled "
                 "code or kernel plans from the row before it, and each pays its own warm-up")


def mfu_note(records: list[dict]) -> str | None:
    """What the MFU columns divide by, with the ceilings the rows' devices used; None without MFU."""
    mfu = [r.get("metrics") or {} for r in records if (r.get("metrics") or {}).get("mfu_pct") is not None]
    if not mfu:
        return None

    def rates(key: str) -> str:
        return ", ".join(f"{v:g} TFLOP/s" for v in sorted({m[key] for m in mfu if m.get(key)})) or "none stated"

    return MFU_NOTE.format(practical=rates("mfu_ceiling_tflops"), sheet=rates("mfu_datasheet_tflops"))


def isolated(record: dict) -> bool:
    return (record.get("metrics") or {}).get("isolation") == "process"


def plan_share(metrics: dict) -> float | None:
    """The share of a row's timed seconds that cuDNN's plans for the lengths its timed steps met
    first would take (``timed_new_input_shapes`` plans at the estimate's cost each); None where
    the record does not count them (before 2026-12-07) or times nothing."""
    from tunerkit.estimate import SHAPE_PLAN_SECONDS

    new = metrics.get("timed_new_input_shapes")
    steps = metrics.get("step_seconds") or []
    timed = sum(steps[metrics.get("timing_warmup_steps") or 0:])
    if new is None or timed <= 0:
        return None
    return new * SHAPE_PLAN_SECONDS / timed


def paid_cudnn_plans(record: dict) -> bool:
    """A GPU row whose timed steps met lengths new to its process with SDPA free to choose cuDNN
    attention, whose plan per new length is what slows such a row: where the record counts
    them, plans worth at least PLAN_SHARE_MARKED of its timed time (a row after another model's
    rows meets every length anew); in older records, the first row its process trained. CPU
    rows and records that say neither are not flagged; nor is a row whose ``sdpa_kernels``
    leave cuDNN out."""
    metrics = record.get("metrics") or {}
    pinned = metrics.get("sdpa_kernels")
    if not (record["status"] == "ok" and ran_on_gpu(record) is True and (not pinned or "cudnn" in pinned.split(","))):
        return False
    share = plan_share(metrics)
    if share is not None:
        return share >= PLAN_SHARE_MARKED
    return metrics.get("rows_before_in_process") == 0


def status_text(record: dict, flag_random: bool) -> str:
    status = record["status"]
    reason = " ".join((record.get("reason") or "").split())
    if status == "ok":
        text = "ok"
    elif status == "pending":
        text = reason if reason.startswith("not implemented") else f"not implemented: {reason}".rstrip(": ")
    elif status == NOT_RUN:
        text = NOT_RUN
    elif status == "skipped":
        text = reason or "skipped"
    else:
        text = f"failed: {reason or 'unknown reason'}"
    if flag_random and (record.get("metrics") or {}).get("random_weights"):
        text += " (random weights)"
    if paid_cudnn_plans(record):
        text += f" {FIRST_MARK}"
    return text


def ran_on_gpu(record: dict) -> bool | None:
    env = record.get("environment") or {}
    if not env:
        return None  # pending rows record no environment
    return "cuda" in env or str(env.get("device_name", "")).lower().startswith(("nvidia", "amd"))


def combine_repeats(records: list[dict]) -> list[dict]:
    """One record per row: the median of every numeric metric over its ok repeats."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("recipe"), r.get("profile"), r["row"]), []).append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        ok = [r for r in group if r["status"] == "ok"]
        base = dict(ok[0] if ok else group[-1])
        if len(ok) > 1:
            metrics = dict(base["metrics"])
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values = [r["metrics"].get(key) for r in ok if isinstance(r["metrics"].get(key), (int, float))]
                    metrics[key] = statistics.median(values)
            base["metrics"] = metrics
        base["repeats"] = f"{len(ok)}/{len(group)} ok"
        out.append(base)
    return out


def order_by_row(records: list[dict]) -> list[dict]:
    """Sweep points of one row stay together, rows in the order they first appear."""
    first: dict[str, int] = {}
    for i, r in enumerate(records):
        first.setdefault(split_name(r["row"])[0], i)
    return sorted(records, key=lambda r: first[split_name(r["row"])[0]])


@dataclass
class Column:
    header: str
    cell: Callable[[dict], str]


def differing_settings(values: list[dict], keys=AXIS_SETTINGS) -> list[str]:
    """The ``keys`` whose value differs between rows (each row's ``point_values``): the
    table's setting columns and the plots' labels both name these."""
    return [k for k in keys if len({axis_key(v[k]) for v in values if k in v}) > 1]


def label_columns(records: list[dict]) -> list[Column]:
    values = [point_values(r.get("config") or {}) for r in records]
    by_id = {id(r): v for r, v in zip(records, values)}
    swept: list[str] = []
    for r in records:
        for key in split_name(r["row"])[1]:
            if key not in swept:
                swept.append(key)

    columns = [Column("row", lambda r: split_name(r["row"])[0]),
               Column("model", lambda r: str(by_id[id(r)].get("model", "")))]
    settings = [k for k in swept if "." not in k and k != "model"]
    settings += [k for k in differing_settings(values) if k not in settings]
    for key in settings:
        columns.append(Column(key, lambda r, k=key: axis_key(by_id[id(r)][k]) if k in by_id[id(r)] else ""))
    plugin_sets = {"+".join((r.get("config") or {}).get("plugins") or []) for r in records}
    if len(plugin_sets) > 1:
        columns.append(Column("plugins", lambda r: "+".join((r.get("config") or {}).get("plugins") or []) or "-"))
    options = [k for k in swept if "." in k]
    option_keys = sorted({k for v in values for k in v if "." in k})
    options += [k for k in differing_settings(values, option_keys) if k not in options]
    if 0 < len(options) <= MAX_OPTION_COLUMNS:
        for key in options:
            columns.append(Column(key, lambda r, k=key: axis_key(by_id[id(r)][k]) if k in by_id[id(r)] else ""))
    elif options:
        columns.append(Column("options", lambda r: " ".join(
            f"{k}={axis_key(by_id[id(r)][k])}" for k in options if k in by_id[id(r)])))
    if any("repeats" in r for r in records):
        columns.append(Column("repeats", lambda r: r.get("repeats", "1/1 ok")))
    return columns


# ---------------------------------------------------------------------------
# the table


def show_seed(records: list[dict]) -> bool:
    """ms-swift's numbers belong beside GPU runs; a CPU run of a small model is another experiment."""
    where = [ran_on_gpu(r) for r in records]
    if any(w is True for w in where):
        return True
    if any(w is False for w in where):
        return False
    return all(r.get("profile") != "cpu" for r in records)  # only pending rows: go by the profile's name


def table_rows(records: list[dict], seed: bool | None = None, seed_header: str = SEED_MARK
               ) -> tuple[list[str], list[list[str]]]:
    """(headers, lines) of one table; ``seed`` forces ms-swift's columns on or off."""
    records = order_by_row(combine_repeats(records))
    metrics = [flat_metrics(r) for r in records]
    with_seed = show_seed(records) if seed is None else seed
    refs = [resolve_reference(r.get("reference"), r.get("config") or {}) if with_seed else {} for r in records]
    ok = [r for r in records if r["status"] == "ok"]
    all_random = bool(ok) and all((r.get("metrics") or {}).get("random_weights") for r in ok)

    columns = label_columns(records)
    columns.append(Column("status", lambda r: status_text(r, flag_random=not all_random)))
    for metric in METRICS + declared_metrics(records):
        has_seed = metric.seed is not None and any(metric.seed in ref for ref in refs)
        values = [metric.our_value(m) for m in metrics]
        has_ours = any(v is not None for v in values)
        if metric.only_when_varies and len({v for v in values if v is not None}) < 2:
            has_ours = False
        if has_ours and (has_seed or not metric.only_with_seed):
            columns.append(Column(metric.header, _cell(metric, records, metrics, ours=True)))
        if has_seed:
            columns.append(Column(f"{metric.header} {seed_header}", _cell(metric, records, refs, ours=False)))
    if any("note" in ref for ref in refs):
        by_id = {id(r): ref for r, ref in zip(records, refs)}
        columns.append(Column(f"note {seed_header}", lambda r: str(by_id[id(r)].get("note", ""))))

    headers = [c.header for c in columns]
    body = [[c.cell(r) for c in columns] for r in records]
    return headers, body


def _cell(metric: Metric, records: list[dict], sources: list[dict], ours: bool) -> Callable[[dict], str]:
    by_id = {id(r): s for r, s in zip(records, sources)}

    def cell(record: dict) -> str:
        source = by_id[id(record)]
        value = metric.our_value(source) if ours else source.get(metric.seed)
        return fmt_value(value, metric.kind)

    return cell


# ---------------------------------------------------------------------------
# output formats


def _groups(records: list[dict]) -> list[list[dict]]:
    keys = list(dict.fromkeys((r.get("recipe"), r.get("profile")) for r in records))
    return [[r for r in records if (r.get("recipe"), r.get("profile")) == key] for key in keys]


def environment_line(records: list[dict]) -> str:
    env = next((r["environment"] for r in records if r.get("environment")), None)
    if not env:
        return ""
    versions = env.get("versions") or {}
    parts = [env.get("device_name", "")]
    if env.get("gpu_count"):
        parts[0] += f" x{env['gpu_count']}" if env["gpu_count"] > 1 else ""
    for pkg in ("torch", "transformers", "peft"):
        if pkg in versions:
            parts.append(f"{pkg} {versions[pkg]}")
    if env.get("git_revision"):
        parts.append(f"tunerkit {env['git_revision']}")
    return ", ".join(p for p in parts if p)


def timing_note(records: list[dict]) -> str | None:
    """How long the timed part of each row was: a table of 3 timed steps reads differently from one of 300."""
    steps = [(r.get("metrics") or {}).get("timed_steps") for r in records if r["status"] == "ok"]
    steps = [s for s in steps if isinstance(s, int)]
    if not steps:
        return None
    budgets = {((r.get("config") or {}).get("settings") or {}).get("token_budget") for r in records if r["status"] == "ok"}
    span = f"{min(steps)}" if min(steps) == max(steps) else f"{min(steps)}–{max(steps)}"
    text = f"timed over {span} optimizer step{'' if max(steps) == 1 else 's'} a row"
    if len(budgets) == 1 and None not in budgets:
        text += f" (token budget {next(iter(budgets)):,} training tokens a row)"
    return text


def markdown_table(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in body]
    return "\n".join(lines)


def busy_note(records: list[dict]) -> str | None:
    """Rows whose machine had more runnable work than cores (load average at the row's start or
    end): their speed columns show the sharing, not only the method's cost."""
    busy = []
    for r in records:
        load = (r.get("environment") or {}).get("load_average") or {}
        peak = max((v for v in (load.get("start"), load.get("end")) if isinstance(v, (int, float))), default=None)
        if peak is not None and load.get("cpu_count") and peak > load["cpu_count"]:
            busy.append(f"{r['row']} ({peak:.1f} on {load['cpu_count']} cores)")
    if not busy:
        return None
    return "the CPU was shared with other work (load average above the core count) during: " + ", ".join(busy)


def render_markdown(records: list[dict]) -> str:
    parts = []
    groups = _groups(records)
    for group in groups:
        profile = group[0].get("profile")
        env = environment_line(group)
        if len(groups) > 1 or profile:
            parts.append(f"### profile: {profile or 'none'}" + (f" ({env})" if env else ""))
        elif env:
            parts.append(f"_{env}_")
        ok = [r for r in group if r["status"] == "ok"]
        if ok and all((r.get("metrics") or {}).get("random_weights") for r in ok):
            parts.append(f"All rows: {RANDOM_NOTE}.")
        headers, body = table_rows(group)
        parts.append(markdown_table(headers, body))
        notes = [OURS_NOTE]
        timing = timing_note(group)
        if timing:
            notes.append(timing)
        if any(SEED_MARK in h for h in headers):
            notes.append(SEED_NOTE)
            notes.extend(filter(None, [memory_note(group)]))
        elif any(r.get("reference") for r in group):
            notes.append("ms-swift's published numbers are not shown: this profile ran on CPU, not on "
                         "ms-swift's hardware and models")
        if any(paid_cudnn_plans(r) for r in group):
            notes.append(FIRST_NOTE)
        mfu = mfu_note(group)
        if mfu:
            notes.append(mfu)
        apart = [r["row"] for r in group if isolated(r)]
        if apart:
            notes.append(ISOLATED_NOTE.format(which="every row" if len(apart) == len(group)
                                              else "of these rows, " + ", ".join(apart) + " each"))
        if busy_note(group):
            notes.append(busy_note(group))
        if any("(random weights)" in line[headers.index("status")] for line in body):
            notes.append(f"(random weights): {RANDOM_NOTE}")
        sparse = [r["row"] for r in ok if (r.get("metrics") or {}).get("preset_zero_codes")]
        if sparse:
            notes.append(ZERO_CODES_NOTE.format(rows=", ".join(sparse)))
        parts.append("\n".join(f"_{n}._  " for n in notes))
    return "\n\n".join(parts)


def render_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    for i, group in enumerate(_groups(records)):
        headers, body = table_rows(group, seed_header="[ms-swift: A100 / torch 2.1 / its accounting]")
        if i:
            writer.writerow([])
        writer.writerow(["recipe", "profile", "random_weights", *headers])
        for record, line in zip(order_by_row(combine_repeats(group)), body):
            random = bool((record.get("metrics") or {}).get("random_weights"))
            writer.writerow([record.get("recipe"), record.get("profile") or "", random, *line])
    return buf.getvalue()


def render(records: list[dict], fmt: str = "md") -> str:
    if fmt == "json":
        out = [{**r, "seed_reference": resolve_reference(r.get("reference"), r.get("config") or {})} for r in records]
        return json.dumps(out, indent=2, default=str)
    if fmt == "csv":
        return render_csv(records)
    return render_markdown(records)
