"""Batch collation: right-padding, or flattening a micro-batch into one row without padding.

Both report ``num_samples`` (original samples) and ``num_tokens`` (real tokens) so the loop
counts the same things whatever the batching.
"""

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


def split_packed(example: dict) -> list[dict]:
    """The original samples inside one example: a packed row lists them in ``seq_lengths``."""
    lengths = example.get("seq_lengths")
    if not lengths:
        return [example]
    out, start = [], 0
    for n in lengths:
        out.append({"input_ids": example["input_ids"][start:start + n], "labels": example["labels"][start:start + n]})
        start += n
    return out


class FlatteningCollator:
    """Every sample of the micro-batch concatenated into ONE row, with no padding and no mask.

    Emits ``position_ids`` restarting at 0 for every sample and the flash-attention varlen
    kwargs ``cu_seq_lens_q/k`` (int32 sample boundaries, shape ``(1, samples + 1)``) and
    ``max_length_q/k``; attention
    must use them to stay inside each sample. The first label of every sample is -100, so
    the causal loss never predicts one sample's first token from the previous sample.
    Examples may be plain samples (padding-free) or packed rows carrying ``seq_lengths``.
    Built on transformers' ``DataCollatorWithFlattening``.
    """

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX,
                                                   return_flash_attn_kwargs=True)

    def __call__(self, examples: list[dict]) -> dict:
        samples = [s for e in examples for s in split_packed(e)]
        batch = dict(self._flatten(samples, return_tensors="pt"))
        batch.pop("attention_mask", None)  # older transformers versions may add one; attention needs none
        # A leading batch dimension of 1, like every other tensor of the batch: accelerate's
        # dispatcher (used for iterable datasets) slices all tensors along dim 0.
        for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
            batch[key] = batch[key].reshape(1, -1)
        batch["num_samples"] = len(samples)
        batch["num_tokens"] = int(batch["input_ids"].numel())
        return batch
