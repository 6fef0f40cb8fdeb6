"""A progress bar per row (step, loss, ETA) that also reads well in CI logs."""

from __future__ import annotations

import sys


class RowProgress:
    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled, self.bar = label, enabled, None

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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
