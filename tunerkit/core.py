"""The core's own hook implementations: plain defaults every plugin may override.

Registered ``trylast`` through the same plugin manager as the tuners, so a plugin's
first-result hook always wins over these.
"""

from __future__ import annotations

import torch

from tunerkit.data import sources
from tunerkit.data.chat import encode_messages, ensure_template, with_system
from tunerkit.data.collate import PaddingCollator
from tunerkit.data.truncation import apply_truncation, deleted_over
from tunerkit.hookspecs import hookimpl
from tunerkit.models import loading
from tunerkit.optimizer import groups_by_decay, make_schedule
from tunerkit.precision import resolve_dtype, row_dtype  # noqa: F401  (resolve_dtype: eval/cli.py imports it from here)

def row_attention(ctx) -> str:
    """The transformers attention implementation for the row's choice on its device; the
    attention actually used goes to ``ctx.attention_used``. Every loader asks here."""
    impl, label = loading.attn_implementation(ctx.settings.attention, ctx.device)
    ctx.attention_used = label
    return impl


def load_base_model(ctx, quantization_config=None):
    """The row's model (``ctx.model_source``) in the row's dtype, attention and device. Loader
    plugins (quantization) call this with their transformers quantization config."""
    return loading.load_pretrained(ctx.model_source, ctx.dtype, ctx.device, row_attention(ctx), quantization_config)


def split_records(s, vocab: int, held_out: bool = True) -> tuple[list[dict], list[dict]]:
    """The row's training and held-out records, before any mixing: ``eval_dataset`` when the row
    names one (read only with ``held_out``), else ``val_size`` records split off by seed; at most
    ``max_train_samples`` to train on."""
    records = sources.load_records(s.dataset, seed=s.seed, vocab_size=vocab,
                                   rows=(s.max_train_samples or 0) + s.val_size or None)
    if s.eval_dataset:
        train = records
        held = sources.load_records(s.eval_dataset, seed=s.seed + 1, vocab_size=vocab,
                                    rows=s.val_size or None) if held_out else []
    else:
        train, held = sources.split_off(records, s.val_size, s.seed)
    if s.max_train_samples is not None:
        train = train[: s.max_train_samples]
    return train, held


def encode_training_records(tokenizer, records: list[dict], s) -> tuple[list[dict], dict]:
    """Records as the loop trains them (chat encoded with the row's system prompt and label
    choice, truncated, samples without a label dropped) and the counts of what was cut."""
    encoded = []
    longest = deleted_over(s.max_length, s.truncation_strategy)
    for r in records:
        if "input_ids" in r:
            encoded.append(r)
        else:
            encoded.append(encode_messages(tokenizer, with_system(r["messages"], s.system),
                                           train_on_prompt=s.train_on_prompt, deleted_over=longest))
    kept, counts = apply_truncation(encoded, s.max_length, s.truncation_strategy)
    before = len(kept)
    kept = [r for r in kept if any(l != -100 for l in r["labels"][1:])]
    counts["samples_without_labels"] = before - len(kept)
    return kept, counts


class CoreDefaults:
    # -- model ------------------------------------------------------------------
    @hookimpl(trylast=True)
    def setup_distributed(self, ctx):
        from accelerate import Accelerator, DistributedDataParallelKwargs

        # Under DDP each gradient is a view into its all-reduce bucket instead of a second copy
        # beside it: one trainable-parameter-sized buffer less per GPU (full fine-tuning of a 7B
        # model: about 14 GiB in bf16); the loop's zero_grad(set_to_none=True) keeps it valid.
        ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True)
        return Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])

    @hookimpl(trylast=True)
    def weight_bits(self, row):
        return 8 * row_dtype(row.settings).itemsize

    @hookimpl(trylast=True)
    def load_model(self, ctx):
        return load_base_model(ctx)

    @hookimpl(trylast=True)
    def load_tokenizer(self, ctx):
        s = ctx.settings
        uses_text = any(spec and sources.kind_of(spec) != "synthetic"
                        for spec in (s.dataset, s.eval_dataset, (s.mix or {}).get("dataset")))
        if ctx.model_source.random_weights and not uses_text:
            return None  # a preset on synthetic token ids needs no tokenizer (nor the bundled model)
        tok = loading.load_tokenizer(ctx.model_source)
        ensure_template(tok, ctx.settings.chat_template)
        return tok

    # -- data -------------------------------------------------------------------
    def _all_records(self, ctx):
        """Train and held-out records, split once per row and cached for both splits."""
        if "core:records" not in ctx.state:
            s = ctx.settings
            vocab = ctx.unwrapped_model().config.vocab_size
            train, held = split_records(s, vocab)
            if s.mix:
                general = sources.load_records(s.mix["dataset"], seed=s.seed + 2, vocab_size=vocab, rows=None)
                train = sources.mix_in(train, general, float(s.mix.get("ratio", 1.0)), s.seed)
            ctx.state["core:records"] = {"train": train, "eval": held}
        return ctx.state["core:records"]

    @hookimpl(trylast=True)
    def load_dataset(self, ctx, split):
        return self._all_records(ctx).get(split) or None

    @hookimpl(trylast=True)
    def tokenize_dataset(self, ctx, split, records):
        kept, counts = encode_training_records(ctx.tokenizer, records, ctx.settings)
        ctx.metrics.update({f"{split}_{k}": v for k, v in counts.items()})
        ctx.metrics[f"{split}_samples"] = len(kept)
        return kept

    @hookimpl(trylast=True)
    def make_collator(self, ctx, split):
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer is not None else 0
        return PaddingCollator(pad if pad is not None else 0)

    # -- optimizer --------------------------------------------------------------
    @hookimpl(trylast=True)
    def param_groups(self, ctx):
        return groups_by_decay(ctx.model.named_parameters(), ctx.settings.weight_decay)

    @hookimpl(trylast=True)
    def make_optimizer(self, ctx, groups):
        fused = ctx.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=ctx.settings.learning_rate, fused=fused)

    @hookimpl(trylast=True)
    def make_scheduler(self, ctx):
        return make_schedule(ctx, ctx.optimizer)

    # -- loop -------------------------------------------------------------------
    @hookimpl(trylast=True)
    def compute_loss(self, ctx, model, batch):
        # Token-summed cross-entropy over the whole window's label tokens; multiplied by the
        # world size because DDP averages gradients over processes.
        items = torch.tensor(ctx.window_label_tokens / ctx.world_size, device=ctx.device)
        out = model(**batch, num_items_in_batch=items)
        return out.loss

    # -- results ----------------------------------------------------------------
    @hookimpl(trylast=True)
    def evaluate(self, ctx):
        from tunerkit.eval import evaluators

        found = evaluators()
        metrics = {}
        for name in ctx.settings.evaluate:
            metrics.update(found[name](ctx))
        return metrics

    @hookimpl(trylast=True)
    def save_artifacts(self, ctx, out_dir):
        if ctx.is_main_process:
            model = ctx.unwrapped_model()
            model.save_pretrained(out_dir / "model")
            if ctx.tokenizer is not None:
                ctx.tokenizer.save_pretrained(out_dir / "model")
