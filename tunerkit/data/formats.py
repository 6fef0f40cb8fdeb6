"""Local data files in the common schemas, converted to ``{"messages": [...]}``."""

from __future__ import annotations

import json
from pathlib import Path

from tunerkit.errors import UserError

SCHEMAS = "messages (role/content), alpaca (instruction/input/output), sharegpt (conversations from/value)"
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


def to_messages(record: dict) -> dict:
    if "messages" in record:
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}
    if "instruction" in record and "output" in record:
        prompt = record["instruction"] + (("\n\n" + record["input"]) if record.get("input") else "")
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]}
    if "conversations" in record:
        msgs = [{"role": _SHAREGPT_ROLES.get(t.get("from", ""), "user"), "content": t.get("value", "")}
                for t in record["conversations"]]
        return {"messages": msgs}
    if "input_ids" in record:
        return {"input_ids": record["input_ids"], "labels": record.get("labels", record["input_ids"])}
    raise ValueError(f"record with keys {sorted(record)} matches no accepted schema: {SCHEMAS}")


def read_raw(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    if path.suffix == ".json":
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, list) else [data]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise UserError(f"unsupported data file type '{path.suffix}'", key="dataset", hint="use .jsonl, .json or .parquet")


def read_records(path: Path) -> list[dict]:
    raw = read_raw(path)
    try:
        return [to_messages(r) for r in raw]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: {err}", key="dataset", hint=f"accepted schemas: {SCHEMAS}") from None
