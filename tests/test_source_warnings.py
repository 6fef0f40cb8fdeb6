"""Every source file compiles without a SyntaxWarning: an invalid escape such as ``\\ `` in a
docstring printed three warnings at the top of each GPU row's log on Python 3.12, and later
Pythons make it an error."""

import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("tunerkit", "tunerkit_plugins", "bench", "examples", "tests")
                 for p in (ROOT / folder).rglob("*.py"))


def test_every_source_file_compiles_without_a_syntax_warning():
    noisy = []
    for path in SOURCES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        noisy += [f"{path.relative_to(ROOT)}:{w.lineno}: {w.message}" for w in caught
                  if issubclass(w.category, (SyntaxWarning, DeprecationWarning))]
    assert len(SOURCES) > 100 and not noisy, noisy
