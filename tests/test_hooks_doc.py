"""docs/hooks.md documents exactly the hooks of tunerkit/hookspecs.py, with their arguments."""

import inspect
import re
from pathlib import Path

from tunerkit import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


def spec_hooks() -> dict[str, tuple[list[str], bool]]:
    found = {}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        opts = getattr(fn, "tunerkit_spec", None)
        if opts is None:
            continue
        found[name] = (list(inspect.signature(fn).parameters), bool(opts.get("firstresult")))
    return found


def doc_hooks() -> dict[str, tuple[list[str], bool]]:
    text = DOC.read_text()
    found = {}
    for match in re.finditer(r"^### `(\w+)\(([^)]*)\)`\n(.*?)(?=^### |\Z)", text, flags=re.M | re.S):
        args = [a.strip() for a in match.group(2).split(",") if a.strip()]
        found[match.group(1)] = (args, "*First result.*" in match.group(3))
    return found


def test_every_hook_is_documented_with_its_arguments():
    specs, docs = spec_hooks(), doc_hooks()
    assert specs, "no hookspecs found"
    assert set(specs) == set(docs), f"undocumented: {set(specs) - set(docs)}, stale docs: {set(docs) - set(specs)}"
    for name, (args, first) in specs.items():
        assert docs[name][0] == args, f"{name}: docs say {docs[name][0]}, code says {args}"
        assert docs[name][1] == first, f"{name}: first-result flag differs between docs and code"


def test_core_implements_every_first_result_hook_it_relies_on():
    from tunerkit.core import CoreDefaults

    first = {n for n, (_, f) in spec_hooks().items() if f}
    implemented = {n for n in first if hasattr(CoreDefaults, n)}
    # every first-result hook has a core default, so a row with no plugin options still runs
    assert implemented == first
