"""What a plugin measures, declared once so reports and figures can show it.

A plugin lists its metrics on its class::

    class IA3(tunerkit.Plugin):
        metrics = (tunerkit.MetricSpec("ia3_scale_mean", "mean IA3 scale", better="", format=".3f"),)

and returns the values from ``collect_metrics`` (a number per row) or records them step by
step with :func:`tunerkit.series.record` (``series=True``: a curve per row). ``tunerkit
report`` gives each declared number a column, ``tunerkit plot`` a bar panel or a curve.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the report's named formats; anything else is a format spec for ``format()`` (".3f", ",.0f")
FORMATS = ("num", "int", "acc", "loss", "pct")
BETTER = ("higher", "lower", "")


@dataclass(frozen=True)
class MetricSpec:
    #: the key in the row's metrics (or the series name)
    name: str
    #: column header / panel title; the name when empty
    label: str = ""
    #: unit shown after the label ("GiB", "tokens/s"); empty for a plain number
    unit: str = ""
    #: "higher" or "lower" is better; empty when neither (a count, a rank)
    better: str = ""
    #: one of FORMATS, or a format spec such as ".3f"
    format: str = "num"
    #: a per-step series (recorded with tunerkit.series.record), drawn as a curve
    series: bool = False

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"metric name must be letters, digits and '_', got {self.name!r}")
        if self.better not in BETTER:
            raise ValueError(f"metric {self.name}: better must be 'higher', 'lower' or '', got {self.better!r}")
        if self.format not in FORMATS:
            try:
                format(1.5, self.format)
            except ValueError:
                raise ValueError(f"metric {self.name}: format must be one of {FORMATS} or a format spec"
                                 f" like '.3f', got {self.format!r}") from None

    @property
    def header(self) -> str:
        text = self.label or self.name
        return f"{text} ({self.unit})" if self.unit else text

    def render(self, value) -> str | None:
        """``value`` in this metric's format spec; ``None`` for the named formats (the report's own)."""
        if self.format in FORMATS or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return format(value, self.format)
