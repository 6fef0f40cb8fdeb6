"""Batch collation: right-padding to the longest sample of the micro-batch."""

from __future__ import annotations

import torch

from tunerkit.data.chat import IGNORE_INDEX


class PaddingCollator:
    """Pads ``input_ids``/``labels`` to the longest sample; reports real samples and tokens."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        longest = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.as_tensor(e["input_ids"])
            labels[i, :n] = torch.as_tensor(e["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "num_samples": len(examples), "num_tokens": int(mask.sum())}
