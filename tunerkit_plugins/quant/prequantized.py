"""What the pre-quantized loaders (gptq, awq, aqlm) share: an adapter on top, the library
present, the checkpoint loaded through transformers' quantizer, only adapters trained."""

from __future__ import annotations

import importlib.util

import torch

from tunerkit import Plugin, hookimpl
from tunerkit.errors import RowFailed
from tunerkit_plugins.quant.random_quantized import Format, load_quantized


#: tuners that train adapters beside frozen base weights (what quantized bases and merges need)
ADAPTER_TUNERS = ("lora", "rslora", "dora", "adalora", "loraplus")


class PreQuantized(Plugin):
    # Quantized weights cannot take gradients: only adapter tuners go on top of them.
    requires_any = ADAPTER_TUNERS
    conformance = {"companions": ["lora"]}
    conflicts = ("full", "galore", "lisa", "llamapro", "deepspeed", "bnb")
    #: import names the loader needs, and the pip line that brings them
    modules: tuple[str, ...] = ()
    install_hint = ""
    needs_cuda = False
    #: measured tokens/s over the estimate's bf16-rate prediction for this library's LoRA rows
    #: (its kernels dequantize each weight group in every forward and backward, which the
    #: matmul count does not see); docs/performance.md says which runs it comes from
    speed_factor = 1.0

    def format(self) -> Format:
        raise NotImplementedError

    def quantization_config(self, ctx):
        raise NotImplementedError

    #: ``amend_checkpoint_config(config)``, for a loader whose checkpoints' stored config needs a
    #: change before loading (transformers follows it, not :meth:`quantization_config`, for a
    #: pre-quantized checkpoint); None: the checkpoint loads as stored
    amend_checkpoint_config = None

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        estimate.speed_factor *= self.speed_factor

    @hookimpl
    def validate(self, row):
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            return f"{self.name} needs {', '.join(missing)}, not installed ({self.install_hint})"
        if self.needs_cuda and not torch.cuda.is_available():
            return f"{self.name} trains on a CUDA GPU only (its kernels have no CPU backward)"
        return None

    @hookimpl
    def load_model(self, ctx):
        try:
            model = load_quantized(ctx, self.format(), self.quantization_config(ctx), self.amend_checkpoint_config)
        except ImportError as err:
            raise RowFailed(f"{self.name}: {err}") from None
        for p in model.parameters():
            p.requires_grad_(False)  # the base stays frozen whatever the loader left trainable
        return model

    def layer_classes(self) -> tuple[type, ...]:
        """The library's quantized linear layer classes (counted in the metrics)."""
        raise NotImplementedError

    def quantized_linears(self, model) -> int:
        classes = self.layer_classes()
        return sum(isinstance(m, classes) for m in model.modules())

    @hookimpl
    def collect_metrics(self, ctx):
        model = ctx.unwrapped_model()
        out = {"quantized_bits": self.options.bits, "quantized_linears": self.quantized_linears(model),
               "random_weights": int(ctx.model_source.random_weights)}
        if getattr(model.config, "tunerkit_zero_codes", False):
            out["preset_zero_codes"] = 1  # a sparse preset: codes all zero, only the scales random
        if hasattr(model, "get_memory_footprint"):
            out["weights_gib"] = model.get_memory_footprint() / 1024 ** 3
        return out
