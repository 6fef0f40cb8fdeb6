"""How much memory an optimizer's state holds, tensors inside helper objects included."""

from __future__ import annotations

from typing import Any

import torch

GIB = 1024 ** 3


def state_bytes(state: Any) -> int:
    """Bytes of every distinct tensor reachable from ``state``.

    Walks dicts, lists and tuples, and the attributes of plain objects kept in the state
    (GaLore keeps its projection matrices in a projector object). A tensor shared between
    entries (bitsandbytes' quantization maps) counts once.
    """
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> int:
        if depth > 6 or id(obj) in seen:
            return 0
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(walk(v, depth + 1) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v, depth + 1) for v in obj)
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            return sum(walk(v, depth + 1) for v in vars(obj).values())
        return 0

    return walk(state, 0)


def state_gib(state: Any) -> float:
    return state_bytes(state) / GIB
