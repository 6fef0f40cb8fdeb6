"""bench/peers.py: its bookkeeping (verdicts, counting, rendering) on a CPU at tiny shapes.

Speeds and memory below are made up for the verdict tests; the smoke run asserts no speed.
"""

import json

import pytest


@pytest.fixture(scope="module")
def peers(bench_script):
    return bench_script("peers")


def ok(name, peer, tokens_per_s, alloc):
    return {"name": name, "peer": peer, "status": "ok", "tokens_per_s": tokens_per_s, "peak_alloc_gib": alloc}


def test_ratio_is_taken_against_the_fastest_peer_using_as_much_memory_or_more(peers):
    results = [ok("peer/a", True, 8000.0, 15.0), ok("peer/b", True, 9000.0, 20.0),
               ok("tunerkit/x", False, 9600.0, 14.9), ok("tunerkit/y", False, 14000.0, 19.0),
               ok("tunerkit/z", False, 16000.0, 39.0), {"name": "peer/c", "peer": True, "status": "OOM"}]
    v = peers.verdicts(results)
    assert v["fastest_peer"]["name"] == "peer/b"
    per = {c["name"]: c for c in v["per_config"]}
    assert per["tunerkit/x"]["rival"] == "peer/b"  # both peers use >= 14.9 GiB: the faster one
    assert per["tunerkit/y"]["x_rival"] == pytest.approx(14000 / 9000)
    assert per["tunerkit/z"]["rival"] is None and per["tunerkit/z"]["x_rival"] is None  # no peer used 39 GiB
    speed, vs_fastest, vs_fastest15 = v["targets"]
    assert speed["best"] == "tunerkit/y" and speed["met"]  # 1.56x at 19.0 <= 20.0 GiB
    assert vs_fastest["best"] == "tunerkit/x" and vs_fastest["met"]  # 9600 >= 9000 at <= 15 GiB
    assert vs_fastest15["x"] == pytest.approx(9600 / 8000) and vs_fastest15["met"]


def test_memory_an_earlier_entry_left_allocated_is_not_counted_against_a_later_one(peers):
    # The second peer began with 14.4 GiB of the first entry still allocated (one H200, 2026-12-06).
    leaky = {**ok("peer/b", True, 9000.0, 29.4), "held_before_gib": 14.4}
    ours = {**ok("tunerkit/x", False, 9600.0, 29.3), "held_before_gib": 14.4}
    for r in (leaky, ours):
        r.update(peers.own_memory(r))
    assert leaky["own_peak_alloc_gib"] == pytest.approx(15.0)
    v = peers.verdicts([ok("peer/a", True, 4500.0, 19.1), leaky, ours])
    # Own peaks: tunerkit/x needs 14.9 GiB, peer/b 15.0, so x is under both the peer's memory and 15 GiB.
    assert v["fastest_peer"]["own_peak_alloc_gib"] == pytest.approx(15.0)
    assert v["targets"][1]["best"] == "tunerkit/x" and v["targets"][1]["met"]
    assert peers.own_memory({"peak_alloc_gib": None, "held_before_gib": 1.0}) == {}


def test_a_target_is_not_met_when_nothing_fits_under_the_peers_memory(peers):
    v = peers.verdicts([ok("peer/a", True, 8000.0, 15.0), ok("tunerkit/z", False, 16000.0, 39.0)])
    assert not v["targets"][0]["met"] and v["targets"][0]["best"] is None
    assert peers.verdicts([ok("tunerkit/z", False, 1.0, 1.0)])["fastest_peer"] is None


def test_smoke_run_counts_every_stack_the_same_way(peers, tmp_path, capsys):
    """HF + PEFT, TRL's SFTTrainer (padding-free batch of 8) and a tunerkit packed config at tiny shapes."""
    pytest.importorskip("trl")
    out = tmp_path / "peers.json"
    assert peers.main(["--smoke", "--entries", "peer/hf_peft,peer/trl_bs8,tunerkit/packed20k", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    base, trl, ours = payload["results"]
    assert [r["status"] for r in payload["results"]] == ["ok", "ok", "ok"]
    assert base["same_samples"] == "same order" and ours["same_samples"] == "same set (packed)"
    assert trl["same_samples"].startswith("same set")  # TRL's own sampler: the bench's samples, its order
    for r in (base, trl, ours):  # tokens/s and samples/s are timed tokens and samples over the same seconds
        assert r["tokens_per_s"] / r["samples_per_s"] == pytest.approx(r["timed_tokens"] / r["timed_samples"])
    assert trl["timed_samples"] == 8 * trl["timed_steps"]  # a batch of 8 samples per timed step
    assert base["peer"] and trl["peer"] and not ours["peer"]
    capsys.readouterr()
    assert peers.main(["--render", str(out)]) == 0
    assert "| peer/trl_bs8 |" in capsys.readouterr().out
