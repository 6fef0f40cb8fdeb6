"""The allocator's mode per row, and what the row's memory actually lived in (stand-ins for CUDA)."""

import pytest
import torch

from tunerkit import allocator


@pytest.fixture
def fake_cuda(monkeypatch):
    settings = []
    segments = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", settings.append)
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", lambda: {"segments": segments})
    for v in allocator.CONF_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    return settings, segments


def test_a_default_row_records_segments_a_library_made_expandable(fake_cuda, monkeypatch):
    settings, segments = fake_cuda
    metrics = {}
    with allocator.cuda_allocator("default", metrics):
        # what GPT-QModel's import does, inside a row that asked for nothing
        monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True")
        segments.append({"is_expandable": True})
    assert settings == []  # the default row changes nothing
    assert metrics == {"expandable_segments": True, "alloc_conf": {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}}


def test_an_expandable_row_switches_and_switches_back(fake_cuda):
    settings, segments = fake_cuda
    metrics = {}
    with allocator.cuda_allocator("expandable", metrics):
        segments.append({"is_expandable": True})
    assert settings == [allocator.EXPANDABLE, "expandable_segments:False"]
    assert metrics == {"allocator": "expandable", "expandable_segments": True}


def test_a_cpu_row_records_nothing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    metrics = {}
    with allocator.cuda_allocator("expandable", metrics):
        pass
    assert metrics == {}
