"""``tunerkit export MODEL --quantize gptq|awq``: a model quantized by GPT-QModel's own
GPTQ or AWQ algorithm, calibrated on a dataset, written as a checkpoint that plain
transformers loads (its ``quantization_config`` says how).

Nothing here quantizes by hand: the calibration samples are tokenized the way rows
tokenize their data and handed to GPT-QModel, which runs the algorithm layer by layer and
saves the packed result.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunerkit.errors import UserError

METHODS = ("gptq", "awq")
BITS = {"gptq": (4, 8), "awq": (4,)}


def bits_problem(method: str, bits: int) -> str | None:
    """Why ``method`` cannot quantize to ``bits``, or None."""
    if bits in BITS[method]:
        return None
    return f"{method} quantizes to {' or '.join(map(str, BITS[method]))} bits, not {bits}"


def check_request(method: str, bits: int, samples: int, max_length: int) -> None:
    problem = bits_problem(method, bits)
    if problem:
        raise UserError(problem, key="--bits", hint=f"--bits {BITS[method][0]}")
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}", key="--samples")
    if max_length < 8:
        raise UserError(f"--max-length must be at least 8 tokens, got {max_length}", key="--max-length")


def model_directory(spec: str) -> str:
    """Where GPT-QModel reads the model: a local directory, a bundled real model or a hub id."""
    from tunerkit.models import loading

    source = loading.resolve_model(spec)
    if source.kind == "preset":
        raise UserError(f"'{spec}' is a random-weight preset: quantizing it says nothing", key="MODEL",
                        hint="give a trained model: a merged checkpoint folder (tunerkit export ... --merge) or a hub id")
    return loading.model_path(source)


def calibration_samples(dataset: str, tokenizer, samples: int, max_length: int, seed: int = 42, *,
                        vocab_size: int | None = None) -> list[dict]:
    """``samples`` records of ``dataset`` (a registry name, a local file, builtin:* or synthetic:*)
    as token ids of at most ``max_length``, the shape GPT-QModel's quantize takes. Synthetic ids
    are drawn below ``vocab_size`` (the model's, default the tokenizer's) and need no tokenizer:
    a random-weight model may have none."""
    from tunerkit.data.chat import encode_record
    from tunerkit.data.sources import kind_of, load_records

    if tokenizer is None and kind_of(dataset) != "synthetic":
        raise UserError(f"calibrating on '{dataset}' needs a tokenizer and the model folder has none",
                        key="--calibration", hint="save the tokenizer beside the weights, or calibrate on synthetic:lengths")
    vocab = vocab_size or len(tokenizer)
    records = load_records(dataset, seed=seed, vocab_size=vocab, rows=samples)[:samples]
    out = []
    for record in records:
        ids = list(encode_record(tokenizer, record)["input_ids"])[:max_length]
        if ids:
            out.append({"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)})
    if not out:
        raise UserError(f"'{dataset}' gave no calibration tokens", key="--calibration",
                        hint="give a dataset with text (a registry name such as pileval, a .jsonl file, builtin:arithmetic)")
    return out


def check_tokenizer(path: str) -> None:
    """GPT-QModel loads the model with its tokenizer and refuses a folder without one, after the
    calibration data is built: refused here first, in one line."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise UserError(f"'{path}' holds no tokenizer, and GPT-QModel loads the model with its tokenizer",
                        key="MODEL", hint="save the tokenizer beside the weights (tokenizer.save_pretrained(folder)); "
                                          "tunerkit export --merge writes one")


#: GPT-QModel's AWQ searches clipping ranges over output features in blocks of this many
AWQ_OUTPUT_BLOCK = 64


def check_shapes(path: str, method: str, group_size: int) -> None:
    """Refuse, before GPT-QModel starts, a model whose linear layers its AWQ cannot group: the
    failure would otherwise come from one of its worker threads, halfway through."""
    if method != "awq":
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    out_head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not out_head]
    ins = sorted({m.in_features for m in linears if m.in_features % group_size})
    outs = sorted({m.out_features for m in linears if m.out_features % AWQ_OUTPUT_BLOCK})
    if ins:
        fits = [g for g in (128, 64, 32) if all(m.in_features % g == 0 for m in linears)]
        raise UserError(f"awq groups input features by {group_size}, and this model has linear layers of "
                        f"{', '.join(map(str, ins))} inputs", key="--group-size",
                        hint=f"--group-size {fits[0]}" if fits else "use gptq for this model")
    if outs:
        raise UserError(f"awq needs output features in multiples of {AWQ_OUTPUT_BLOCK}; this model has "
                        f"{', '.join(map(str, outs))}", key="--quantize", hint="use gptq for this model")


def quantize_config(method: str, bits: int, group_size: int):
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization import FORMAT, METHOD

    if method == "awq":
        return QuantizeConfig(bits=bits, group_size=group_size, quant_method=METHOD.AWQ, format=FORMAT.GEMM)
    return QuantizeConfig(bits=bits, group_size=group_size, quant_method=METHOD.GPTQ, format=FORMAT.GPTQ)


def _enough_cpu_workers(gptqmodel) -> None:
    # GPT-QModel's thread pool gives its model loader two CPU workers but the CPU pool only
    # half the cores: on a machine of one or two cores the loader's request is refused.
    # Two CPU workers are what the loader needs; more cores keep the library's own count.
    default = gptqmodel._default_cpu_workers
    gptqmodel._default_cpu_workers = lambda: max(2, default())


def _logs_in_cache() -> None:
    # GPT-QModel writes a per-layer log under ./logs of whatever folder it runs in; keep it
    # out of the user's working tree, in tunerkit's cache.
    from gptqmodel.looper import loop_processor

    from tunerkit.models.loading import cache_dir

    loop_processor._PROJECT_LOG_DIR = cache_dir() / "logs" / "gptqmodel"


def _cpu_backend(method: str, device: str) -> dict:
    # AWQ's default kernel for the GEMM layout is a CUDA one and is refused without CUDA;
    # GPT-QModel's torch AWQ kernel writes the same layout on a CPU.
    if method != "awq" or device != "cpu":
        return {}
    from gptqmodel import BACKEND

    return {"backend": BACKEND.AWQ_TORCH}


def quantize(model: str, method: str, bits: int, calibration: str, out: str | Path, *, samples: int = 128,
             max_length: int = 2048, group_size: int = 128) -> Path:
    """Quantize ``model`` with GPT-QModel's ``method`` and save it under ``out``."""
    from tunerkit.data.sources import check_source

    check_request(method, bits, samples, max_length)
    check_source(calibration, "--calibration")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"'{out}' is not empty", key="--out", hint="choose a new folder; export never overwrites")
    path = model_directory(model)
    check_shapes(path, method, group_size)
    check_tokenizer(path)
    try:
        import gptqmodel
    except ImportError:
        raise UserError("quantized export needs GPT-QModel, not installed", key="--quantize",
                        hint="pip install 'tunerkit[gptq]'") from None
    from transformers import AutoConfig, AutoTokenizer

    _enough_cpu_workers(gptqmodel)
    _logs_in_cache()
    data = calibration_samples(calibration, AutoTokenizer.from_pretrained(path), samples, max_length,
                               vocab_size=AutoConfig.from_pretrained(path).vocab_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    qmodel = gptqmodel.GPTQModel.load(path, quantize_config(method, bits, group_size), device=device)
    qmodel.quantize(data, batch_size=1, **_cpu_backend(method, device))
    out.mkdir(parents=True, exist_ok=True)
    qmodel.save(str(out))
    return out
