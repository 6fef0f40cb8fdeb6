"""File names from untrusted names: recipe names, row names, names read from a results database.

Every file tunerkit writes for a run, a plot, an export or an evaluation lies under the
folder the user named. A name only ever becomes one path component, and only after
:func:`safe_component`; :func:`inside` refuses any path that still leaves its base.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tunerkit.errors import UserError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
MAX_COMPONENT = 120  # well under every file system's 255-byte limit, room for suffixes


def safe_component(name: object) -> str:
    """``name`` as one harmless file name: no separators, no ``..``, no hidden or empty name.

    Unsafe characters become ``_``; leading dots become ``_`` (so ``..`` is ``__``); a name
    too long is cut and given a short hash of the whole, so two long names stay apart.
    """
    text = _UNSAFE.sub("_", str(name))
    stripped = text.lstrip(".")
    text = "_" * (len(text) - len(stripped)) + stripped
    if not text:
        return "_"
    if len(text) > MAX_COMPONENT:
        digest = hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:10]
        text = f"{text[:MAX_COMPONENT - 11]}-{digest}"
    return text


def inside(base: str | Path, *parts: object) -> Path:
    """``base / part / ...`` with every part sanitised, checked to resolve under ``base``."""
    base = Path(base)
    path = base.joinpath(*(safe_component(p) for p in parts))
    root = base.resolve()
    if not path.resolve().is_relative_to(root):  # a symlink inside base pointing out of it
        raise UserError(f"'{path}' would lie outside '{base}'", hint="remove the link that leads out of it")
    return path
