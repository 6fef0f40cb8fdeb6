"""Tables and figures of recorded results."""

from __future__ import annotations

from pathlib import Path


def recorded(db: Path, recipe_name: str | None, profile: str | None) -> list[dict]:
    """The latest record of every row of ``recipe_name`` (all recipes when ``None``), of one
    profile when given; a one-line error when there is none (what ``report`` and ``plot`` show)."""
    from tunerkit.errors import UserError
    from tunerkit.store import Store

    records = Store(db).latest(recipe_name)
    if profile:
        records = [r for r in records if r["profile"] == profile]
    if not records:
        raise UserError(f"no results for {recipe_name or 'any recipe'} in {db}",
                        hint="run 'tunerkit run RECIPE' first")
    return records
