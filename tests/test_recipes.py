"""Every recipe of recipes/ loads and validates under every profile, and mirrors its ms-swift table."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest
import torch

from tunerkit.errors import UserError
from tunerkit.plugins import registry
from tunerkit.recipe import load_recipe
from tunerkit.report.reference import resolve_reference, unresolved_axes

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

#: rows of each table of ms-swift's Benchmark.md (sweep points counted one by one)
SEED_ROWS = {
    "quantization": 12,        # 3 models x bf16, gptq int4, gptq int8, bnb int4
    "max_length_lora": 50,     # 10 models x max_length 512 ... 8192
    "max_length_full": 15,     # 3 models x 5 lengths
    "batch_size": 4,
    "flash_attn_gc": 4,
    "lora_rank": 4,
    "grad_accum": 7,
    "tuners": 24,
    "unsloth": 1,
    "export": 4,
    "awq": 1,
    "aqlm": 1,
    "sequence_parallel": 4,
}

#: what a reference may hold (the report's ms-swift columns)
REFERENCE_KEYS = {"samples_per_s", "memory_gib", "infer_tokens_per_s", "train_loss", "eval_loss", "gsm8k_acc",
                  "arc_acc", "ceval_weighted_acc", "trainable_params_m", "trainable_pct", "iter_per_s",
                  "total_steps", "note"}
GIB = 2 ** 30


def recipe_files() -> list[Path]:
    return sorted(RECIPES.glob("*.toml"))


def raw(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def profiles_of(path: Path) -> list[str]:
    return list(raw(path).get("profiles", {}))


@pytest.fixture
def gpu_host(monkeypatch):
    """Validation as on the GPU host: CUDA present (bf16 weights), 8 GPUs of 80 GiB."""
    import tunerkit.validation as validation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(validation, "available_memory_bytes", lambda: (80 * GIB, "80 GiB GPU (emulated)"))
    monkeypatch.setattr(validation, "visible_gpus", lambda: 8)


#: recipes whose rows need an optional engine (import name) that may be missing, whether it trains
#: on a CUDA GPU only, and the profiles holding such rows (None: every profile)
ENGINES = {"aqlm": ("aqlm", True, None), "unsloth": ("unsloth", True, None), "awq": ("gptqmodel", False, None),
           "export": ("gptqmodel", False, None),
           "quantization": ("gptqmodel", False, {"bench"})}  # its cpu profile keeps the bf16 and bnb rows


def engine_here(path: Path, profile: str) -> bool:
    """Whether this machine can validate the profile's rows: their engine installed (and a GPU where it needs one)."""
    if path.stem not in ENGINES:
        return True
    module, cuda_only, profiles = ENGINES[path.stem]
    if profiles is not None and profile not in profiles:
        return True
    return importlib.util.find_spec(module) is not None and (not cuda_only or torch.cuda.is_available())


def load_or_refused(path: Path, profile: str):
    """The recipe validated where its engine runs; elsewhere a one-line refusal naming the row, then parsed only."""
    if engine_here(path, profile):
        return load_recipe(path, profile)
    with pytest.raises(UserError, match=r"row '[^']*'\] plugins: .*(not installed|CUDA GPU)") as refused:
        load_recipe(path, profile)
    assert "\n" not in str(refused.value)
    return load_recipe(path, profile, check_files=False)


def test_there_is_one_recipe_per_seed_table():
    assert {p.stem for p in recipe_files()} == set(SEED_ROWS)


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_cpu_profile_validates_here(path):
    recipe = load_or_refused(path, "cpu")
    assert recipe.rows
    for row in recipe.rows:
        assert row.settings.gpus == 1, f"{row.name}: the cpu profile must run without a launcher"
        assert row.settings.max_steps is not None or row.pending, f"{row.name}: cpu rows need a step cap"


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_bench_profile_validates_on_a_gpu_host(path, gpu_host):
    recipe = load_or_refused(path, "bench")
    for row in recipe.rows:
        s = row.settings
        assert s.dataset.startswith("synthetic:lengths"), row.name
        if row.pending is None:
            assert s.token_budget and s.truncation_strategy == "delete", row.name
    assert len({r.settings.token_budget for r in recipe.rows}) == 1, "one token budget per recipe"


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_other_profiles_resolve(path):
    # Profiles like "seed" need the real models and datasets: types and plugin options only.
    for profile in profiles_of(path):
        if profile not in ("cpu", "bench"):
            assert load_recipe(path, profile, check_files=False).rows


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_recipe_mirrors_its_seed_table(path):
    data = raw(path)
    meta = data["recipe"]
    assert meta["name"] == path.stem and meta["seed_table"] and meta["gpu_profile"] == "bench"
    assert {"cpu", "bench"} <= set(data["profiles"])
    recipe = load_recipe(path, check_files=False)
    assert len(recipe.rows) == SEED_ROWS[path.stem]
    names = [r.name for r in recipe.rows]
    assert len(names) == len(set(names))
    base_names = [r["name"] for r in data["row"]]
    assert len(base_names) == len(set(base_names))


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_every_row_carries_the_seeds_numbers(path):
    for row in load_recipe(path, check_files=False).rows:
        config = row.config()
        assert not unresolved_axes(row.reference, config), f"{row.name}: no reference for this sweep point"
        ref = resolve_reference(row.reference, config)
        assert ref, f"{row.name}: no reference"
        assert set(ref) <= REFERENCE_KEYS, f"{row.name}: unknown reference keys {set(ref) - REFERENCE_KEYS}"


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_pending_rows_wait_for_a_missing_plugin(path):
    """A pending row is one ms-swift row whose plugin is not installed: un-pend it when the plugin lands."""
    installed = {name for name, cls in registry().items() if not getattr(cls, "load_error", None)}
    for entry in raw(path)["row"]:
        if "pending" not in entry:
            continue
        assert set(entry.get("plugins", [])) - installed, (
            f"{path.name} row '{entry['name']}': every plugin is installed now; remove its pending line")
        # the loader keeps a pending row as one row: its sweeps must be written out
        assert not any(isinstance(v, list) for k, v in entry.items() if k not in ("plugins",)), entry["name"]


def test_sweep_references_pick_each_points_numbers():
    rows = {r.name: r for r in load_recipe(RECIPES / "max_length_lora.toml", check_files=False).rows}
    ref = resolve_reference(rows["qwen-7b-chat[max_length=4096]"].reference, rows["qwen-7b-chat[max_length=4096]"].config())
    assert ref == {"samples_per_s": 2.05, "memory_gib": 35.31}
    ref = resolve_reference(rows["qwen-72b-chat[max_length=1024]"].reference, rows["qwen-72b-chat[max_length=1024]"].config())
    assert ref["memory_gib"] == [70.25, 77.11]
    assert rows["qwen-72b-chat[max_length=1024]"].settings.gpus == 2


def test_tuners_references_carry_the_true_loss_names():
    # ms-swift printed eval loss under "train_loss" and train loss under "eval_loss".
    rows = {r.name: r for r in load_recipe(RECIPES / "tuners.toml", check_files=False).rows}
    assert rows["full+no_mix"].reference["train_loss"] == 0.44
    assert rows["full+no_mix"].reference["eval_loss"] == 0.57
    assert rows["qwen-7b-chat-eval"].settings.train is False
    assert rows["lora+no_mix"].settings.mix is None and rows["lora"].settings.mix["ratio"] == 2.0


BEYOND_SEED = sorted((RECIPES / "beyond_seed").glob("*.toml"))


@pytest.mark.parametrize("path", BEYOND_SEED, ids=lambda p: p.stem)
def test_recipes_beyond_the_seed_validate_in_both_profiles(path, gpu_host):
    meta = raw(path)["recipe"]
    assert meta["name"] == path.stem and meta["gpu_profile"] == "bench" and "seed_table" not in meta
    # fast_path's liger rows validate only where liger-kernel is installed; parsing still checks them
    liger_here = importlib.util.find_spec("liger_kernel") is not None
    bench = load_recipe(path, "bench", check_files=path.stem != "fast_path" or liger_here)
    assert bench.rows and len({r.settings.token_budget for r in bench.rows}) == 1
    if path.stem == "quality":  # quality needs real weights and a graded task, not synthetic lengths
        assert all(r.settings.model == "smollm2-135m-instruct" and "accuracy" in r.settings.evaluate
                   for r in bench.rows)
        return
    # fast_path cuts samples to their first max_length tokens, as its baseline does (bench/fast_path.py)
    truncation = "truncation_right" if path.stem == "fast_path" else "delete"
    assert all(r.settings.truncation_strategy == truncation and r.settings.dataset.startswith("synthetic:lengths")
               for r in bench.rows)


@pytest.mark.parametrize("path", BEYOND_SEED, ids=lambda p: p.stem)
def test_recipes_beyond_the_seed_validate_here(path):
    recipe = load_recipe(path, "cpu")
    assert recipe.rows and all(r.settings.max_steps for r in recipe.rows)
