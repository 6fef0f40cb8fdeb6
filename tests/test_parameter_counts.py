"""Parameter counts say how many weights a model has, not how its storage holds them."""

import torch
from torch import nn

from tunerkit.metrics import count_parameters, packed_linear_numel


class PackedLinear(nn.Module):
    """The shape of a GPTQ/AWQ layer: eight 4-bit weights a packed int32, scales per group,
    the bias too: all of them buffers (no parameter at all)."""

    def __init__(self, n_in, n_out, group=16):
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.register_buffer("qweight", torch.zeros(n_in // 8, n_out, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(n_in // group, n_out, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(n_out, dtype=torch.float16))


class CodebookLinear(nn.Module):
    """The shape of an AQLM layer: integer codes, a shared codebook and scales, as parameters."""

    def __init__(self, n_in, n_out, group=8):
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.codes = nn.Parameter(torch.zeros(n_out, n_in // group, 1, dtype=torch.int16), requires_grad=False)
        self.codebooks = nn.Parameter(torch.zeros(1, 256, 1, group))
        self.scales = nn.Parameter(torch.ones(n_out, 1, 1, 1))
        self.bias = nn.Parameter(torch.zeros(n_out))


def model_of(layer_cls):
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(100, 64), layer_cls(64, 128), nn.LayerNorm(128), nn.Linear(128, 100))


def test_a_packed_layer_counts_the_weights_it_stands_for():
    plain = model_of(nn.Linear)
    want = sum(p.numel() for p in plain.parameters())
    for cls in (PackedLinear, CodebookLinear):
        model = model_of(cls)
        stored = sum(p.numel() for p in model.parameters())
        assert stored != want  # what the old count reported
        assert count_parameters(model)["total_params"] == want, cls.__name__


def test_plain_linears_and_modules_with_children_are_left_to_their_parameters():
    assert packed_linear_numel(nn.Linear(4, 8)) is None
    assert packed_linear_numel(nn.Embedding(4, 8)) is None
    wrapper = nn.Module()  # PEFT's LoRA wrapper: in/out features named, the base layer a child
    wrapper.in_features, wrapper.out_features = 64, 128
    wrapper.base_layer = PackedLinear(64, 128)
    assert packed_linear_numel(wrapper) is None
    assert packed_linear_numel(wrapper.base_layer) == 64 * 128 + 128  # weights and bias


def test_trainable_share_is_of_the_logical_total():
    model = model_of(PackedLinear)
    for p in model.parameters():
        p.requires_grad_(False)
    model[3].weight.requires_grad_(True)
    counts = count_parameters(model)
    plain_total = sum(p.numel() for p in model_of(nn.Linear).parameters())
    assert counts["trainable_params"] == 128 * 100
    assert abs(counts["trainable_pct"] - 100.0 * 128 * 100 / plain_total) < 1e-9
