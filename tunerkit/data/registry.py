"""ms-swift's dataset names, where they live on the public hubs, and how their rows become chats.

A name resolves, in this order, to:
1. a local copy ``$TUNERKIT_DATA_DIR/<name>.jsonl`` (or ``.json``/``.parquet``; the
   default folder is ``~/.cache/tunerkit/data``), converted like the hub rows;
2. the Hugging Face hub through the ``datasets`` library, where a public copy exists;
3. ModelScope through the ``modelscope`` library (where ms-swift fetched from).
Offline and without a local copy, one line says where to put the file.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tunerkit.data import formats
from tunerkit.errors import UserError
from tunerkit.options import did_you_mean


# -- ms-swift's preprocessing of each dataset --------------------------------------------


def _ms_bench(row: dict) -> dict | None:
    """ms-bench: drop the default system prompt and the MOSS-style rows ms-swift skipped."""
    turns = formats._turns(row["conversations"])
    if turns and turns[0].get("from") == "system" and turns[0].get("value") == "You are a helpful assistant.":
        turns = turns[1:]
    for t in turns:
        value = str(t.get("value", "")).lower()
        if "moss" in value or "human:" in value or "assistant:" in value or "user:" in value:
            return None
    return formats.from_sharegpt({"conversations": turns})


def _fudan_news(row: dict) -> dict:
    return {"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["answer"]}]}


def _long_alpaca(row: dict) -> dict:
    output = row["output"] or ""
    if output.startswith("Answer: "):
        output = output[len("Answer: "):].strip()
    return formats.from_alpaca({**row, "output": output})


DUREADER_PROMPT = "Task: Question Generation\nContext: {context}\nAnswer: {answer}\nQuestion:"


def _dureader(row: dict) -> dict:
    answer, context = row["text1"].split("[SEP]", 1)
    return {"messages": [{"role": "user", "content": DUREADER_PROMPT.format(context=context, answer=answer)},
                         {"role": "assistant", "content": row["text2"]}]}


def _plain_text(row: dict) -> dict:
    # ms-swift renamed pileval's text to a response with no query: all of it is trained/calibrated on.
    return {"messages": [{"role": "assistant", "content": row["text"]}]}


@dataclass(frozen=True)
class Entry:
    modelscope: str  # the id ms-swift loaded
    hf: str | None = None  # a public Hugging Face copy, where one exists
    convert: Callable[[dict], dict | None] = formats.from_sharegpt
    sample: int | None = None  # ms-swift's fixed-size random subset (seed 42)
    split: str = "train"
    note: str = field(default="", compare=False)

    def __str__(self) -> str:  # what `tunerkit list` prints beside the name
        return f"ModelScope {self.modelscope}" + (f", HF {self.hf}" if self.hf else "")


DATASETS: dict[str, Entry] = {
    "ms-agent": Entry("iic/ms_agent", note="agent conversations (from/value)"),
    "ms-bench": Entry("iic/ms_bench", convert=_ms_bench, note="general mixed-in data"),
    "ms-bench-mini": Entry("iic/ms_bench", convert=_ms_bench, sample=20000, note="20,000 rows of ms-bench"),
    "cls-fudan-news-zh": Entry("damo/zh_cls_fudan-news", convert=_fudan_news, note="prompt/answer classification"),
    "long-alpaca-12k": Entry("AI-ModelScope/LongAlpaca-12k", hf="Yukang/LongAlpaca-12k", convert=_long_alpaca),
    "dureader-robust-zh": Entry("modelscope/DuReader_robust-QG", convert=_dureader, note="question generation"),
    "pileval": Entry("huangjintao/pile-val-backup", hf="mit-han-lab/pile-val-backup", convert=_plain_text,
                     split="validation", note="calibration text for AWQ/GPTQ"),
}


def data_dir() -> Path:
    return Path(os.environ.get("TUNERKIT_DATA_DIR") or Path.home() / ".cache" / "tunerkit" / "data").expanduser()


def local_copy(name: str) -> Path | None:
    for suffix in formats.SUFFIXES:
        path = data_dir() / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def check_name(name: str, key: str) -> None:
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'", key=key,
                        hint=did_you_mean(name, DATASETS) or "a registry name (tunerkit list), a local file, builtin:* or synthetic:*")


def describe(name: str) -> str:
    return f"{DATASETS[name]}; or {data_dir()}/{name}.jsonl"


def _convert(name: str, rows, source: str) -> list[dict]:
    e = DATASETS[name]
    rows = list(rows)
    if e.sample is not None and len(rows) > e.sample:
        rows = random.Random(42).sample(rows, e.sample)
    # A local copy may already be in chat shape: let the file's schema decide then.
    first = rows[0] if rows else {}
    convert = None if isinstance(first, dict) and "messages" in first else e.convert
    return formats.convert_all(rows, source, convert)


def _from_hub(name: str) -> tuple[list[dict] | None, str]:
    """Rows from the HF hub or ModelScope, or (None, why not)."""
    e = DATASETS[name]
    reasons = []
    if e.hf:
        try:
            import datasets  # optional: only where a hub is reachable
        except ImportError:
            reasons.append("the datasets package is not installed")
        else:
            try:
                return list(datasets.load_dataset(e.hf, split=e.split)), ""
            except Exception as err:  # offline, gated, renamed
                reasons.append(f"HF {e.hf}: {str(err).splitlines()[0][:80]}")
    try:
        from modelscope import MsDataset  # optional, as ms-swift used it
    except ImportError:
        reasons.append("modelscope is not installed")
    else:
        try:
            ds = MsDataset.load(e.modelscope, split=e.split)
            return list(ds.to_hf_dataset() if hasattr(ds, "to_hf_dataset") else ds), ""
        except Exception as err:
            reasons.append(f"ModelScope {e.modelscope}: {str(err).splitlines()[0][:80]}")
    return None, "; ".join(reasons)


def load(name: str) -> list[dict]:
    check_name(name, "dataset")
    path = local_copy(name)
    if path is not None:
        return _convert(name, formats.iter_raw(path), str(path))
    rows, reason = _from_hub(name)
    if rows is None:
        raise UserError(f"dataset '{name}' is not reachable ({reason})", key="dataset",
                        hint=f"download it ({describe(name).split(';')[0]}) to {data_dir()}/{name}.jsonl "
                             f"or set dataset = \"path/to/file.jsonl\"")
    return _convert(name, rows, DATASETS[name].hf or DATASETS[name].modelscope)
