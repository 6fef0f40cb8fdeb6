"""Tables and figures of recorded results."""

from __future__ import annotations

from pathlib import Path


def recorded(db: Path, recipe_name: str | None, profile: str | None) -> list[dict]:
    """The latest record of every row of ``recipe_name`` (all recipes when ``None``), of one
    profile when given; a one-line error when there is none (what ``report`` and ``plot`` show)."""
    from tunerkit.errors import UserError
    from tunerkit.store import Store

    records = Store(db).latest(recipe_name)
    others = sorted({str(r["profile"]) for r in records if r["profile"] != profile}) if profile else []
    if profile:
        records = [r for r in records if r["profile"] == profile]
    if not records and others:
        raise UserError(f"no {profile} records for {recipe_name or 'any recipe'} in {db}; this database has "
                        f"{', '.join(others)} records", key="--profile",
                        hint=f"show them with -p {others[0]}, e.g. tunerkit report RECIPE -p {others[0]}")
    if not records:
        raise UserError(f"no results for {recipe_name or 'any recipe'} in {db}",
                        hint="run 'tunerkit run RECIPE' first")
    return records


def with_unrun_rows(records: list[dict], recipe_path: Path, profile: str | None) -> list[dict]:
    """``records`` plus a "not run" entry for every row of the recipe (under each profile the
    records have, or ``profile``) that has no record: a table with rows missing must say so,
    and shows ms-swift's numbers for those rows all the same. A profile the recipe no longer
    has adds nothing (its records still show)."""
    from tunerkit.recipe import load_recipe, profile_names, read_toml
    from tunerkit.report.tables import NOT_RUN

    known = profile_names(read_toml(recipe_path))
    profiles = [profile] if profile else list(dict.fromkeys(r.get("profile") for r in records))
    have = {(r.get("profile"), r["row"]) for r in records}
    out = list(records)
    for prof in profiles:
        if prof is not None and prof not in known:
            continue
        recipe = load_recipe(recipe_path, prof, check_files=False)
        for row in recipe.rows:
            if (prof, row.name) not in have:
                out.append({"recipe": recipe.name, "row": row.name, "profile": prof, "repeat": 0,
                            "status": NOT_RUN, "reason": "no record in this store", "config": row.config(),
                            "metrics": {}, "environment": {}, "reference": row.reference})
    return out
