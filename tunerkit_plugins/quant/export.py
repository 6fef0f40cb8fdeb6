"""export: a trained adapter merged, quantized to 4 bits by GPTQ or AWQ, and its decoding timed.

ms-swift's "Export" table: the Tuners table's LoRA model merged into qwen-7b-chat, quantized
by AWQ or GPTQ calibrated on a dataset, then evaluated. As a row, after training: the
adapter is merged into a copy of the trained model in memory (``merge_from = "trained"``),
or saved and merged into the base read again from its checkpoint (``"checkpoint"``, what
``tunerkit export --merge`` does), the merged checkpoint is quantized by GPT-QModel's own
algorithm (``tunerkit export --quantize``), loaded back through plain transformers, and its
decoding timed like the
``infer_speed`` evaluator (the row's ``infer_*`` settings). The quantized checkpoint is kept
under the row's folder with ``save = true``, otherwise removed with the merged one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed, UserError
from tunerkit_plugins.quant.prequantized import ADAPTER_TUNERS


@dataclass
class ExportOptions:
    method: Literal["awq", "gptq"] = option("awq", "quantization algorithm (GPT-QModel's): awq or gptq")
    bits: int = option(4, "bits per weight: 4 (gptq also 8)")
    calibration: str = option("ms-bench-mini", "calibration dataset: a registry name, a local file or builtin:*")
    samples: int = option(256, "calibration samples (ms-swift: 256 for AWQ, 1024 for GPTQ)", min=1)
    group_size: int = option(128, "input weights sharing one scale and zero point", min=1)
    merge_from: Literal["trained", "checkpoint"] = option(
        "trained", "merge into a copy of the trained model on its device (trained: the weights trained "
                   "on, needs room for a second copy, else checkpoint is used) or into the base read again "
                   "from its checkpoint on the CPU in fp32 (checkpoint)")
    decode_kernel: Literal["auto", "marlin", "triton", "torch"] = option(
        "auto", "GPT-QModel kernel the quantized model decodes with: auto (the library's pick for the GPU), "
                "marlin, triton or torch")

    def __post_init__(self):
        from tunerkit.quantize import bits_problem

        problem = bits_problem(self.method, self.bits)
        if problem:
            raise ValueError(problem)


# A kernel family in each method's backend names, as transformers' GPTQConfig and AwqConfig take
# them (GPT-QModel maps both spellings to its own kernels). "auto" on a Hopper GPU picks Machete,
# whose first use downloads CUTLASS's sources to build it: an offline host fails there, after
# the whole quantization, so offline GPU runs name a kernel that needs no download.
DECODE_BACKENDS = {
    "gptq": {"marlin": "marlin", "triton": "triton", "torch": "torch"},
    "awq": {"marlin": "marlin", "triton": "gemm_triton", "torch": "torch_awq"},
}


def decoding_config(method: str, bits: int, kernel: str):
    """The quantization config whose loading attribute (the backend) transformers lays over the
    checkpoint's own when the quantized model is loaded; None keeps the checkpoint's ("auto")."""
    if kernel == "auto":
        return None
    from transformers import AwqConfig, GPTQConfig

    config = AwqConfig if method == "awq" else GPTQConfig
    return config(bits=bits, backend=DECODE_BACKENDS[method][kernel])


def gptqmodel_installed() -> bool:
    return importlib.util.find_spec("gptqmodel") is not None


def room_for_copy(model, device) -> str | None:
    """Why a second copy of ``model`` would not fit beside it on ``device``; None when it does.
    A quantized base is never copied: merging into it would dequantize in place."""
    import torch

    if getattr(getattr(model, "config", None), "quantization_config", None) is not None:
        return "the base is quantized"
    # parameters and buffers (transformers' count; a PeftModel passes it to its base), plus
    # the merge's temporaries on top of the copy
    need = model.get_memory_footprint() * 1.1
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if need > free:
        return f"a copy needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {device.type}"
    return None


def folder_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024 ** 3


class Export(Plugin):
    name = "export"
    summary = "after training: merge the adapter, quantize the merged model (GPTQ/AWQ), time its decoding"
    Options = ExportOptions
    # Only an adapter can be merged into a fresh copy of the base.
    requires_any = ADAPTER_TUNERS
    # the tiny preset's 64-wide linears take GPTQ in groups of 32 (AWQ needs 64-wide outputs);
    # a few synthetic calibration samples, since no dataset hub is assumed
    conformance = {"companions": ["lora"],
                   "options": {"method": "gptq", "group_size": 32, "samples": 2,
                               "calibration": "synthetic:lengths?mean=16&sd=0&min=16&max=16&rows=4"}}
    conflicts = ("deepspeed",)

    @hookimpl
    def validate(self, row):
        if not gptqmodel_installed():
            return "export needs gptqmodel, not installed (pip install 'tunerkit[gptq]')"
        return None

    @hookimpl
    def evaluate(self, ctx):
        if not ctx.is_main_process:
            return None
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=ctx.out_dir, prefix=".export-"))
        try:
            metrics, quantized = self._export(ctx, work)
            if ctx.settings.save:
                target = ctx.out_dir / "quantized"
                shutil.rmtree(target, ignore_errors=True)
                quantized.rename(target)
                metrics["export_path"] = str(target)
            return metrics
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _export(self, ctx, work: Path) -> tuple[dict, Path]:
        from tunerkit import quantize as quantizing
        from tunerkit.metrics import Timer

        o, s = self.options, ctx.settings
        try:
            with Timer(ctx.device) as merging:
                merged, merged_from = self._merge(ctx, work)
            with Timer(ctx.device) as quantizing_time:
                quantized = quantizing.quantize(str(merged), o.method, o.bits, o.calibration, work / "quantized",
                                                samples=o.samples, max_length=s.max_length, group_size=o.group_size)
        except UserError as err:
            raise RowFailed(f"export: {err}") from None
        shutil.rmtree(merged)
        metrics = {"export_method": o.method, "export_bits": o.bits, "export_calibration": o.calibration,
                   "export_samples": o.samples, "export_merged_from": merged_from,
                   "export_merge_seconds": merging.seconds,
                   "export_quantize_seconds": quantizing_time.seconds, "export_gib": folder_gib(quantized)}
        metrics.update(self._decoding(ctx, quantized))
        return metrics, quantized

    def _merge(self, ctx, work: Path) -> tuple[Path, str]:
        """The merged checkpoint's folder, and which weights it was merged into."""
        from tunerkit.export import merge_adapter, merge_trained

        model = ctx.unwrapped_model()
        if self.options.merge_from == "trained":
            no_room = room_for_copy(model, ctx.device)
            if no_room is None:
                return merge_trained(model, work / "merged", ctx.tokenizer, ctx.model_source.random_weights), "trained"
            ctx.log(f"export: merging into the base read from its checkpoint instead ({no_room})")
        model.save_pretrained(work / "adapter")
        if ctx.tokenizer is not None:
            ctx.tokenizer.save_pretrained(work / "adapter")
        return merge_adapter(work / "adapter", ctx.settings.model, work / "merged", dtype="bf16"), "checkpoint"

    def _decoding(self, ctx, quantized: Path) -> dict:
        """The quantized checkpoint loaded by plain transformers, timed like ``infer_speed``."""
        import torch
        from transformers import AutoModelForCausalLM

        from tunerkit.eval.infer import speed_metrics

        o, s = self.options, ctx.settings
        loading = decoding_config(o.method, o.bits, o.decode_kernel)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(quantized), device_map=str(ctx.device),
                **({"quantization_config": loading} if loading is not None else {}))
        except Exception as err:  # noqa: BLE001 - the row's record names the kernel that failed to load
            raise RowFailed(f"export: the quantized model did not load for decoding (decode_kernel="
                            f"{o.decode_kernel!r}): {type(err).__name__}: {str(err)[:200]}") from err
        model.eval()
        try:
            return {"export_decode_kernel": o.decode_kernel,
                    **speed_metrics(model, ctx.tokenizer, ctx.device, s.infer_backend, s.infer_prompts,
                                    s.infer_new_tokens)}
        finally:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
