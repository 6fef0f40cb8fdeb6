"""Bad input exits 2 with one line naming file, table and key, and writes nothing."""

import textwrap

import pytest
from click.testing import CliRunner

from tunerkit.cli import main

GOOD = """
[recipe]
name = "t"
[defaults]
model = "tiny-llama"
dataset = "builtin:arithmetic"
max_train_samples = 8
batch_size = 4
gradient_accumulation_steps = 1
max_length = 64
max_steps = 1
gradient_checkpointing = false
evaluate = []
[[row]]
name = "lora"
plugins = ["lora"]
lora = { rank = 4 }
"""


def run_cli(tmp_path, text, *extra):
    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent(text))
    db = tmp_path / "db.sqlite"
    result = CliRunner().invoke(main, ["run", str(recipe), "--db", str(db), "--no-progress",
                                       "--runs-dir", str(tmp_path / "runs"), *extra])
    return result, recipe, db


@pytest.mark.parametrize("mutation, expect", [
    (('max_length = 64', 'max_lenght = 64'), ["[defaults]", "max_lenght", "did you mean 'max_length'"]),
    (('plugins = ["lora"]', 'plugins = ["lorra"]'), ["row 'lora'", "plugins", "unknown plugin 'lorra'", "did you mean 'lora'"]),
    (('max_length = 64', 'max_length = "long"'), ["[defaults]", "max_length", "expected int"]),
    (('lora = { rank = 4 }', 'lora = { rank = 4.5 }'), ["row 'lora'.lora", "rank", "expected int"]),
    (('lora = { rank = 4 }', 'lora = { rnk = 4 }'), ["rnk", "did you mean 'rank'"]),
    (('dataset = "builtin:arithmetic"', 'dataset = "data/missing.jsonl"'), ["row 'lora'", "dataset", "not found"]),
    (('plugins = ["lora"]', 'plugins = ["lora", "full"]'), ["row 'lora'", "plugins", "'lora' and 'full'"]),
    (('plugins = ["lora"]', 'plugins = ["lora", "liger", "compile"]'),
     ["row 'lora'", "plugins", "torch.compile", "liger = { rope = false, rms_norm = false, swiglu = false }"]),
    (('model = "tiny-llama"', 'model = "qwen-72b-chat"\ndtype = "fp32"'), ["row 'lora'", "model", "GiB"]),
    (('lora = { rank = 4 }', 'lora = { rank = 4 }\nuncheckpointed_layers = 2'),
     ["row 'lora'", "uncheckpointed_layers", "gradient_checkpointing = true"]),
    (('[[row]]', '[[row]\n'), ["r.toml", "malformed TOML"]),
])
def test_bad_recipe_exits_2_with_one_line(tmp_path, mutation, expect):
    old, new = mutation
    assert old in GOOD
    result, recipe, db = run_cli(tmp_path, GOOD.replace(old, new, 1))
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip() and not l.startswith("tunerkit: no CUDA")]
    assert len(lines) == 1, result.output
    assert str(recipe) in lines[0]
    for fragment in expect:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    assert not db.exists(), "nothing may be written for a bad recipe"


def test_missing_recipe_file(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope.toml"), "--db", str(tmp_path / "db")])
    assert result.exit_code == 2
    assert "nope.toml" in result.output and "not found" in result.output


def test_unknown_profile_and_only(tmp_path):
    result, recipe, db = run_cli(tmp_path, GOOD, "--profile", "gpu")
    assert result.exit_code == 2 and "no profile 'gpu'" in result.output
    result, recipe, db = run_cli(tmp_path, GOOD, "--only", "nosuchrow")
    assert result.exit_code == 2 and "nosuchrow" in result.output
    assert not db.exists()


def test_only_skips_the_machine_checks_of_the_rows_it_leaves_out(tmp_path):
    """A row that cannot run here (too big for this machine) must not stop --only of its neighbour."""
    text = GOOD + """
[[row]]
name = "huge"
plugins = ["full"]
model = "qwen-72b-chat"
"""
    result, recipe, db = run_cli(tmp_path, text, "--check")
    assert result.exit_code == 2 and "row 'huge'" in result.output and "qwen-72b-chat" in result.output
    result, recipe, db = run_cli(tmp_path, text, "--only", "lora", "--check")
    assert result.exit_code == 0, result.output
    assert "1 rows valid" in result.output and "huge" not in result.output
    text_bad_type = text.replace('model = "qwen-72b-chat"', 'model = "qwen-72b-chat"\nbatch_size = "two"')
    result, recipe, db = run_cli(tmp_path, text_bad_type, "--only", "lora", "--check")
    assert result.exit_code == 2 and "batch_size" in result.output  # types are still checked on every row


def test_failed_row_is_recorded_and_run_goes_on(tmp_path):
    from tunerkit.store import Store

    text = GOOD + """
[[row]]
name = "starved"
plugins = ["full"]
max_length = 4
[[row]]
name = "full"
plugins = ["full"]
"""
    result, recipe, db = run_cli(tmp_path, text)
    assert result.exit_code == 1, result.output  # a failed row: the table prints, the exit code says so
    records = {r["row"]: r for r in Store(db).latest()}
    assert records["starved"]["status"] == "failed"
    assert "no training samples left" in records["starved"]["reason"]
    assert records["lora"]["status"] == "ok" and records["full"]["status"] == "ok"
    assert records["full"]["metrics"]["tokens_per_s"] > 0


def test_no_progress_quiets_transformers_bars_too(tmp_path):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    try:
        result, _, _ = run_cli(tmp_path, GOOD)
        assert result.exit_code == 0, result.output
        assert not hf_logging.is_progress_bar_enabled()  # "Loading weights" bars are transformers' own
    finally:
        hf_logging.enable_progress_bar()


def test_a_declared_conflict_carries_its_reason_into_the_one_line_error(monkeypatch):
    import tunerkit.plugins as plugins
    from tunerkit import Plugin
    from tunerkit.errors import UserError

    class Fast(Plugin):
        name = "fast"
        conflicts = {"slow": "they patch the same attention function"}

    class Slow(Plugin):
        name = "slow"

    class Plain(Plugin):
        name = "plain"
        conflicts = ("slow",)

    monkeypatch.setattr(plugins, "_REGISTRY", {"fast": Fast, "slow": Slow, "plain": Plain})
    with pytest.raises(UserError, match=r"plugin 'fast' cannot run with 'slow' \(they patch the same attention function\)") as err:
        plugins.check_combination(["slow", "fast"], file="r.toml", table="row 'x'")
    assert "remove one of 'fast' and 'slow'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError) as plain:  # a conflict declared without a reason says only the pair
        plugins.check_combination(["plain", "slow"])
    assert "plugin 'plain' cannot run with 'slow' (hint: remove one of 'plain' and 'slow')" in str(plain.value)


TORCHAO_AT_START = """
import logging, sys
import tunerkit.cli as cli
real = cli.pick_profile
def importing_torchao(*args, **kwargs):
    logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so: Could not load this library")
    logging.getLogger("torch.utils._pytree").warning("<enum 'KernelPreference'> is an Enum subclass")
    return real(*args, **kwargs)
cli.pick_profile = importing_torchao
sys.argv = ["tunerkit", "run", sys.argv[1], "--db", sys.argv[2], "--no-progress"]
cli.main()
"""


def test_torchao_import_warnings_do_not_join_the_one_line_error(tmp_path):
    """With the gptq extra installed, transformers imports torchao on every start and torchao
    warns (through logging, so on stderr) about kernels it cannot load; those lines must not
    bury the one-line error. A process of its own: pytest's log capture would hide them."""
    import subprocess
    import sys

    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent(GOOD.replace("max_length = 64", "max_lenght = 64", 1)))
    proc = subprocess.run([sys.executable, "-c", TORCHAO_AT_START, str(recipe), str(tmp_path / "db")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("tunerkit: no CUDA")]
    assert len(lines) == 1 and "max_lenght" in lines[0], proc.stderr
