"""Presets as pre-quantized checkpoints: random packed integers, scales and codebooks laid out
in a quantization library's own on-disk format, written once to the cache.

Nothing here quantizes: the tensors are drawn at random in the shapes and dtypes the
library's loader expects, so a preset row measures the speed and memory of a real
checkpoint of that shape (its weights are random and say nothing about quality). Norms are
ones, embeddings and the head are drawn like the preset's own initialisation.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tunerkit.core import row_attention
from tunerkit.errors import RowFailed
from tunerkit.models.loading import ModelSource, cache_dir, load_pretrained, model_path, publish
from tunerkit.models.presets import Preset

SHARD_BYTES = 4 << 30


@dataclass(frozen=True)
class Format:
    """One library's checkpoint layout: ``tensors(in_f, out_f)`` gives a linear's stored tensors
    (without bias), ``config`` the ``quantization_config`` written into config.json.
    ``zero_codes(in_f, out_f)``, where a format has it, gives the same tensors with every packed
    code zero (as holes (:class:`Hole`), never drawn: a sparse checkpoint leaves them unwritten) and the
    scales drawn so that the weights those zero codes stand for are still random."""
    tag: str
    config: dict
    tensors: Callable[[int, int], dict[str, torch.Tensor]]
    zero_codes: Callable[[int, int], dict[str, torch.Tensor]] | None = None


def random_int32(*shape: int) -> torch.Tensor:
    return torch.randint(-2 ** 31, 2 ** 31 - 1, shape, dtype=torch.int32)


def repeated_nibbles(value: int, bits: int) -> int:
    """A 32-bit word holding ``value`` in each of its ``bits``-wide fields, as a signed int32."""
    word = 0
    for i in range(32 // bits):
        word |= value << (i * bits)
    return word - (1 << 32) if word >= 1 << 31 else word


def scales(rows: int, cols: int, bits: int) -> torch.Tensor:
    # Random codes spread over +-2**(bits-1) steps: this step size gives weights of std ~0.02.
    step = 0.02 / (2 ** (bits - 1) / 3 ** 0.5)
    return torch.full((rows, cols), step, dtype=torch.float16)


def _plain_tensor(name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor that is not quantized (norms, biases, embeddings, head), as the presets initialise it."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype, device=device)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype, device=device)
    return (torch.randn(shape, device=device) * 0.02).to(dtype)


def _quantized_names(model) -> dict[str, torch.nn.Linear]:
    head = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


def _state_dict(preset: Preset, fmt: Format, dtype: torch.dtype, device: str = "cpu", zero_codes: bool = False):
    """Yield (name, tensor) for the whole checkpoint, built on the meta device then drawn tensor
    by tensor on ``device`` (``"meta"``: shapes and dtypes only, to size the checkpoint). With
    ``zero_codes`` the packed codes come as holes (:class:`Hole`): zeros a sparse file never writes."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(preset.config(), dtype=dtype)
    linears = _quantized_names(model)
    draw = fmt.zero_codes if zero_codes else fmt.tensors
    for name, module in linears.items():
        with torch.device(device):
            stored = draw(module.in_features, module.out_features)
        for key, t in stored.items():
            yield f"{name}.{key}", t
        if module.bias is not None:
            yield f"{name}.bias", torch.zeros(module.out_features, dtype=torch.float16, device=device)
    quantized_weights = {f"{n}.weight" for n in linears} | {f"{n}.bias" for n in linears}
    for name, p in model.named_parameters():
        if name not in quantized_weights:
            yield name, _plain_tensor(name, p.shape, dtype, device)


def checkpoint_bytes(preset: Preset, fmt: Format, dtype: torch.dtype, zero_codes: bool = False) -> int:
    """What the preset's ``fmt`` checkpoint takes on disk (its tensors' bytes), counted on the meta
    device; with ``zero_codes``, what a sparse one takes (the codes are holes)."""
    return sum(t.numel() * t.element_size() for _, t in _state_dict(preset, fmt, dtype, device="meta",
                                                                     zero_codes=zero_codes)
               if not (zero_codes and _is_hole(t)))


@dataclass(frozen=True)
class Hole:
    """A tensor of zeros that a sparse checkpoint leaves unwritten (only its shape and dtype)."""
    shape: tuple[int, ...]
    dtype: torch.dtype

    def numel(self) -> int:
        return math.prod(self.shape)

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype, device="meta").element_size()


def _is_hole(t) -> bool:
    return isinstance(t, Hole)


def holes_supported(folder: Path) -> bool:
    """Whether ``folder``'s filesystem keeps a file's unwritten ranges as holes (no blocks)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".holes-")
    probe = Path(name)
    try:
        with open(fd, "r+b") as fh:
            fh.truncate(64 << 20)
        return probe.stat().st_blocks * 512 < (1 << 20)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def check_disk(preset: Preset, fmt: Format, dtype: torch.dtype, folder: Path) -> bool:
    """Refuse, before writing a byte, a checkpoint the cache's disk cannot hold: qwen-72b's int8
    GPTQ preset is about 77 GB, and a 64 GiB disk would fill minutes into the row. Where the
    format can leave its codes zero and the filesystem keeps holes, a sparse checkpoint that
    fits is the answer instead: returns True for it, False for a dense one."""
    need = checkpoint_bytes(preset, fmt, dtype)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need <= free:
        return False
    sparse = checkpoint_bytes(preset, fmt, dtype, zero_codes=True) if fmt.zero_codes else None
    if sparse is not None and sparse <= free and holes_supported(folder):
        return True
    raise RowFailed(f"the random {fmt.tag} checkpoint of preset {preset.name} needs {need / 2 ** 30:.1f} GiB "
                    f"of disk and the cache ({folder}) has {free / 2 ** 30:.1f} GiB free; "
                    f"point TUNERKIT_CACHE at a larger disk")


#: safetensors' names of the dtypes a checkpoint here holds
_ST_DTYPES = {torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.float32: "F32"}


def save_sparse(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file in which holes (:class:`Hole`) are zeros left unwritten: the header and every
    other tensor are written, the file's length covers the holes, their blocks are never
    allocated. Readers (mmap) see zeros there."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as fh:
        fh.write(len(head).to_bytes(8, "little"))
        fh.write(head)
        for t in tensors.values():
            if _is_hole(t):
                fh.seek(t.numel() * t.element_size(), 1)
            else:
                fh.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        fh.truncate(8 + len(head) + offset)


def _write_shards(target: Path, tensors, sparse: bool = False) -> None:
    from safetensors.torch import save_file

    shard, size, index, n = {}, 0, {}, 0

    def flush():
        nonlocal shard, size, n
        if shard:
            n += 1
            fname = f"model-{n:05d}.safetensors"
            if sparse:
                save_sparse(shard, target / fname)
            else:
                save_file(shard, str(target / fname), metadata={"format": "pt"})
            index.update({k: fname for k in shard})
            shard, size = {}, 0

    for name, t in tensors:
        shard[name] = t if _is_hole(t) else t.contiguous()
        size += t.numel() * t.element_size()
        if size >= SHARD_BYTES:
            flush()
    flush()
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))


def checkpoint(preset: Preset, fmt: Format, dtype: torch.dtype) -> Path:
    """The preset written once in ``fmt`` under the cache; later rows reuse it."""
    target = cache_dir() / "models" / f"preset-{preset.name}-{fmt.tag}-{str(dtype).removeprefix('torch.')}"
    for found in (target, target.with_name(target.name + "-zerocodes")):
        if (found / "config.json").exists():
            return found
    sparse = check_disk(preset, fmt, dtype, target.parent)
    if sparse:
        target = target.with_name(target.name + "-zerocodes")
        print(f"tunerkit: preset {preset.name}'s {fmt.tag} checkpoint does not fit the cache's disk; writing it "
              f"with zero codes as holes (random scales) to {target} (once)", flush=True)
    else:
        print(f"tunerkit: writing random {fmt.tag} weights of preset {preset.name} to {target} (once)", flush=True)
    def write(folder: Path) -> None:
        _write_shards(folder, _state_dict(preset, fmt, dtype, zero_codes=sparse), sparse=sparse)
        config = preset.config()
        config.dtype = dtype
        config.quantization_config = dict(fmt.config)
        if sparse:
            config.tunerkit_zero_codes = True  # read back into each row's record (preset_zero_codes)
        config.save_pretrained(folder)

    torch.manual_seed(0)
    # published in one rename, as every cache folder is: a half-written checkpoint is never found,
    # and a killed write's leftovers (tens of GB for the 72b shape) are removed by the next one
    return publish(target, write, ".preset-")


def load_quantized(ctx, fmt: Format, quantization_config, amend_config: Callable | None = None):
    """The row's model through transformers' quantizer: a preset from its random ``fmt``
    checkpoint, any other source (local directory, hub id) as it is stored. ``amend_config``
    changes the checkpoint's own config before loading: transformers loads a pre-quantized
    checkpoint by the quantization config stored with it, whatever ``quantization_config`` says."""
    source = ctx.model_source
    if source.kind == "preset":
        path = checkpoint(source.preset, fmt, ctx.dtype)
        source = ModelSource("local", str(path), path=path)
    config = None
    if amend_config is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path(source))
        amend_config(config)
    return load_pretrained(source, ctx.dtype, ctx.device, row_attention(ctx), quantization_config, config=config)
