"""Each model-side tuner has a page in docs/tuners whose options table matches its options dataclass."""

import re
from pathlib import Path

import pytest

from tunerkit.options import describe
from tunerkit.plugins import get_plugin

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tuners"
PAGES = ["rslora", "dora", "adalora", "loraplus", "adapter", "llamapro", "neftune", "bnb", "gptq", "awq", "aqlm", "unsloth", "export"]


def documented_options(page: str) -> dict[str, str]:
    """option name -> default cell of the page's options table."""
    rows = {}
    for line in (DOCS / f"{page}.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "`option`":
            rows[cells[0].strip("`")] = cells[2].strip("`")
    return rows


@pytest.mark.parametrize("name", PAGES)
def test_page_lists_every_option_with_its_default(name):
    page = (DOCS / f"{name}.md").read_text()
    assert "arxiv.org" in page and "## Cost" in page
    documented = documented_options(name)
    options = {opt: default for opt, _, default, _ in describe(get_plugin(name).Options)}
    assert set(documented) == set(options)
    for opt, default in options.items():
        assert documented[opt] in (repr(default), str(default), f'"{default}"'), (opt, documented[opt], default)


def test_index_links_every_page():
    index = (DOCS / "README.md").read_text()
    for name in PAGES:
        assert f"({name}.md)" in index


#: the fast path's switches, each documented in its own section of docs/performance.md
FAST_PATH_SECTIONS = ["liger", "offload", "selective_checkpointing", "compile"]


def section_options(text: str, heading: str) -> dict[str, str]:
    """option name -> default cell of the options table under ``### heading``."""
    rows, inside = {}, False
    for line in text.splitlines():
        if line.startswith("#"):
            inside = line.strip() == f"### {heading}"
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # "\|" is a pipe inside a cell
        if inside and len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[2].strip("`")
    return rows


@pytest.mark.parametrize("name", FAST_PATH_SECTIONS)
def test_performance_page_lists_every_fast_path_option_with_its_default(name):
    text = (DOCS.parent / "performance.md").read_text()
    documented = section_options(text, name)
    options = {opt: default for opt, _, default, _ in describe(get_plugin(name).Options)}
    assert set(documented) == set(options)
    for opt, default in options.items():
        assert documented[opt] in (repr(default), str(default), f'"{default}"'), (opt, documented[opt], default)
