"""The README's test command is the one CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith("python3 -m pip install")
    assert ci in (ROOT / "README.md").read_text()


def test_readme_main_command_runs_the_tuners_recipe():
    readme = (ROOT / "README.md").read_text()
    assert "tunerkit run recipes/tuners.toml" in readme
    assert (ROOT / "recipes" / "tuners.toml").exists()
