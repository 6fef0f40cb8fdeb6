"""Tables from the results database: one line per row, our numbers beside the seed's."""

from __future__ import annotations

import csv
import io
import json

#: (header, metric key, format) of the default summary columns
COLUMNS = [
    ("trainable params (M)", "trainable_params_m", "{:.4f}"),
    ("trainable %", "trainable_pct", "{:.4f}"),
    ("samples/s", "samples_per_s", "{:.3f}"),
    ("tokens/s", "tokens_per_s", "{:,.0f}"),
    ("peak alloc GiB", "peak_allocated_gib", "{:.2f}"),
    ("peak reserved GiB", "peak_reserved_gib", "{:.2f}"),
    ("peak RSS GiB", "peak_rss_gib", "{:.2f}"),
    ("train loss", "train_loss", "{:.4f}"),
    ("eval loss", "eval_loss", "{:.4f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("infer tokens/s", "infer_tokens_per_s", "{:.2f}"),
    ("gsm8k acc", "gsm8k_acc", "{:.3f}"),
    ("arc acc", "arc_acc", "{:.3f}"),
    ("ceval weighted acc", "ceval_weighted_acc", "{:.3f}"),
]


def flat_metrics(record: dict) -> dict:
    """Metrics with per-device memory folded to the largest device (each GPU's own peak)."""
    m = dict(record.get("metrics") or {})
    for entry in m.get("memory") or []:
        for key in ("peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib"):
            if key in entry:
                m[key] = max(m.get(key, 0.0), entry[key])
    return m


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    metrics = [flat_metrics(r) for r in records]
    used = [c for c in COLUMNS if any(c[1] in m for m in metrics)]
    headers = ["row", "status", *[c[0] for c in used]]
    body = []
    for record, m in zip(records, metrics):
        status = record["status"] if record["status"] == "ok" else (record.get("reason") or record["status"])
        if record["status"] == "failed":
            status = "failed: " + status
        if m.get("random_weights"):
            status += " (random weights)"
        line = [record["row"], status]
        for _, key, fmt in used:
            value = m.get(key)
            line.append("" if value is None else fmt.format(value))
        body.append(line)
    return headers, body


def render(records: list[dict], fmt: str = "md") -> str:
    if fmt == "json":
        return json.dumps(records, indent=2, default=str)
    headers, body = table_rows(records)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(headers)
        writer.writerows(body)
        return buf.getvalue()
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in body]
    return "\n".join(lines)
