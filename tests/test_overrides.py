"""``tunerkit run --set KEY=VALUE``: every row's settings and plugin options overridden after the profile."""

import textwrap

import pytest
from click.testing import CliRunner

from tunerkit.cli import main
from tunerkit.errors import UserError
from tunerkit.recipe import load_recipe, parse_overrides

RECIPE = """
[recipe]
name = "t"
[defaults]
model = "tiny-llama"
dataset = "builtin:arithmetic"
max_length = 64
max_steps = 1
evaluate = []
[profiles.small]
token_budget = 1000
lora = { rank = 2, alpha = 8.0 }
[[row]]
name = "lora"
plugins = ["lora"]
lora = { rank = 4 }
[[row]]
name = "full"
plugins = ["full"]
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(textwrap.dedent(RECIPE))
    return path


def test_values_are_read_as_toml_with_bare_strings_allowed():
    got = parse_overrides(["token_budget=32768", "lora.rank=16", "lora.alpha=8.5", "gradient_checkpointing=false",
                           "model=qwen-7b-chat", 'dataset="x.jsonl"', "evaluate=[]"])
    assert got == {"token_budget": 32768, "lora": {"rank": 16, "alpha": 8.5}, "gradient_checkpointing": False,
                   "model": "qwen-7b-chat", "dataset": "x.jsonl", "evaluate": []}


def test_overrides_win_over_profile_and_row_and_merge_plugin_tables(recipe):
    rec = load_recipe(recipe, "small", overrides=parse_overrides(["token_budget=64", "lora.rank=16"]))
    assert {r.name: r.settings.token_budget for r in rec.rows} == {"lora": 64, "full": 64}
    lora = next(r for r in rec.rows if r.name == "lora").options["lora"]
    assert lora.rank == 16 and lora.alpha == 8.0  # the profile's alpha stays: tables merge option by option
    plain = load_recipe(recipe, "small")
    assert next(r for r in plain.rows if r.name == "lora").options["lora"].rank == 2


@pytest.mark.parametrize("pairs, expect", [
    (["token_budgte=5"], ["--set", "token_budgte", "did you mean 'token_budget'"]),
    (["token_budget=lots"], ["--set", "token_budget", "expected int"]),
    (["lora.rnk=4"], ["--set.lora", "rnk", "did you mean 'rank'"]),
    (["token_budget"], ["--set takes KEY=VALUE"]),
])
def test_bad_overrides_are_one_line_errors(recipe, pairs, expect):
    with pytest.raises(UserError) as err:
        load_recipe(recipe, "small", overrides=parse_overrides(pairs))
    text = str(err.value)
    assert "\n" not in text
    for piece in expect:
        assert piece in text


def test_cli_bad_set_exits_2_and_good_set_reaches_the_rows(recipe, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(main, ["run", str(recipe), "-p", "small", "--check", "--set", "max_lenght=9"])
    assert bad.exit_code == 2 and "max_lenght" in bad.output and "Traceback" not in bad.output
    good = runner.invoke(main, ["run", str(recipe), "-p", "small", "--check", "--set", "model=tiny-qwen2"])
    assert good.exit_code == 0, good.output
    assert good.output.count("model=tiny-qwen2") == 2


ROW_PROFILES = RECIPE.replace("token_budget = 1000", "token_budget = 1000\nbatch_size = 4").replace('''name = "full"
plugins = ["full"]''', '''name = "full"
plugins = ["full"]
mix = { dataset = "builtin:arithmetic", ratio = 0.5 }
profiles.small = { batch_size = 1, mix = {} }''')


def test_a_row_can_carry_its_own_settings_for_one_profile(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(textwrap.dedent(ROW_PROFILES))
    rows = {r.name: r for r in load_recipe(path, "small").rows}
    plain = {r.name: r for r in load_recipe(path).rows}  # no profile: the row's profile table does not apply
    assert rows["full"].settings.batch_size == 1 and rows["full"].settings.mix in (None, {})
    assert rows["lora"].settings.batch_size == 4  # the profile's value: other rows untouched
    assert plain["full"].settings.mix == {"dataset": "builtin:arithmetic", "ratio": 0.5}
    # --set still wins over the row's own profile table
    assert load_recipe(path, "small", overrides={"batch_size": 3}).rows[1].settings.batch_size == 3


@pytest.mark.parametrize("text, expect", [
    ("profiles.smal = { batch_size = 1 }", ["row 'full'.profiles", "smal", "did you mean 'small'"]),
    ("profiles.small = { batch_sise = 1 }", ["row 'full'.profiles.small", "batch_sise", "did you mean 'batch_size'"]),
])
def test_bad_row_profile_tables_name_where_they_are(tmp_path, text, expect):
    path = tmp_path / "r.toml"
    path.write_text(textwrap.dedent(RECIPE.replace('plugins = ["full"]', 'plugins = ["full"]\n' + text)))
    with pytest.raises(UserError) as err:
        load_recipe(path, "small")
    for piece in expect:
        assert piece in str(err.value)
