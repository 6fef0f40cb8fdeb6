"""Every built-in plugin passes the conformance suite third-party plugins run (tunerkit.testing)."""

import importlib.metadata

import pytest

from tunerkit.plugins import ENTRY_POINT_GROUP
from tunerkit.testing import PluginConformance

BUILT_IN = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
                  if ep.value.startswith("tunerkit_plugins."))


def test_every_built_in_plugin_is_in_the_suite():
    assert len(BUILT_IN) >= 20


#: globals a plugin still leaves behind, until its teardown restores them (strict: fixed means remove)
#: plugins known to leave process-wide state behind (strict: the mark fails once fixed)
LEAKS: dict[str, str] = {}


def _param(name):
    leak = LEAKS.get(name)
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=leak)) if leak else name


class TestBuiltInConformance(PluginConformance):
    @pytest.fixture(params=[_param(n) for n in BUILT_IN])
    def plugin_name(self, request):
        return request.param
