"""aqlm: LoRA on a 2-bit AQLM checkpoint (additive quantization with learned codebooks).

ms-swift's AQLM row: llama2-7b quantized to 2 bits with one 16-bit codebook per group of
eight input weights ("1x16"), LoRA r8 on all linear layers. transformers loads AQLM
checkpoints through the ``aqlm`` package, whose ``QuantizedLinear`` decodes codes against
codebooks in its triton/CUDA kernels; PEFT's AQLM dispatch puts LoRA beside them. The
package's CPU path (numba) has no backward pass, so rows run on a CUDA GPU only. A preset
is written once as an AQLM checkpoint of random codes and codebooks (``random_quantized``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunerkit import hookimpl, option
from tunerkit_plugins.quant.prequantized import PreQuantized
from tunerkit_plugins.quant.random_quantized import Format


@dataclass
class AqlmOptions:
    bits: int = option(2, "bits per weight: codebooks x code bits / in_group_size")
    codebooks: str = option("1x16", "codebooks x bits per code, e.g. 1x16 or 2x8")
    in_group_size: int = option(8, "input weights encoded together by one code per codebook")

    def __post_init__(self):
        try:
            n, b = (int(x) for x in self.codebooks.split("x"))
        except ValueError:
            raise ValueError(f"codebooks must look like 1x16, got {self.codebooks!r}") from None
        if n * b / self.in_group_size != self.bits:
            raise ValueError(f"codebooks {self.codebooks} over groups of {self.in_group_size} give "
                             f"{n * b / self.in_group_size:g} bits, not bits = {self.bits}")

    @property
    def num_codebooks(self) -> int:
        return int(self.codebooks.split("x")[0])

    @property
    def code_bits(self) -> int:
        return int(self.codebooks.split("x")[1])


def aqlm_format(o: AqlmOptions) -> Format:
    n, b, g = o.num_codebooks, o.code_bits, o.in_group_size
    code_dtype = {8: torch.int8, 16: torch.int16}[b] if b in (8, 16) else torch.int32

    def tensors(in_f: int, out_f: int):
        info = torch.iinfo(code_dtype)
        return {"codes": torch.randint(max(info.min, -2 ** (b - 1)), min(info.max, 2 ** (b - 1) - 1),
                                       (out_f, in_f // g, n), dtype=code_dtype),
                "codebooks": (torch.randn(n, 2 ** b, 1, g) * 0.02 / n ** 0.5).to(torch.float16),
                "scales": torch.ones(out_f, 1, 1, 1, dtype=torch.float16)}

    config = {"quant_method": "aqlm", "in_group_size": g, "out_group_size": 1, "num_codebooks": n,
              "nbits_per_codebook": b,
              "linear_weights_not_to_quantize": kept_in_full(["model.embed_tokens.weight", "lm_head.weight"])}
    return Format(f"aqlm{o.codebooks}g{g}", config, tensors)


def kept_in_full(weights: list[str]) -> list[str]:
    """AQLM checkpoints name the layers they keep unquantized by weight ("lm_head.weight");
    transformers 5 matches that list against module names ("lm_head"), so the weight names
    alone let it swap the output head for a 2-bit layer with no codes in the checkpoint. Both
    spellings keep the head (and embeddings) as the checkpoint stores them, under either rule.
    It has to reach the checkpoint's own config (:meth:`Aqlm.amend_checkpoint_config`): for a
    pre-quantized checkpoint transformers uses the stored quantization config, not the one passed."""
    return list(dict.fromkeys([*weights, *(w.removesuffix(".weight") for w in weights)]))


class Aqlm(PreQuantized):
    name = "aqlm"
    summary = "LoRA on a 2-bit AQLM checkpoint (learned codebooks), GPU only"
    Options = AqlmOptions
    speed_factor = 0.72  # measured over predicted, one H100: the llama2-7b 1x16 row (three runs)
    modules = ("aqlm", "triton")
    install_hint = "pip install 'aqlm[gpu]'"
    needs_cuda = True

    def layer_classes(self):
        from aqlm import QuantizedLinear

        return (QuantizedLinear,)

    def format(self):
        return aqlm_format(self.options)

    def quantization_config(self, ctx):
        from transformers import AqlmConfig

        fmt = self.format().config
        return AqlmConfig(in_group_size=fmt["in_group_size"], out_group_size=1, num_codebooks=fmt["num_codebooks"],
                          nbits_per_codebook=fmt["nbits_per_codebook"],
                          linear_weights_not_to_quantize=fmt["linear_weights_not_to_quantize"])

    def amend_checkpoint_config(self, config) -> None:
        # Real AQLM checkpoints (and presets written before this fix) store the weight names only.
        qc = config.quantization_config
        qc["linear_weights_not_to_quantize"] = kept_in_full(qc.get("linear_weights_not_to_quantize") or [])

    @hookimpl
    def weight_bits(self, row):
        # codes only: each codebook (2**bits x in_group_size fp16 numbers) is shared by a whole layer
        return float(self.options.bits)
