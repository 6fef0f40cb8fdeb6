"""The plugin author's kit: new hooks, declared metrics, settings a plugin replaces, targets."""

import pytest
import torch

import tunerkit
from tunerkit import plugins
from tunerkit.testing import make_tiny_row, train_row


class GradProbe:
    """Gradient norms where the two hooks see them."""

    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def norm(ctx):
        return float(torch.nn.utils.get_total_norm([p.grad for p in ctx.model.parameters() if p.grad is not None]))

    @tunerkit.hookimpl
    def on_before_optimizer_step(self, ctx):
        self.before.append(self.norm(ctx))

    @tunerkit.hookimpl
    def on_step_end(self, ctx):
        self.after.append(self.norm(ctx))


def test_on_before_optimizer_step_sees_the_unclipped_gradients(tmp_path):
    from tunerkit.loop import run_row

    probe = GradProbe()
    row = make_tiny_row("lora", max_grad_norm=1e-4, max_steps=2)
    metrics = run_row(row, tmp_path, extra_plugins=[probe])
    assert len(probe.before) == len(probe.after) == 2
    assert all(b > 1e-3 for b in probe.before)  # the raw gradients, far above the clip
    assert all(a == pytest.approx(1e-4, rel=1e-3) for a in probe.after)  # clipped by the loop after the hook
    assert [step for step, _ in metrics["series"]["lr"]] == [1, 2]
    assert metrics["series"]["lr"][0][1] == pytest.approx(row.settings.learning_rate)


def test_validate_model_sees_the_meta_model_and_refuses_a_misspelt_target(recipe_error):
    text = """
[[row]]
name = "r"
plugins = ["lora"]
model = "tiny-llama"
lora = { targets = ["q_proj", "v_prj"] }
"""
    recipe_error(text, "[row 'r'] plugins: lora: target modules ['v_prj'] match no module of llama",
                 "did you mean 'v_proj'?")


def test_the_skeleton_has_the_rows_modules_and_no_weights():
    from tunerkit.validation import model_skeleton

    model = model_skeleton(make_tiny_row("lora"))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert len(model.model.layers) == 4 and model.get_submodule("model.layers.3.self_attn.q_proj") is not None


def test_default_targets_come_from_the_preset_in_the_models_config():
    from tunerkit.validation import model_skeleton
    from tunerkit.targets import resolve_targets, unmatched_targets

    model = model_skeleton(make_tiny_row(model="tiny-llama"))
    assert resolve_targets("DEFAULT", model) == ["q_proj", "k_proj", "v_proj"]
    assert resolve_targets("ALL", model) == "all-linear"
    assert unmatched_targets(["q_proj", "self_attn.k_proj"], model) is None


class OwnSchedule(tunerkit.Plugin):
    name = "own_schedule"
    overrides = {"lr_scheduler": "a constant rate", "warmup_ratio": "no warm-up"}

    @tunerkit.hookimpl
    def make_scheduler(self, ctx):
        return torch.optim.lr_scheduler.LambdaLR(ctx.optimizer, lambda step: 1.0)


def test_settings_a_plugin_replaces_are_stored_as_not_used(monkeypatch, tmp_path):
    monkeypatch.setattr(plugins, "_REGISTRY", {**plugins.registry(), OwnSchedule.name: OwnSchedule})
    row = make_tiny_row("lora", "own_schedule", max_steps=2)
    config = row.config()
    assert config["not_used"] == {"lr_scheduler": "replaced by plugin 'own_schedule': a constant rate",
                                  "warmup_ratio": "replaced by plugin 'own_schedule': no warm-up"}
    plain = make_tiny_row("lora", max_steps=2).config()
    assert "not_used" not in plain
    # the record says so; the row's identity (its hash) does not depend on it
    assert row.config_hash() == make_tiny_row("lora", "own_schedule", max_steps=2).config_hash()
    metrics = train_row(row, tmp_path)
    assert {lr for _, lr in metrics["series"]["lr"]} == {row.settings.learning_rate}


@pytest.mark.parametrize("bad", [dict(better="more"), dict(format="%%x"), dict(name="has space")])
def test_metric_spec_refuses_what_reports_cannot_show(bad):
    with pytest.raises(ValueError):
        tunerkit.MetricSpec(**{"name": "m", **bad})


def test_a_declared_metric_gets_a_report_column(monkeypatch):
    from tunerkit.report.tables import table_rows

    class Probe(tunerkit.Plugin):
        name = "probe"
        metrics = (tunerkit.MetricSpec("probe_ratio", "probe ratio", unit="x", better="higher", format=".1f"),
                   tunerkit.MetricSpec("probe_curve", series=True))

    monkeypatch.setattr(plugins, "_REGISTRY", {**plugins.registry(), "probe": Probe})
    records = [{"recipe": "r", "row": name, "profile": None, "status": "ok", "config": {"plugins": ["probe"]},
                "metrics": {"probe_ratio": value, "probe_curve": [[1, 0.5]]}, "environment": {}}
               for name, value in (("a", 1.25), ("b", 3.0))]
    headers, body = table_rows(records)
    column = headers.index("probe ratio (x) ↑")
    assert [line[column] for line in body] == ["1.2", "3.0"]
    assert not any("probe_curve" in h for h in headers)  # a series is a curve, not a cell

