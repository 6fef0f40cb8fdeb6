"""overlap_steps: the loop stops waiting for the GPU between steps; what it trains and what it
counts stay the same, and step times come from marks on the GPU's timeline."""

from __future__ import annotations

import itertools

import torch

from tunerkit.metrics import StepClock


class Progress:
    def __init__(self):
        self.updates: list[tuple[int, float]] = []

    def start(self, total):
        self.total = total

    def update(self, step, loss):
        self.updates.append((step, loss))


def test_overlapped_steps_train_and_count_exactly_as_synchronised_ones(tiny_row, tmp_path):
    from tunerkit.loop import run_row

    runs = {}
    for overlap in (False, True):
        progress = Progress()
        row = tiny_row("lora", max_steps=4, gradient_accumulation_steps=2, overlap_steps=overlap)
        runs[overlap] = (run_row(row, tmp_path / str(overlap), progress=progress), progress)
    (sync, sync_progress), (over, over_progress) = runs[False], runs[True]
    assert over["train_loss_curve"] == sync["train_loss_curve"]
    assert len(over["train_loss_curve"]) == 4
    for key in ("train_samples", "train_tokens", "train_label_tokens", "timed_steps", "eval_loss"):
        assert over[key] == sync[key], key
    assert over["tokens_per_s"] > 0 and over["samples_per_s"] > 0
    # the losses reach the progress bar one step late, every step's once, the last one at the end
    assert [s for s, _ in over_progress.updates][-4:] == [1, 2, 3, 4]
    assert [loss for _, loss in over_progress.updates][-4:] == over["train_loss_curve"]
    assert sync_progress.updates == list(zip(range(1, 5), sync["train_loss_curve"]))


def test_label_tokens_are_counted_on_the_host_when_collated():
    """The count the loop uses comes with the batch; it equals counting the labels themselves."""
    from tunerkit.distributed import count_shifted_labels
    from tunerkit.loop import counting_label_tokens, label_tokens_of

    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 1, 2, 3, 4]])
    collate = counting_label_tokens(lambda examples: {"input_ids": labels.clone(), "labels": labels.clone()})
    batch = collate([None, None])
    assert batch["num_label_tokens"] == count_shifted_labels(labels) == 6
    assert label_tokens_of(batch) == 6 and "num_label_tokens" not in batch
    # a sequence-parallel shard counts its own shifted labels, whatever the collator counted
    shard = {"num_label_tokens": 6, "shift_labels": torch.tensor([[5, -100, -100]])}
    assert label_tokens_of(shard) == 1


class FakeEvent:
    """A CUDA event's timing on the host clock: record() notes the time, elapsed_time() subtracts."""

    clock = itertools.count()

    def __init__(self, enable_timing=True):
        self.at = None

    def record(self):
        self.at = next(FakeEvent.clock)

    def elapsed_time(self, end):
        return float(end.at - self.at) * 1000.0  # ms


def test_overlapped_step_spans_chain_end_to_start_and_a_pause_opens_a_new_span(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    FakeEvent.clock = itertools.count()
    clock = StepClock(torch.device("cuda"), overlap=True)
    clock.step_begins()   # t=0
    clock.step_ends()     # t=1
    clock.step_begins()   # no new mark: this step starts where the last one ended
    clock.step_ends()     # t=2
    clock.pause()         # evaluation ran here
    clock.step_begins()   # t=3
    clock.step_ends()     # t=4
    assert [(s.at, e.at) for s, e in clock.spans] == [(0, 1), (1, 2), (3, 4)]
    assert clock.seconds() == [1.0, 1.0, 1.0]


def test_synchronised_steps_time_each_step_alone():
    clock = StepClock(torch.device("cpu"), overlap=False)
    for _ in range(3):
        clock.step_begins()
        clock.step_ends()
    starts = [s for s, _ in clock.spans]
    ends = [e for _, e in clock.spans]
    assert all(e >= s for s, e in clock.spans)
    assert all(b >= a for a, b in zip(ends, starts[1:]))  # a new start after each end
    assert len(clock.seconds()) == 3
