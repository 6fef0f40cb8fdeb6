"""The ia3 plugin, tested with tunerkit.testing alone (its fixtures come from the pytest11 entry point)."""

from tunerkit.testing import PluginConformance, plot_panels, report_text

RECIPE = """
[recipe]
name = "ia3-demo"

[defaults]
model = "tiny-llama"
dataset = "synthetic:lengths?mean=24&sd=4&min=8&max=32&rows=8"
max_train_samples = 4
val_size = 0
batch_size = 2
max_length = 32
max_steps = 2
evaluate = []
gradient_checkpointing = false

[[row]]
name = "ia3-slow"
plugins = ["ia3"]
learning_rate = 1e-4

[[row]]
name = "ia3-fast"
plugins = ["ia3"]
learning_rate = 1e-1
"""


class TestIA3Conformance(PluginConformance):
    plugin = "ia3"


def test_only_the_scaling_vectors_train(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("ia3"))
    trainable = [n for n, p in ctx.model.named_parameters() if p.requires_grad]
    assert trainable and all("ia3_l" in n for n in trainable)
    # one vector per adapted layer: k, v and down projections of 4 decoder layers
    assert len(trainable) == 3 * 4


def test_a_misspelt_target_fails_the_check(recipe_error):
    recipe_error(RECIPE.replace('plugins = ["ia3"]\nlearning_rate = 1e-4',
                                'plugins = ["ia3"]\nlearning_rate = 1e-4\nia3 = { targets = ["k_prj"], feedforward = [] }'),
                 "row 'ia3-slow'", "match no module", "did you mean 'k_proj'?")


def test_scale_drift_is_a_report_column_and_a_plot_panel(tiny_recipe):
    db, name = tiny_recipe(RECIPE)
    table = report_text(db, name)
    header = next(line for line in table.splitlines() if line.startswith("| row"))
    assert "IA3 scale drift (mean abs(l - 1))" in header
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ia3-")}
    index = next(i for i, c in enumerate(columns) if c.startswith("IA3 scale drift"))
    slow, fast = float(rows["ia3-slow"][index]), float(rows["ia3-fast"][index])
    assert 0 < slow < fast  # a larger learning rate moves the scales further from one
    assert "IA3 scale drift (mean abs(l - 1))" in report_text(db, name, "csv").splitlines()[0].split(",")
    panels = plot_panels(db, name)
    assert any(t.startswith("IA3 scale drift") for t in panels["metrics"])
    assert "learning rate" in panels["series"]
