import pytest

from tunerkit import hookimpl


def test_lora_row_trains_and_reports(tiny_row, run_tiny):
    m = run_tiny(tiny_row("lora", lora={"rank": 4}, max_steps=3))
    assert m["optimizer_steps"] == 3
    assert 0 < m["trainable_params"] < m["total_params"]
    assert m["random_weights"] is True
    assert len(m["train_loss_curve"]) == 3
    assert m["tokens_per_s"] > 0 and m["samples_per_s"] > 0
    assert "eval_loss" in m


def test_eval_only_reference_row(tiny_row, run_tiny):
    m = run_tiny(tiny_row(train=False))
    assert m["trainable_params"] == 0
    assert "optimizer_steps" not in m
    assert m["eval_loss"] > 0


def test_empty_mix_table_switches_mixing_off(tiny_row):
    assert tiny_row("lora", mix={}).settings.mix is None


def test_preset_on_synthetic_tokens_needs_no_tokenizer(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", dataset="synthetic:lengths?rows=8&mean=40&sd=10&min=8&max=64"))
    assert ctx.tokenizer is None


def test_synthetic_row_trains_without_tokenizer(tiny_row, run_tiny):
    m = run_tiny(tiny_row("lora", dataset="synthetic:lengths?rows=8&mean=40&sd=10&min=8&max=64", val_size=0,
                          evaluate=[]))
    assert m["optimizer_steps"] == 2 and m["train_tokens"] > 0


def test_git_revision_says_dirty_when_tracked_files_changed(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from tunerkit import metrics

    if shutil.which("git") is None:  # CI images without git record no revision at all
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    module = repo / "pkg" / "m.py"
    module.write_text("x = 1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "c"], check=True)
    monkeypatch.setattr(metrics.os.path, "abspath", lambda _p: str(module))
    clean = metrics._git_revision()
    assert clean and "+" not in clean
    module.write_text("x = 2\n")
    assert metrics._git_revision() == clean + "+dirty"


class SeeCache:
    """Records the KV cache each training forward returns."""

    def __init__(self):
        self.caches = []

    @hookimpl
    def on_train_begin(self, ctx):
        self.handle = ctx.unwrapped_model().register_forward_hook(
            lambda module, args, output: self.caches.append(getattr(output, "past_key_values", None)))

    @hookimpl
    def teardown(self, ctx):
        self.handle.remove()


def test_training_without_checkpointing_builds_no_kv_cache(tiny_row, tmp_path):
    from tunerkit.loop import run_row

    spy = SeeCache()
    run_row(tiny_row("lora", gradient_checkpointing=False, evaluate=[], max_steps=1), tmp_path / "r",
            extra_plugins=[spy])
    assert spy.caches and all(c is None for c in spy.caches), spy.caches
