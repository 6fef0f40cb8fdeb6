"""Local data files in the common schemas, converted to ``{"messages": [...]}``.

One schema is detected per file, from its first record, and every record of the file is
converted with it; a record that does not fit stops the load with a one-line error naming
the record. ``.json`` arrays are read record by record, so a file cut off mid-record (a
partial download, the ShareGPT_V3 dump some packages ship) keeps its whole records.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

from tunerkit.errors import UserError

SCHEMAS = ("messages (role/content), alpaca (instruction/input/output), "
           "sharegpt (conversations from/value), query/response/history, or tokenized input_ids/labels")
SUFFIXES = (".jsonl", ".json", ".parquet")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
          "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
          "model": "assistant", "tool": "tool", "function": "tool", "observation": "tool"}


class SchemaMismatch(ValueError):
    """A record lacks the fields its file's schema needs."""


# ---------------------------------------------------------------------------
# Schemas: each turns one raw record into {"messages": [...]} (or tokens)
# ---------------------------------------------------------------------------


def _role(raw: str) -> str:
    role = _ROLES.get(str(raw).lower())
    if role is None:
        raise SchemaMismatch(f"unknown role '{raw}'")
    return role


def _with_system(record: dict, messages: list[dict]) -> dict:
    system = record.get("system")
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return {"messages": messages}


def _turns(value) -> list:
    # Some hub dumps store the turn list as a Python-literal string (ModelScope's ms-bench).
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SchemaMismatch("turn list is a string that does not parse") from None
    if not isinstance(value, list):
        raise SchemaMismatch(f"turn list is a {type(value).__name__}, not a list")
    return value


def from_messages(record: dict) -> dict:
    msgs = []
    for m in _turns(record["messages"]):
        if not isinstance(m, dict) or "content" not in m or "role" not in m:
            raise SchemaMismatch("a message lacks role/content")
        msgs.append({"role": _role(m["role"]), "content": "" if m["content"] is None else str(m["content"])})
    return _with_system(record, msgs)


def from_sharegpt(record: dict) -> dict:
    msgs = []
    for t in _turns(record["conversations"]):
        if not isinstance(t, dict):
            raise SchemaMismatch("a conversation turn is not an object")
        role = t.get("from", t.get("role"))
        content = t.get("value", t.get("content"))
        if role is None or content is None:
            raise SchemaMismatch("a conversation turn lacks from/value")
        msgs.append({"role": _role(role), "content": str(content)})
    return _with_system(record, msgs)


def from_alpaca(record: dict) -> dict:
    instruction, extra = record["instruction"] or "", record.get("input") or ""
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return _with_system(record, [{"role": "user", "content": prompt},
                                 {"role": "assistant", "content": str(record["output"])}])


def from_query_response(record: dict) -> dict:
    """ms-swift's own schema: query, response, optional history [[q, r], ...] and system."""
    msgs = []
    for pair in record.get("history") or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise SchemaMismatch("history must be a list of [query, response] pairs")
        msgs += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
    if record.get("query"):
        msgs.append({"role": "user", "content": str(record["query"])})
    msgs.append({"role": "assistant", "content": str(record["response"])})
    return _with_system(record, msgs)


def _token_list(value, name: str, allow: int | None = None) -> list[int]:
    """A list of non-negative integer ids (``allow``: one more accepted value, the ignored label)."""
    if not isinstance(value, (list, tuple)):
        raise SchemaMismatch(f"{name} is a {type(value).__name__}, not a list of integers")
    for pos, tok in enumerate(value):
        if isinstance(tok, bool) or not isinstance(tok, int):
            raise SchemaMismatch(f"{name}[{pos}] is {tok!r}, not an integer")
        if tok < 0 and tok != allow:
            raise SchemaMismatch(f"{name}[{pos}] is {tok}: token ids are never negative")
    return list(value)


def from_tokens(record: dict) -> dict:
    ids = _token_list(record["input_ids"], "input_ids")
    labels = _token_list(record["labels"], "labels", allow=-100) if record.get("labels") is not None else list(ids)
    if len(labels) != len(ids):
        raise SchemaMismatch("input_ids and labels differ in length")
    return {"input_ids": ids, "labels": labels}


def check_vocabulary(records: list[dict], vocab_size: int, source: str) -> None:
    """Token records whose ids the model has no embedding for: one line naming the record."""
    for index, r in enumerate(records):
        if "input_ids" not in r:
            continue
        for name in ("input_ids", "labels"):
            high = max((t for t in r[name] if t != -100), default=-1)
            if high >= vocab_size:
                raise UserError(f"{source}: record {index + 1}: {name} holds id {high}, outside the model's "
                                f"vocabulary of {vocab_size}", key="dataset",
                                hint="tokenize the data with the row's model's tokenizer")


#: (name, keys that identify it, converter), tried in this order on a file's first record.
DETECTORS: list[tuple[str, tuple[str, ...], Callable[[dict], dict]]] = [
    ("messages", ("messages",), from_messages),
    ("sharegpt", ("conversations",), from_sharegpt),
    ("alpaca", ("instruction", "output"), from_alpaca),
    ("query/response", ("response",), from_query_response),
    ("tokens", ("input_ids",), from_tokens),
]


def detect_schema(record) -> tuple[str, Callable[[dict], dict]]:
    if isinstance(record, dict):
        for name, keys, convert in DETECTORS:
            if all(k in record for k in keys):
                return name, convert
        got = f"keys {sorted(record)[:8]}"
    else:
        got = f"a {type(record).__name__}"
    raise SchemaMismatch(f"first record has {got}; accepted schemas: {SCHEMAS}")


# ---------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------


def _note(message: str) -> None:
    print(f"tunerkit: {message}", file=sys.stderr, flush=True)


def _bad(path: Path, where: str, what: str, hint: str) -> UserError:
    return UserError(f"{path}: {where} {what}", key="dataset", hint=hint)


def read_text(path: Path) -> str:
    """The file as UTF-8 text; a one-line error naming the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise _bad(path, f"line {line}", f"is not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})",
                   "save the file as UTF-8") from None


def _loads(text: str, path: Path, where: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise _bad(path, where, "is nested too deeply to read", "records are flat objects of messages") from None


def _iter_jsonl(path: Path) -> Iterator:
    lines = read_text(path).split("\n")  # not splitlines: JSON strings may hold U+2028
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield _loads(line, path, f"line {i + 1}")
        except json.JSONDecodeError as err:
            if i == last:  # a file cut off in its last line: keep the whole records before it
                _note(f"{path}: last line is not whole JSON ({err.msg}); kept the {i} lines before it")
                return
            raise UserError(f"{path}: line {i + 1} is not valid JSON ({err.msg})", key="dataset",
                            hint="one JSON object per line") from None


def _is_truncation(err: json.JSONDecodeError, text: str) -> bool:
    """The decode failed because the text ended, not because the JSON is wrong."""
    return err.msg.startswith("Unterminated string") or err.pos >= len(text.rstrip())


def iter_json_array(path: Path) -> Iterator:
    """Records of a ``.json`` file one by one; a truncated array keeps its whole records."""
    text = read_text(path)
    decoder = json.JSONDecoder()
    i, n = 0, len(text)
    while i < n and text[i].isspace():
        i += 1
    if i < n and text[i] != "[":  # a single object (or a JSON-lines file named .json)
        try:
            obj = _loads(text, path, "its record")
        except json.JSONDecodeError:
            yield from _iter_jsonl(path)
            return
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            yield from obj["data"]
        else:
            yield obj
        return
    i += 1
    count = 0
    while True:
        while i < n and (text[i].isspace() or text[i] == ","):
            i += 1
        if i >= n:
            _note(f"{path}: the JSON array is cut off; kept its {count} whole records")
            return
        if text[i] == "]":
            return
        try:
            obj, i = decoder.raw_decode(text, i)
        except RecursionError:
            raise _bad(path, f"record {count + 1}", "is nested too deeply to read",
                       "records are flat objects of messages") from None
        except json.JSONDecodeError as err:
            if _is_truncation(err, text):
                _note(f"{path}: the JSON array is cut off mid-record; kept its {count} whole records")
                return
            line = text.count("\n", 0, err.pos) + 1
            raise UserError(f"{path}: invalid JSON at line {line} ({err.msg})", key="dataset",
                            hint="a JSON array of records, or JSON lines (.jsonl)") from None
        count += 1
        yield obj


def iter_raw(path: Path) -> Iterator:
    if path.suffix == ".jsonl":
        return _iter_jsonl(path)
    if path.suffix == ".json":
        return iter_json_array(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"reading {path.name} needs pyarrow", key="dataset",
                            hint="pip install 'tunerkit[parquet]', or convert the file to .jsonl") from None

        try:
            return iter(pq.read_table(path).to_pylist())
        except Exception as err:  # pyarrow raises several types (ArrowInvalid, OSError, ...)
            raise _bad(path, "the file", f"is not readable parquet ({str(err).splitlines()[0][:160]})",
                       "rewrite it, or convert it to .jsonl") from None
    raise UserError(f"unsupported data file type '{path.suffix}'", key="dataset",
                    hint="use .jsonl, .json or .parquet")


def convert_all(raw, source: str, convert: Callable[[dict], dict] | None = None) -> list[dict]:
    """Convert raw records with ``convert`` (or the schema detected on the first record)."""
    records = []
    empty = filtered = 0
    for index, r in enumerate(raw):
        try:
            if convert is None:
                _, convert = detect_schema(r)
            out = convert(r)
        except (SchemaMismatch, KeyError, TypeError) as err:
            what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise UserError(f"{source}: record {index + 1}: {what}", key="dataset",
                            hint=f"accepted schemas: {SCHEMAS}") from None
        if out is None:  # a dataset's own conversion left it out (ms-swift's filters)
            filtered += 1
        elif "messages" in out and not out["messages"]:
            empty += 1  # an empty conversation trains nothing
        else:
            records.append(out)
    if empty or filtered:
        _note(f"{source}: skipped {empty} empty records" + (f" and {filtered} filtered ones" if filtered else ""))
    return records


def read_records(path: Path) -> list[dict]:
    """Every record of a local data file as ``{"messages": [...]}`` (or tokens)."""
    path = Path(path)
    records = convert_all(iter_raw(path), str(path))
    if not records:
        raise UserError(f"{path}: no records", key="dataset", hint=f"accepted schemas: {SCHEMAS}")
    return records
