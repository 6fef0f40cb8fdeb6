"""Each tuner's trainable parameters equal an analytic count on the preset's shape (meta device, no weights)."""

import functools
import importlib.util
from pathlib import Path

import pytest

from tunerkit.models.presets import get_preset

BENCH = Path(__file__).resolve().parents[2] / "bench" / "count_params.py"


@functools.cache
def bench_script():
    """bench/count_params.py, whose counts docs/tuners/README.md reports: the same code is tested."""
    spec = importlib.util.spec_from_file_location("count_params", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_on_meta(plugins, model, **tables) -> int:
    return bench_script().count_on_meta(plugins, model, **tables)["trainable_params"]


def linears(p):
    """(in, out) of the seven projections of one Llama/Qwen2-shaped decoder layer."""
    kv = p.kv_heads * (p.hidden // p.heads)
    return [(p.hidden, p.hidden), (p.hidden, kv), (p.hidden, kv), (p.hidden, p.hidden),  # q k v o
            (p.hidden, p.ffn), (p.hidden, p.ffn), (p.ffn, p.hidden)]  # gate up down


def lora(p, r=8):
    return p.layers * sum(r * (i + o) for i, o in linears(p))


def dora(p, r=8):
    return lora(p, r) + p.layers * sum(o for _, o in linears(p))  # one magnitude per output row


def adalora(p, init_r=12):
    return p.layers * sum(init_r * (i + o) + init_r for i, o in linears(p))  # P, Q and the singular values E


def adapter(p, dim=128):
    return p.layers * (2 * p.hidden * dim + dim + p.hidden)


def llamapro(p, new=4):
    kv = p.kv_heads * (p.hidden // p.heads)
    bias = p.hidden + 2 * kv if p.qkv_bias else 0
    return new * (sum(i * o for i, o in linears(p)) + bias + 2 * p.hidden)  # + two RMSNorms


CASES = {  # row -> (plugins, option tables, formula)
    "lora": (["lora"], {"lora": {"targets": "ALL"}}, lora),
    "rslora": (["rslora"], {"rslora": {"targets": "ALL"}}, lora),
    "dora": (["dora"], {"dora": {"targets": "ALL"}}, dora),
    "loraplus": (["loraplus"], {"loraplus": {"targets": "ALL"}}, lora),
    "adalora": (["adalora"], {"adalora": {"targets": "ALL"}}, adalora),
    "lora+neftune": (["lora", "neftune"], {"lora": {"targets": "ALL"}}, lora),
    "adapter": (["adapter"], {}, adapter),
    "llamapro": (["llamapro"], {}, llamapro),
}


@pytest.mark.parametrize("row", list(CASES))
def test_tiny_llama_counts(row):
    plugins, tables, formula = CASES[row]
    assert count_on_meta(plugins, "tiny-llama", **tables) == formula(get_preset("tiny-llama"))


@pytest.mark.parametrize("row,seed_m", [("lora", 17.8913), ("dora", 19.2512), ("adalora", 26.8389),
                                        ("adapter", 33.6896), ("llamapro", 809.5826)])
def test_qwen_7b_counts_and_the_seed(row, seed_m):
    plugins, tables, formula = CASES[row]
    p = get_preset("qwen-7b-chat")
    got = count_on_meta(plugins, "qwen-7b-chat", **tables)
    assert got == formula(p)
    # qwen-1 fuses q, k, v into one c_attn (4096 -> 12288); the Qwen2-shaped preset has three matrices,
    # so LoRA-style adapters get r * 2 * hidden more per layer (AdaLoRA also two more E vectors of r);
    # DoRA's magnitudes (12288 outputs either way) and full blocks are the same (docs/tuners/README.md).
    r = {"lora": 8, "dora": 8, "adalora": 12}.get(row, 0)
    split_qkv_extra = p.layers * (r * 2 * p.hidden + (2 * r if row == "adalora" else 0))
    assert (got - split_qkv_extra) / 1e6 == pytest.approx(seed_m, abs=5e-5)  # ms-swift printed 4 decimals


def test_docs_table_shows_these_counts():
    table = (Path(__file__).resolve().parents[2] / "docs" / "tuners" / "README.md").read_text()
    p = get_preset("qwen-7b-chat")
    for formula in (lora, dora, adalora, adapter, llamapro):
        assert f"| {formula(p) / 1e6:.4f} |" in table, formula.__name__
