"""Where a model comes from: a preset, a local directory, a hub id, or a bundled real model."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tunerkit.errors import UserError
from tunerkit.models.bundled import BUNDLED, bundled_dir
from tunerkit.models.presets import Preset, get_preset

SMOLLM2 = "smollm2-135m-instruct"


@dataclass
class ModelSource:
    kind: str  # "preset" | "local" | "hub" | "bundled"
    spec: str
    preset: Preset | None = None
    path: Path | None = None

    @property
    def random_weights(self) -> bool:
        return self.kind == "preset"


def cache_dir() -> Path:
    root = os.environ.get("TUNERKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tunerkit")
    return Path(root)


def looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(spec))


def resolve_model(spec: str) -> ModelSource:
    """Classify ``spec`` without loading anything; raise :class:`UserError` for a missing local dir."""
    preset = get_preset(spec)
    if preset is not None:
        return ModelSource("preset", spec, preset=preset)
    if spec in BUNDLED:
        return ModelSource("bundled", spec)
    if looks_like_path(spec):
        path = Path(os.path.expanduser(spec))
        if not (path / "config.json").exists():
            raise UserError(f"no HF model directory at '{spec}' (config.json missing)", key="model",
                            hint="give a folder written by save_pretrained, a preset name or a hub id")
        return ModelSource("local", spec, path=path)
    if spec.count("/") == 1:
        return ModelSource("hub", spec)
    from tunerkit.options import did_you_mean
    from tunerkit.models.presets import PRESETS

    raise UserError(f"unknown model '{spec}'", key="model",
                    hint=did_you_mean(spec, [*PRESETS, *BUNDLED]) or "a preset (tunerkit list), a local directory or org/name")


def bundled_smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors (the offline default and the presets' tokenizer)."""
    return bundled_dir(SMOLLM2, cache_dir())


def publish(target: Path, write, prefix: str) -> Path:
    """Write a cache folder atomically: ``write`` fills a temporary folder beside ``target``
    that then replaces it in one rename. A killed write leaves only the temporary folder,
    removed here when the write fails and skipped by every reader. The result is readable by
    every user of a shared cache (mkdtemp makes 0o700 folders)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target.parent, prefix)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{prefix}{os.getpid()}-"))
    try:
        write(tmp)
        for path in [tmp, *tmp.rglob("*")]:
            if not path.is_symlink():  # a link's target belongs to another folder
                path.chmod(0o755 if path.is_dir() else 0o644)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _remove_orphans(parent: Path, prefix: str) -> None:
    """Temporary folders of writes whose process was killed (their pid no longer runs)."""
    for leftover in parent.glob(f"{prefix}*-*"):
        pid = leftover.name[len(prefix):].split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:
            pass


def model_path(source: ModelSource) -> str:
    if source.kind == "bundled":
        return str(bundled_dir(source.spec, cache_dir()))
    if source.kind == "local":
        return str(source.path)
    return source.spec


def attn_implementation(choice: str, device: torch.device) -> tuple[str, str]:
    """Map the recipe's attention choice to a transformers implementation and a label for the results."""
    if choice == "eager":
        return "eager", "eager"
    if choice == "flash":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2", "flash_attn " + getattr(flash_attn, "__version__", "")
        except ImportError:
            pass
        if device.type == "cuda":
            # SDPA with no mask tensor (is_causal=True): torch then picks among its fused kernels
            # (FlashAttention-2, cuDNN attention on Hopper, memory-efficient), not the math path.
            return "sdpa", "sdpa (torch's fused kernels; no flash_attn package)"
        return "sdpa", "sdpa (cpu math/flash kernel; flash_attn needs a GPU)"
    return "sdpa", "sdpa"


def _preset_checkpoint_dir(preset: Preset, dtype: torch.dtype) -> Path:
    return cache_dir() / "models" / f"preset-{preset.name}-{str(dtype).removeprefix('torch.')}"


def preset_checkpoint_exists(preset: Preset, dtype: torch.dtype) -> bool:
    return (_preset_checkpoint_dir(preset, dtype) / "config.json").exists()


def preset_checkpoint(preset: Preset, dtype: torch.dtype) -> Path:
    """The preset's random weights (seed 0, as :func:`load_pretrained` draws them) written once
    as a checkpoint in the cache, for loaders that only read checkpoints (quantizing ones).

    Drawn on the GPU where there is one: transformers' initialisation of a 7B model on the CPU
    took minutes of a ten-minute GPU slot, on the GPU seconds. The GPU's memory is then freed
    and its peak counters reset, so the quantized row that asked for the checkpoint still
    measures only what a user of that checkpoint holds. (CUDA's generator draws other numbers
    than the CPU's: the weights are random either way, kept for speed and memory only.)
    """
    from transformers import AutoModelForCausalLM

    target = _preset_checkpoint_dir(preset, dtype)
    if (target / "config.json").exists():
        return target
    print(f"tunerkit: writing the random weights of preset {preset.name} to {target} (once)", flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(preset.config(), dtype=dtype)
    try:
        return publish(target, model.save_pretrained, ".preset-")
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def load_pretrained(source: ModelSource, dtype: torch.dtype, device: torch.device, attn: str,
                    quantization_config=None, config=None):
    """The model in ``dtype`` on ``device``; with ``quantization_config`` (a transformers
    quantization config), loaded through transformers' quantizer straight onto ``device``.
    ``config``: the checkpoint's config as the caller amended it, used instead of its config.json
    (for a pre-quantized checkpoint transformers follows the stored quantization config, not
    the one passed)."""
    from transformers import AutoModelForCausalLM

    if source.kind == "preset" and quantization_config is None:
        config = source.preset.config()
        config._attn_implementation = attn
        torch.manual_seed(0)  # the same random weights for every row of a recipe
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
        return model
    # Quantized weights are placed by the quantizer itself (device_map); others load, then move.
    placement = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                        "device_map": {"": device}}
    if config is not None:
        placement["config"] = config
    path = str(preset_checkpoint(source.preset, dtype)) if source.kind == "preset" else model_path(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, **placement)
    except OSError as err:
        if source.kind == "hub":
            raise UserError(f"cannot fetch '{source.spec}' from the hub ({str(err).splitlines()[0][:120]})",
                            key="model", hint="offline? point model at a local directory or use a preset") from None
        raise
    if placement:
        return model
    return model.to(device)


def ids_tokenizer(vocab: int):
    """A tokenizer over plain token ids, for a random-weight preset that has none to save (it
    trains on synthetic ids): libraries that load a model folder with its tokenizer (unsloth,
    GPT-QModel) read its pad and eos ids from it. Only ids matter to such a model, so it spells
    the first 256 and maps nothing else."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, **{f"<{i}>": i for i in range(2, min(vocab, 256))}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   model_max_length=1 << 20)


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    if source.kind == "preset":
        # Presets are measured on token ids (synthetic data); for chat data they borrow
        # the bundled SmolLM2 tokenizer, whose 49,152 ids fit every preset but the 32k-vocab ones.
        path = str(bundled_smollm2_dir())
    else:
        path = model_path(source)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
