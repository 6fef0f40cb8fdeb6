"""tunerkit: compare LLM fine-tuning methods fairly and fast."""

from tunerkit.hookspecs import hookimpl
from tunerkit.metricspec import MetricSpec
from tunerkit.options import option
from tunerkit.plugins import Plugin

__all__ = ["MetricSpec", "Plugin", "hookimpl", "option"]
__version__ = "0.1.0"
