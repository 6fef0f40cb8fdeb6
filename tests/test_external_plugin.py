"""A plugin from a separately installed package is usable by name, without touching tunerkit."""

import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN = '''
from dataclasses import dataclass

import tunerkit


@dataclass
class Options:
    layers: int = tunerkit.option(1, "how many final decoder layers train")


class LastLayers(tunerkit.Plugin):
    name = "lastlayers"
    summary = "train only the last N decoder layers"
    Options = Options
    slot = "tuner"

    @tunerkit.hookimpl
    def apply_tuner(self, ctx):
        ctx.model.requires_grad_(False)
        for layer in ctx.model.model.layers[-self.options.layers:]:
            layer.requires_grad_(True)

    @tunerkit.hookimpl
    def collect_metrics(self, ctx):
        return {"lastlayers_trained": self.options.layers}
'''

RECIPE = '''
[recipe]
name = "ext"
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
name = "last2"
plugins = ["lastlayers"]
lastlayers = { layers = 2 }
'''


@pytest.mark.slow
def test_third_party_plugin_package(tmp_path):
    pkg = tmp_path / "src"
    (pkg / "tk_lastlayers").mkdir(parents=True)
    (pkg / "tk_lastlayers" / "__init__.py").write_text(PLUGIN)
    (pkg / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "tk-lastlayers"
        version = "0.1"
        [project.entry-points."tunerkit.plugins"]
        lastlayers = "tk_lastlayers:LastLayers"
        [tool.setuptools]
        packages = ["tk_lastlayers"]
    '''))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True)
    (tmp_path / "r.toml").write_text(RECIPE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    db = tmp_path / "db.sqlite"
    listed = subprocess.run([sys.executable, "-m", "tunerkit.cli", "list"], env=env, capture_output=True, text=True)
    assert "lastlayers: train only the last N decoder layers" in listed.stdout
    done = subprocess.run([sys.executable, "-m", "tunerkit.cli", "run", str(tmp_path / "r.toml"), "--db", str(db),
                           "--no-progress", "--runs-dir", str(tmp_path / "runs")], env=env, capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    from tunerkit.store import Store

    (record,) = Store(db).latest()
    assert record["status"] == "ok"
    m = record["metrics"]
    assert m["lastlayers_trained"] == 2
    # 2 of tiny-llama's 4 layers train: each layer has q,k,v,o, MLP and two norms
    layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64
    assert m["trainable_params"] == 2 * layer
