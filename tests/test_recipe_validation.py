"""Recipes are checked before anything runs: every class of bad input exits 2 with one line
naming the file, the table and the key, at ``--check`` as at ``run``, and writes nothing."""

import dataclasses
import math
import textwrap

import pytest
from click.testing import CliRunner

import test_recipe_errors

from tunerkit.cli import main
from tunerkit.errors import UserError
from tunerkit.options import build, check_value, option_types
from tunerkit.plugins import registry
from tunerkit.settings import Settings

# The good recipe of the older error tests, with a cpu profile to edit.
GOOD = textwrap.dedent(test_recipe_errors.GOOD).lstrip().replace("[[row]]", "[profiles.cpu]\nmax_steps = 1\n[[row]]", 1)


def invoke(tmp_path, text: str | bytes | None, *extra, check=True):
    recipe = tmp_path / "r.toml"
    if isinstance(text, bytes):
        recipe.write_bytes(text)
    elif text is not None:
        recipe.write_text(text)
    db = tmp_path / "db.sqlite"
    args = ["run", str(recipe), "--db", str(db), "--no-progress", "--runs-dir", str(tmp_path / "runs"), *extra]
    result = CliRunner().invoke(main, args + (["--check"] if check else []))
    return result, recipe, db


def one_error_line(result, db) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.splitlines() if l.strip() and not l.startswith("tunerkit: no CUDA")]
    assert len(lines) == 1, result.output
    assert not db.exists(), "nothing may be written for a bad recipe"
    return lines[0]


def edited(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


# -- the file and its TOML shape ---------------------------------------------------------

SHAPES = [
    ("latin-1", "Ä".encode("latin-1") + GOOD.encode(), ["not a UTF-8 text file"]),
    ("binary", bytes(range(256)) * 4, ["not a UTF-8 text file"]),
    ("profile is a number", GOOD.replace("[profiles.cpu]\nmax_steps = 1\n", "") + "[profiles]\ncpu = 5\n",
     ["[profiles.cpu]", "expected a table, got int 5"]),
    ("profiles is a number", "profiles = 5\n" + GOOD.replace("[profiles.cpu]\nmax_steps = 1\n", ""),
     ["[profiles]", "expected a table, got int 5"]),
    ("recipe name is a number", edited('name = "t"', "name = 5"), ["[recipe] name", "expected a string, got int 5"]),
    ("only is a string", edited("[profiles.cpu]\n", '[profiles.cpu]\nonly = "lora"\n'),
     ["[profiles.cpu] only", "expected a list of row names, got str 'lora'"]),
    ("only is empty", edited("[profiles.cpu]\n", "[profiles.cpu]\nonly = []\n"),
     ["[profiles.cpu] only", "an empty list keeps no row"]),
]


@pytest.mark.parametrize("case, text, expect", SHAPES, ids=[c[0] for c in SHAPES])
def test_a_recipe_of_the_wrong_shape_is_one_line(tmp_path, case, text, expect):
    result, recipe, db = invoke(tmp_path, text, "--profile", "cpu")
    line = one_error_line(result, db)
    assert str(recipe) in line
    for fragment in expect:
        assert fragment in line, (fragment, line)


def test_a_directory_is_not_a_recipe(tmp_path):
    (tmp_path / "r.toml").mkdir()
    result, recipe, db = invoke(tmp_path, None)
    assert "is a directory" in one_error_line(result, db)


@pytest.mark.parametrize("only", ["", ",", " , "])
def test_an_empty_only_runs_nothing(tmp_path, only):
    result, recipe, db = invoke(tmp_path, GOOD, "--only", only, check=False)
    line = one_error_line(result, db)
    assert "--only" in line and "names no row" in line


# -- numeric ranges ----------------------------------------------------------------------

RANGES = [
    ("max_steps = 1", "max_steps = 0", "[defaults] max_steps", "allowed: >= 1"),
    ("max_steps = 1", "max_steps = -3", "[defaults] max_steps", "allowed: >= 1"),
    ("max_length = 64", "max_length = 0", "[defaults] max_length", "allowed: >= 1"),
    ("max_train_samples = 8", "max_train_samples = -1", "[defaults] max_train_samples", "allowed: >= 1"),
    ("max_steps = 1", "max_steps = 1\nepochs = 0", "[defaults] epochs", "allowed: > 0"),
    ("max_steps = 1", "max_steps = 1\nepochs = nan", "[defaults] epochs", "nan is not a finite number"),
    ("max_steps = 1", "max_steps = 1\neval_steps = 0", "[defaults] eval_steps", "allowed: >= 1"),
    ("max_steps = 1", "max_steps = 1\nlearning_rate = -1e-4", "[defaults] learning_rate", "allowed: > 0"),
    ("max_steps = 1", "max_steps = 1\nlearning_rate = inf", "[defaults] learning_rate", "inf is not a finite number"),
    ("max_steps = 1", "max_steps = 1\nmax_grad_norm = -1.0", "[defaults] max_grad_norm", "allowed: >= 0"),
    ("max_steps = 1", "max_steps = 1\nmax_grad_norm = nan", "[defaults] max_grad_norm", "not a finite number"),
    ("max_steps = 1", "max_steps = 1\nseed = -1", "[defaults] seed", "allowed: >= 0 and <= 4.29497e+09"),
    ("lora = { rank = 4 }", "lora = { rank = 0 }", "[row 'lora'.lora] rank", "allowed: >= 1"),
    ("lora = { rank = 4 }", "lora = { rank = 4, alpha = 0 }", "[row 'lora'.lora] alpha", "allowed: > 0"),
    ("lora = { rank = 4 }", "lora = { rank = 4, alpha = -inf }", "[row 'lora'.lora] alpha", "not a finite number"),
    ("lora = { rank = 4 }", "lora = { rank = [4, -2] }", "[row 'lora'.lora] rank", "-2 is out of range"),
    ("[profiles.cpu]\nmax_steps = 1", "[profiles.cpu]\nmax_steps = -1", "[profiles.cpu] max_steps", "allowed: >= 1"),
]


@pytest.mark.parametrize("old, new, where, expect", RANGES, ids=[r[1].splitlines()[-1] for r in RANGES])
def test_a_number_out_of_range_names_the_allowed_range(tmp_path, old, new, where, expect):
    result, recipe, db = invoke(tmp_path, edited(old, new), "--profile", "cpu")
    line = one_error_line(result, db)
    assert where in line and expect in line, line


def _numeric_options():
    classes = [("settings", Settings)] + [(n, c.Options) for n, c in sorted(registry().items())]
    for owner, cls in classes:
        for f in dataclasses.fields(cls):
            try:
                check_value(1, option_types(cls)[f.name])
            except TypeError:
                continue  # not a number
            yield pytest.param(cls, f.name, id=f"{owner}.{f.name}")


@pytest.mark.parametrize("cls, name", list(_numeric_options()))
def test_every_numeric_option_refuses_nonsense(cls, name):
    """Every number a recipe can set, the core's and every plugin's, refuses a large negative, NaN and
    inf (an int option refuses the last two by its type)."""
    for bad in (-10**9, math.nan, math.inf):
        with pytest.raises(UserError) as err:
            build(cls, {name: bad}, file="r.toml", table="t")
        assert "\n" not in str(err.value)


def test_a_misspelt_choice_gets_a_did_you_mean(tmp_path):
    result, recipe, db = invoke(tmp_path, edited("max_length = 64", 'max_length = 64\ndtype = "bf61"'))
    line = one_error_line(result, db)
    assert "[defaults] dtype" in line and "did you mean 'bf16'?" in line


# -- what --check checks without training ------------------------------------------------

def machine_checks(tmp_path) -> dict:
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    return {case: (edit, expect) for case, edit, expect in [
        ("lora targets", ("lora = { rank = 4 }", 'lora = { rank = 4, targets = ["q_prj"] }'),
         ["[row 'lora'] plugins", "target modules ['q_prj'] match no module of llama", "did you mean 'q_proj'?"]),
        ("dataset is a directory", ('dataset = "builtin:arithmetic"', f'dataset = "{folder}"'),
         ["[row 'lora'] dataset", "not a file"]),
        ("mix ratio's type", ("max_steps = 1", 'max_steps = 1\nmix = { dataset = "builtin:arithmetic", ratio = "half" }'),
         ["mix.ratio must be a number > 0", "'half'"]),
        ("chat template", ("max_steps = 1", 'max_steps = 1\nchat_template = "chatlm"'),
         ["[row 'lora'] chat_template", "unknown chat template 'chatlm'", "did you mean 'chatml'?"]),
        ("gsm8k without eval_data_dir", ("evaluate = []", 'evaluate = ["gsm8k"]'),
         ["[row 'lora'] evaluate", "eval_data_dir is not set"]),
        ("no plugins, training on", ('plugins = ["lora"]\nlora = { rank = 4 }', "plugins = []"),
         ["[row 'lora'] plugins", 'add "full"', "set train = false"]),
    ]}


MACHINE_CASES = ["lora targets", "dataset is a directory", "mix ratio's type", "chat template",
                 "gsm8k without eval_data_dir", "no plugins, training on"]


@pytest.mark.parametrize("case", MACHINE_CASES)
def test_check_looks_at_what_it_can_without_training(tmp_path, case):
    (old, new), expect = machine_checks(tmp_path)[case]
    result, recipe, db = invoke(tmp_path, edited(old, new))
    line = one_error_line(result, db)
    for fragment in expect:
        assert fragment in line, (case, fragment, line)


def test_more_gpus_than_the_machine_has(tmp_path, monkeypatch):
    import tunerkit.validation as validation

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(validation, "visible_gpus", lambda: 2)
    result, recipe, db = invoke(tmp_path, edited("max_steps = 1", "max_steps = 1\ngpus = 4"))
    line = one_error_line(result, db)
    assert "[row 'lora'] gpus" in line and "asks for 4 GPUs but 2 are visible" in line


def test_an_evaluation_only_row_needs_no_plugin(tmp_path):
    text = edited('plugins = ["lora"]\nlora = { rank = 4 }', "plugins = []\ntrain = false")
    result, recipe, db = invoke(tmp_path, text)
    assert result.exit_code == 0, result.output


def test_the_skeleton_has_the_model_structure_and_no_weights():
    from tunerkit.recipe import make_row
    from tunerkit.validation import model_skeleton, unmatched_module_names

    row = make_row("r", ["lora"], model="tiny-llama")
    model = model_skeleton(row)
    assert model is model_skeleton(row), "cached per model"
    assert all(p.device.type == "meta" for p in model.parameters())
    assert unmatched_module_names(model, ["q_proj", "v_proj", "nope"]) == ["nope"]


# -- one place per job: the merged layers still name where a key is written ---------------

def test_options_of_a_plugin_no_row_uses_are_checked_where_written(tmp_path):
    result, recipe, db = invoke(tmp_path, edited("[profiles.cpu]\n", "[defaults.dora]\nrnk = 4\n[profiles.cpu]\n"))
    line = one_error_line(result, db)
    assert "[defaults.dora] rnk" in line and "unknown option 'rnk'" in line and "did you mean 'rank'?" in line


def test_a_value_every_row_overrides_is_still_checked(tmp_path):
    text = edited("max_length = 64", "max_length = -64").replace('lora = { rank = 4 }', "lora = { rank = 4 }\nmax_length = 64")
    result, recipe, db = invoke(tmp_path, text)
    line = one_error_line(result, db)
    assert "[defaults] max_length" in line and "allowed: >= 1" in line


def test_an_error_names_the_layer_that_wrote_the_key(tmp_path):
    text = edited("[profiles.cpu]\nmax_steps = 1", "[profiles.cpu]\nmax_steps = 1\nlora = { alpha = 0 }")
    result, recipe, db = invoke(tmp_path, text, "--profile", "cpu")
    assert "[profiles.cpu.lora] alpha" in one_error_line(result, db)
    result, recipe, db = invoke(tmp_path, GOOD, "--set", "lora.rank=0")
    assert "[--set.lora] rank" in one_error_line(result, db)
