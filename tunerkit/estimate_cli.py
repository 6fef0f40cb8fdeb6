"""``tunerkit estimate``: each row's predicted peak memory and speed, beside what a store measured."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import click

from tunerkit.errors import ModelTooLarge, UserError
from tunerkit.estimate import GIB, HOST_OP_US, estimate_row, relative_error
from tunerkit.isolation import wanted


def stored_rows(db: Path, recipe: str | None = None) -> list[dict]:
    """The newest ok record of every (recipe, row, profile) in ``db``, with its config."""
    if not db.exists():
        return []
    with closing(sqlite3.connect(db)) as conn:
        cur = conn.execute("SELECT recipe, row, profile, config, metrics, environment, started FROM runs WHERE status = 'ok'"
                           + (" AND recipe = ?" if recipe else "") + " ORDER BY id", (recipe,) if recipe else ())
        latest = {(r[0], r[1], r[2]): r for r in cur.fetchall()}
    out = []
    for recipe_name, row, profile, config, metrics, env, started in latest.values():
        m = json.loads(metrics)
        mem = (m.get("memory") or [{}])[0]
        out.append({"recipe": recipe_name, "row": row, "profile": profile, "config": json.loads(config),
                    "device": (json.loads(env) or {}).get("device_name") or mem.get("device"),
                    "on_gpu": mem.get("device") == "cuda",
                    "peak_alloc_gib": mem.get("peak_allocated_gib"), "tokens_per_s": m.get("tokens_per_s"),
                    "host_op_us": (json.loads(env) or {}).get("host_op_us"), "started": started,
                    "isolation": m.get("isolation"), "rows_before_in_process": m.get("rows_before_in_process")})
    return out


def row_of(config: dict):
    """A stored row config as a resolved Row (its settings and plugin tables)."""
    from tunerkit.recipe import make_row

    tables = {k: v for k, v in (config.get("options") or {}).items()}
    settings = {k: v for k, v in (config.get("settings") or {}).items() if v is not None}
    return make_row(config.get("name", "row"), config.get("plugins") or [], **settings, **tables)


def process_before(records: list[dict], i: int) -> list[int] | None:
    """Indices of the records the process of ``records[i]`` trained before it: none for a row
    alone in its process or first in it; the run of records just before it numbered 0 ..
    k-1 for its ``rows_before_in_process`` k; None where the record does not say, or those
    records are not all in the store any more."""
    rec = records[i]
    if rec.get("isolation") == "process" or rec.get("rows_before_in_process") == 0:
        return []
    k = rec.get("rows_before_in_process")
    if not k or i < k:
        return None
    before = list(range(i - k, i))
    if [records[j].get("rows_before_in_process") for j in before] != list(range(k)):
        return None
    return before


def compare(records: list[dict]) -> list[dict]:
    """Predicted beside measured for stored rows (each predicted for the device it ran on, and
    for the shapes its process had trained on before it, where the records tell)."""
    from tunerkit.estimate import device_tflops

    records = sorted(records, key=lambda r: r.get("started") or 0)
    shapes: dict[int, set] = {}  # what each record's row trained on, as predicted in this loop
    out = []
    for i, rec in enumerate(records):
        entry = {"recipe": rec["recipe"], "row": rec["row"], "profile": rec.get("profile"), "device": rec["device"],
                 "measured_gib": rec["peak_alloc_gib"], "measured_tokens_per_s": rec["tokens_per_s"],
                 "host_op_us": rec.get("host_op_us")}
        try:
            before = process_before(records, i)
            # an earlier row the estimate could not model leaves what the process met unknown
            met = None if before is None or any(j not in shapes for j in before) else \
                set().union(*(shapes[j] for j in before))
            # the record's own host speed where it has one (recorded since 2026-12-06), else the default
            pred = estimate_row(row_of(rec["config"]), device_tflops(rec["device"])[1], gpu=rec["on_gpu"],
                                host_op_us=rec.get("host_op_us") or HOST_OP_US, device_name=rec["device"] or "",
                                shapes_met=met)
        except Exception as err:  # noqa: BLE001 - one row the estimator cannot model is reported, not fatal
            entry["error"] = f"{type(err).__name__}: {err}"
            out.append(entry)
            continue
        shapes[i] = pred["input_shapes"]
        entry.update(predicted_gib=pred["peak_alloc_gib"], predicted_tokens_per_s=pred["tokens_per_s"],
                     planned_shapes=pred["new_timed_shapes_planned"],
                     memory_error=relative_error(pred["peak_alloc_gib"], rec["peak_alloc_gib"]),
                     speed_error=relative_error(pred["tokens_per_s"], rec["tokens_per_s"]))
        out.append(entry)
    return out


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:+.0f} %"


def num(v, spec) -> str:
    return "-" if v is None else format(v, spec)


def render(entries: list[dict]) -> str:
    lines = ["| recipe | row | predicted GiB | measured GiB | error | predicted tokens/s | measured tokens/s | error |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    # a store holding one row under several profiles (plain beside fast) names the profile
    several = len({(e["recipe"], e.get("profile")) for e in entries}) > len({e["recipe"] for e in entries})
    for e in entries:
        label = f"{e['row']} ({e.get('profile')})" if several else e["row"]
        if "error" in e:
            lines.append(f"| {e['recipe']} | {label} | {e['error']} | | | | | |")
            continue
        lines.append(f"| {e['recipe']} | {label} | {num(e['predicted_gib'], '.2f')} | {num(e['measured_gib'], '.2f')} | "
                     f"{pct(e['memory_error'])} | {num(e['predicted_tokens_per_s'], ',.0f')} | "
                     f"{num(e['measured_tokens_per_s'], ',.0f')} | {pct(e['speed_error'])} |")
    return "\n".join(lines)


def memory_savings(row) -> list[dict]:
    """What the installed plugins offer to lower ``row``'s memory (the ``memory_savings``
    hook), cheapest first."""
    from tunerkit.plugins import make_manager, registry

    plugins = []
    for name, cls in registry().items():
        try:
            plugins.append(cls(row.options.get(name)))
        except Exception:  # noqa: BLE001 - a plugin that cannot be built here offers nothing
            continue
    offers = [o for found in make_manager([], plugins).hook.memory_savings(row=row) for o in (found or [])]
    return sorted(offers, key=lambda o: (o.get("order", 50), o["label"]))


def changed(config: dict, offer: dict) -> dict:
    """``config`` (plugins, settings, options of a row) with one offered change applied."""
    options = dict(config["options"])
    for name, values in (offer.get("options") or {}).items():
        options[name] = {**(options.get(name) or {}), **values}
    plugins = [*config["plugins"], *(p for p in offer.get("plugins") or () if p not in config["plugins"])]
    return {"plugins": plugins, "settings": {**config["settings"], **(offer.get("settings") or {})}, "options": options}


def fitting(rows, budget_gib: float, target: tuple[bool, float, str] | None = None) -> list[str]:
    """For each row over ``budget_gib``: the first of (checkpointing on, then each change the
    plugins offer on top of the ones before, then shorter rows) whose prediction is under the
    budget (on ``target``, see :func:`target_device`; this machine when None)."""
    from tunerkit.recipe import make_row

    gpu, tflops, _ = target if target is not None else (None, None, None)
    advice = []
    for row in rows:
        pred = estimate_row(row, tflops, gpu=gpu)
        if pred["peak_alloc_gib"] <= budget_gib:
            advice.append(f"{row.name}: fits ({pred['peak_alloc_gib']:.1f} GiB)")
            continue
        config = row.config()
        current = {"plugins": list(config["plugins"]), "options": dict(config.get("options") or {}),
                   "settings": {k: v for k, v in config["settings"].items() if v is not None}}
        current = changed(current, {"settings": {"gradient_checkpointing": True}})
        labels = ["gradient_checkpointing = true"]
        tries = [(labels[0], current)]
        for offer in memory_savings(row):
            current = changed(current, offer)
            labels.append(offer["label"])
            tries.append((", ".join(labels), current))
        for length in (16384, 8192, 4096, 2048, 1024, 512):
            if length < current["settings"].get("max_length", 0):
                tries.append((", ".join([*labels, f"max_length = {length}"]),
                              changed(current, {"settings": {"max_length": length}})))
        found = None
        for label, c in tries:
            trial = estimate_row(make_row(row.name, c["plugins"], **c["settings"], **c["options"]), tflops, gpu=gpu)
            if trial["peak_alloc_gib"] <= budget_gib:
                found = f"{row.name}: {label} -> {trial['peak_alloc_gib']:.1f} GiB, {trial['tokens_per_s']:,.0f} tokens/s"
                found += "".join(f" ({note})" for note in trial["notes"])
                break
        advice.append(found or f"{row.name}: nothing tried fits {budget_gib:g} GiB "
                               f"(predicted {pred['peak_alloc_gib']:.1f} GiB as written)")
    return advice


@click.command(name="estimate")
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option("--profile", "-p", help="profile of the recipe (default: as `run` picks it)")
@click.option("--only", help="comma-separated row names")
@click.option("--db", type=click.Path(path_type=Path), help="a store: rows it recorded are shown beside their prediction")
@click.option("--memory-budget", type=float, help="GiB: for rows predicted over it, what fits (checkpointing, offload, row length)")
@click.option("--device", help="predict for this device instead of this machine: cpu or a GPU "
                               "(H100, H200, A100, L40, A10, 4090); checks of this machine are skipped")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a setting or plugin option of every row, as `run --set` does; repeatable")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def command(recipe, profile, only, db, memory_budget, device, sets, as_json):
    """Predicted peak allocated memory and tokens/s of every row of RECIPE (or of every row a --db recorded)."""
    if recipe is None and db is None:
        raise UserError("give a RECIPE, or --db to check a store's rows", key="estimate", hint="tunerkit estimate recipes/tuners.toml")
    if recipe is None:
        if sets:
            raise UserError("--set applies to a RECIPE's rows, not to a store's records", key="--set",
                            hint="tunerkit estimate RECIPE --set KEY=VALUE")
        entries = compare(stored_rows(db))
        click.echo(json.dumps(entries, indent=1) if as_json else render(entries))
        return
    from tunerkit.cli import pick_profile, row_names
    from tunerkit.recipe import load_recipe, parse_overrides

    target = target_device(device)
    profile = pick_profile(recipe, profile)
    try:
        # for another device, this machine's files, memory and packages do not matter
        rec = load_recipe(recipe, profile, overrides=parse_overrides(sets), select=row_names(only),
                          check_files=target is None)
    except ModelTooLarge as err:  # planning a GPU run on a smaller machine
        raise UserError(err.message, file=err.file, table=err.table, key=err.key,
                        hint="predict it for the GPU it will run on: --device H100 (or H200, A100, ...)") from None
    echo_estimates(rec, db, as_json, target)
    if memory_budget is not None:
        for line in fitting(rec.rows, memory_budget, target):
            click.echo(line)


def target_device(name: str | None) -> tuple[bool, float, str] | None:
    """(on a GPU, matmul TFLOP/s, its name) of a named device; None: this machine."""
    if name is None:
        return None
    from tunerkit.estimate import DEVICE_TFLOPS, device_tflops, rate_of

    if name.lower() == "cpu":
        return False, device_tflops("cpu")[1], "cpu"
    tflops = rate_of(DEVICE_TFLOPS, name)
    if tflops is not None:
        return True, tflops, name
    raise UserError(f"unknown device '{name}'", key="--device",
                    hint=f"one of: cpu, {', '.join(DEVICE_TFLOPS)}")


def echo_estimates(rec, db: Path | None = None, as_json: bool = False,
                   target: tuple[bool, float, str] | None = None) -> None:
    """Each row's prediction (``run --check`` prints these too), and the measurement where ``db`` has one."""
    measured = {(r["row"], r["profile"]): r for r in stored_rows(db, rec.name)} if db else {}
    gpu, tflops, name = target if target is not None else (None, None, None)
    out, met = [], set()
    for row in rec.rows:
        # rows share one process unless isolated (auto: on a GPU), and the first to meet a shape plans it
        alone = wanted(row.settings.isolation, cuda=gpu)
        try:
            pred = estimate_row(row, tflops, gpu=gpu, device_name=name, shapes_met=set() if alone else met)
            if not alone:
                met |= pred["input_shapes"]
            del pred["input_shapes"]
        except Exception as err:  # noqa: BLE001 - a model whose config cannot be read: say so per row
            out.append({"row": row.name, "error": f"{type(err).__name__}: {err}"})
            continue
        m = measured.get((row.name, row.profile))
        if m:
            pred.update(measured_gib=m["peak_alloc_gib"], measured_tokens_per_s=m["tokens_per_s"],
                        memory_error=relative_error(pred["peak_alloc_gib"], m["peak_alloc_gib"]),
                        speed_error=relative_error(pred["tokens_per_s"], m["tokens_per_s"]))
        out.append(pred)
    if as_json:
        click.echo(json.dumps(out, indent=1, default=str))
        return
    for p in out:
        if "error" in p:
            click.echo(f"  {p['row']}: no estimate ({p['error']})")
            continue
        text = f"  {p['row']}: predicted peak {p['peak_alloc_gib']:.2f} GiB, {p['tokens_per_s']:,.0f} tokens/s"
        text += "".join(f" ({note})" for note in p.get("notes") or ())
        if p.get("measured_gib") is not None:
            text += (f"; measured {p['measured_gib']:.2f} GiB ({pct(p['memory_error'])}), "
                     f"{num(p['measured_tokens_per_s'], ',.0f')} tokens/s ({pct(p['speed_error'])})")
        click.echo(text)


__all__ = ["command", "echo_estimates", "GIB"]
