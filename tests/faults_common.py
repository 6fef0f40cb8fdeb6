"""The tiny recipe the fault tests run: one LoRA/full step on the tiny preset, offline."""

TINY_RECIPE = '''
[recipe]
name = "{name}"
[defaults]
model = "tiny-llama"
dataset = "builtin:arithmetic"
max_train_samples = 8
val_size = 0
batch_size = 4
max_length = 64
max_steps = 1
gradient_checkpointing = false
evaluate = []
'''


def tiny_recipe(name: str, rows: str, defaults: str = "") -> str:
    """A recipe of ``rows`` (TOML [[row]] tables) with the tiny defaults plus ``defaults``."""
    return TINY_RECIPE.format(name=name) + defaults + rows
