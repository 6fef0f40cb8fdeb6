"""A progress bar per row (step, loss, ETA) that also reads well in CI logs.

After the last step the bar says what is being evaluated and for how long: evaluation
(generation for accuracy, decoding speed) can take longer than training, and a bar
frozen at 100% reads as a hang.
"""

from __future__ import annotations

import sys
import threading
import time

from tunerkit.hookspecs import hookimpl


class RowProgress:
    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled, self.bar = label, enabled, None
        self._stop: threading.Event | None = None

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=self.label, unit="step", file=sys.stderr, mininterval=1.0,
                        dynamic_ncols=True, leave=True)

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)

    def evaluating(self, names: list[str]) -> None:
        """Show the evaluations running now, with the seconds they have taken so far."""
        if not self.enabled or not names:
            return
        what = f"evaluating {', '.join(names)}"
        if self.bar is None:  # an evaluation-only row draws no step bar
            print(f"{self.label}: {what}", file=sys.stderr, flush=True)
            return
        loss = (self.bar.postfix or "").strip(", ")
        self._stop, started, bar = threading.Event(), time.monotonic(), self.bar

        def tick(stop=self._stop):
            while True:
                bar.set_postfix_str(", ".join(p for p in (loss, f"{what} {time.monotonic() - started:.0f}s") if p))
                if stop.wait(2.0):
                    return

        threading.Thread(target=tick, daemon=True, name="tunerkit-eval-progress").start()

    def evaluated(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def close(self) -> None:
        self.evaluated()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EvaluationProgress:
    """Hook implementations a run adds to every row: evaluation starts and ends on the bar."""

    def __init__(self, bar: RowProgress):
        self.bar = bar

    @hookimpl(tryfirst=True)
    def evaluate(self, ctx):
        self.bar.evaluating(list(ctx.settings.evaluate))

    @hookimpl(tryfirst=True)
    def collect_metrics(self, ctx):
        self.bar.evaluated()
