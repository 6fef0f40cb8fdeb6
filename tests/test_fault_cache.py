"""Model cache folders are written whole or not at all, and readable by every user."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tunerkit.models.loading import publish


def test_an_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "models" / "m"

    def write(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # Ctrl-C half way through the conversion

    with pytest.raises(KeyboardInterrupt):
        publish(target, write, ".convert-")
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []


def test_a_killed_writes_folder_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".convert-{dead.pid}-abc"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    publish(tmp_path / "m", lambda folder: (folder / "config.json").write_text("{}"), ".convert-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_the_cache_is_readable_by_other_users(tmp_path):
    def write(folder):
        (folder / "sub").mkdir()
        (folder / "sub" / "w.bin").write_bytes(b"x")
        (folder / "config.json").write_text("{}")

    old = os.umask(0o077)  # a private umask must not make a shared cache private
    try:
        target = publish(tmp_path / "m", write, ".convert-")
    finally:
        os.umask(old)
    for path in [target, *target.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
