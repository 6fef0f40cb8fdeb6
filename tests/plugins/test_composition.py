"""Which model-side tuners may share a row: one fills the "tuner" slot; neftune composes with any."""

import pytest

from tunerkit.errors import UserError
from tunerkit.recipe import make_row

TUNERS = ["lora", "rslora", "dora", "adalora", "loraplus", "adapter", "llamapro", "full"]


def test_two_tuners_in_one_row_are_rejected():
    with pytest.raises(UserError, match="'lora' and 'full' both fill the 'tuner' role"):
        make_row("x", ["lora", "full"])
    # A LoRA+ optimizer over DoRA adapters is no ms-swift row: two tuners, rejected the same way.
    with pytest.raises(UserError, match="'loraplus' and 'dora' both fill the 'tuner' role"):
        make_row("x", ["loraplus", "dora"])


@pytest.mark.parametrize("tuner", TUNERS)
def test_every_tuner_fills_the_slot_and_composes_with_neftune(tuner):
    other = "full" if tuner != "full" else "lora"
    with pytest.raises(UserError, match="tuner"):
        make_row("x", [tuner, other])
    assert make_row("x", [tuner, "neftune"]).plugins == [tuner, "neftune"]


def test_bad_options_are_one_line_errors():
    for plugins, table in [(["loraplus"], {"loraplus": {"lr_ratio": 0.0}}),
                           (["adapter"], {"adapter": {"dim": 0}}),
                           (["llamapro"], {"llamapro": {"num_new_blocks": 0}}),
                           (["lora", "neftune"], {"neftune": {"alpha": -1.0}})]:
        with pytest.raises(UserError) as err:
            make_row("x", plugins, **table)
        assert "\n" not in str(err.value)


def test_llamapro_cannot_add_more_blocks_than_layers():
    from tunerkit.validation import validate_row

    with pytest.raises(UserError, match="num_new_blocks=5 exceeds the model's 4 layers"):
        validate_row(make_row("x", ["llamapro"], model="tiny-llama", llamapro={"num_new_blocks": 5}), file="<test>")
