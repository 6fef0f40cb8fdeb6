"""Several plugins wrap one layer's checkpoint call; any teardown order leaves the original."""

import functools

from torch import nn

from tunerkit_plugins._helpers.layers import restore_checkpoint_calls, wrap_checkpoint_calls


def tagging(tag):
    """A wrap that records its tag around the call it wraps."""
    def wrap(previous):
        return lambda *args: [tag, *previous(*args)]
    return wrap


def layer_with_call():
    layer = nn.Linear(2, 2)
    layer._gradient_checkpointing_func = lambda *args: ["checkpoint", *args]
    return layer


def test_wraps_compose_in_setup_order_and_come_off_in_any_order():
    for teardown_order in ((0, 1, 2), (2, 1, 0), (1, 0, 2)):
        layer = layer_with_call()
        original = layer._gradient_checkpointing_func
        tags = ("offload", "selective", "compile")  # set up in this order: compile's wrap is outermost
        patched = [wrap_checkpoint_calls([layer], tagging(tag)) for tag in tags]
        assert layer._gradient_checkpointing_func("x") == ["compile", "selective", "offload", "checkpoint", "x"]
        restore_checkpoint_calls(patched[teardown_order[0]])
        remaining = [t for t in reversed(tags) if t != tags[teardown_order[0]]]
        assert layer._gradient_checkpointing_func("x") == [*remaining, "checkpoint", "x"]
        for index in teardown_order[1:]:
            restore_checkpoint_calls(patched[index])
        assert layer._gradient_checkpointing_func is original
        assert "_tunerkit_checkpoint_wraps" not in vars(layer)


def test_a_partial_wrap_keeps_its_arguments():
    layer = layer_with_call()
    patched = wrap_checkpoint_calls([layer], lambda previous: functools.partial(previous, "kept"))
    assert layer._gradient_checkpointing_func("x") == ["checkpoint", "kept", "x"]
    restore_checkpoint_calls(patched)
    assert patched == []
