"""Decoding speed: greedy generation at batch 1, in tokens per second.

Three backends, each timed the same way (prefill and decode of every prompt, CUDA
synchronised, one warm-up generation left out, exactly ``new_tokens`` tokens per prompt):

- ``eager``: ``model.generate`` with the dynamic KV cache, what ms-swift measured.
- ``static``: ``model.generate`` with ``cache_implementation="static"`` and compilation
  switched off, so the cache's effect shows on its own (transformers would otherwise
  compile a static-cache ``generate`` on CUDA by itself).
- ``compiled``: a static cache whose decode step is compiled through transformers' own
  compile path (``model.get_compiled_call(CompileConfig(mode="reduce-overhead"))``, the
  call ``generate`` uses, with CUDA graphs) and driven by a short greedy loop that never
  waits for the GPU between tokens: ``generate`` checks its stopping criteria on the host
  after every token, which leaves the GPU idle for the Python in between. Each step starts
  with ``torch.compiler.cudagraph_mark_step_begin()`` and reads the logits of the CUDA
  graph's output before the next replay overwrites them. One cache serves every prompt
  (``reset()`` in place), so the graph keeps its addresses and is recorded once.
  Without CUDA it falls back to ``static`` and says so in ``infer_note``.

Works on plain transformers models and on PEFT-wrapped ones (adapters injected into the
base model run inside the compiled step).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch

BACKENDS = ("eager", "static", "compiled")
#: measured by bench/infer_speed.py beside the others: transformers' own compiled ``generate``
COMPARISON_BACKENDS = ("generate-compiled",)
PROMPT_TOKENS = 256  # prompt length of infer_speed (the GPU reference measurement's setting)

#: Fixed, deterministic text the prompts are cut from when a tokenizer is at hand.
_PASSAGE = (
    "The river town woke slowly. Bakers pulled the first loaves from brick ovens while the ferry "
    "captain counted crates of apples, pears and walnuts stacked on the wooden pier. A teacher "
    "walked her class to the old mill to show how water turns a wheel, how the wheel turns a shaft, "
    "and how the shaft drives the stones that grind wheat into flour. Later that morning a storm "
    "rolled in from the hills; rain drummed on tin roofs, the ferry waited at the far bank, and "
    "children raced home through puddles. By evening the sky cleared, lamps were lit along the "
    "quay, and the captain finally crossed with his cargo, twelve crates of fruit and a letter for "
    "the mayor announcing a new bridge. Explain, step by step, how such a bridge would change the "
    "town's trade, its daily routines and the lives of the people who work on the river. "
)


@dataclass
class SpeedResult:
    backend: str  # the backend that really ran
    tokens: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    prompts: int = 0
    notes: list[str] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)  # the new tokens of every timed prompt

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def metrics(self, requested: str) -> dict:
        out = {"infer_tokens_per_s": self.tokens_per_s, "infer_backend": self.backend,
               "infer_tokens": self.tokens, "infer_seconds": self.seconds,
               "infer_prompts": self.prompts, "infer_prompt_tokens": self.prompt_tokens}
        if requested != self.backend:
            out["infer_backend_requested"] = requested
        if self.notes:
            out["infer_note"] = "; ".join(self.notes)
        return out


def prompt_token_ids(count: int, length: int, vocab_size: int, tokenizer=None, seed: int = 0) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` token ids, the same on every call.

    With a tokenizer they are windows of a fixed English passage (starting at different
    offsets); without one (or if its ids do not fit the model) seeded random ids.
    """
    if tokenizer is not None:
        ids = tokenizer(_PASSAGE, add_special_tokens=False)["input_ids"]
        if ids and max(ids) < vocab_size:
            stream = ids * (1 + (length + 7 * count) // len(ids))
            return [stream[7 * i: 7 * i + length] for i in range(count)]
    gen = torch.Generator().manual_seed(seed)
    high = min(vocab_size, 32000)  # ordinary-token range of every vocabulary in the presets
    return torch.randint(100, high, (count, length), generator=gen).tolist()


def generation_model(model):
    """The transformers model that decodes for ``model``: PEFT's injected base model, or itself."""
    try:
        from peft import PeftModel
    except ImportError:
        return model
    if isinstance(model, PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None  # virtual prompt tokens exist only in PeftModel.generate
        return model.get_base_model()
    return model


def _cache_kwarg(model) -> str:
    # transformers 5.24 names the forward argument ``cache``; 5.17 ``past_key_values``.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _pad_id(model) -> int:
    cfg = getattr(model, "generation_config", None)
    for value in (getattr(cfg, "pad_token_id", None), getattr(cfg, "eos_token_id", None)):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


class HFGenerate:
    """``model.generate`` with the dynamic (eager) or static cache; compiled only when given a CompileConfig."""

    def __init__(self, model, cache_implementation: str | None, compile_config=None):
        self.model = model
        self.kwargs = dict(do_sample=False, use_cache=True, pad_token_id=_pad_id(model))
        if compile_config is None:
            self.kwargs["disable_compile"] = True
        else:
            self.kwargs["compile_config"] = compile_config
        if cache_implementation is not None:
            self.kwargs["cache_implementation"] = cache_implementation

    def __call__(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        # min_new_tokens = max_new_tokens: every prompt yields exactly new_tokens tokens.
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, **self.kwargs)
        return out[:, ids.shape[1]:]


class StaticGreedyLoop:
    """Greedy decoding over one reused ``StaticCache``; the decode step optionally compiled.

    ``compiled=True`` takes the decode step from ``model.get_compiled_call`` (transformers'
    compile path, mode ``reduce-overhead`` = CUDA graphs). The loop keeps the GPU busy: the
    next token is chosen on the device and nothing is read back until the prompt is done.
    """

    def __init__(self, model, max_cache_len: int, compiled: bool, compile_config=None):
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        self.cache_kwarg = _cache_kwarg(model)
        self.compiled = compiled
        if compiled:
            self.step = model.get_compiled_call(compile_config or default_compile_config())
        else:
            self.step = model.__call__

    def __call__(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        self.cache.reset()  # in place: the compiled graph keeps its static addresses
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: self.cache})
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        del out
        tokens = [token]
        for _ in range(new_tokens - 1):
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()
            logits = self.step(input_ids=token, use_cache=True, **{self.cache_kwarg: self.cache}).logits
            # argmax makes a fresh tensor before the next replay overwrites the graph's logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
        return torch.cat(tokens, dim=1)


def default_compile_config():
    from transformers import CompileConfig

    # reduce-overhead = CUDA graphs: one launch per decode step instead of hundreds of kernels.
    return CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead")


def make_backend(model, backend: str, max_cache_len: int, device: torch.device, notes: list[str]):
    """Return ``(callable(ids, new_tokens) -> new ids, backend that really runs)``."""
    if backend not in BACKENDS + COMPARISON_BACKENDS:
        raise ValueError(f"unknown infer backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "eager":
        return HFGenerate(model, None), "eager"
    if backend == "generate-compiled":
        return HFGenerate(model, "static", default_compile_config()), backend
    if backend == "compiled":
        inner = generation_model(model)
        if device.type != "cuda":
            notes.append("compiled needs CUDA graphs; fell back to static on " + device.type)
        elif inner is None:
            notes.append("prompt-learning PEFT models decode only through generate; fell back to static")
        else:
            return StaticGreedyLoop(inner, max_cache_len, compiled=True), "compiled"
    return HFGenerate(model, "static"), "static"


@torch.no_grad()
def measure_speed(model, prompts: list[list[int]], new_tokens: int, backend: str = "eager",
                  device: torch.device | None = None, warmup: int = 1, fallback: bool = True) -> SpeedResult:
    """Time greedy generation of ``new_tokens`` tokens for each prompt (batch 1).

    The first ``warmup`` generations (on the first prompt) are not timed: they compile and
    record CUDA graphs for the compiled backend and warm the allocator for all. With
    ``fallback``, a compiled backend that fails there is replaced by ``static`` (noted).
    """
    device = device or next(model.parameters()).device
    notes: list[str] = []
    max_len = max(map(len, prompts)) + new_tokens
    run, used = make_backend(model, backend, max_len, device, notes)
    was_training = model.training
    model.eval()
    try:
        batches = [torch.tensor([p], dtype=torch.long, device=device) for p in prompts]
        try:
            for _ in range(warmup):
                run(batches[0], new_tokens)
        except Exception as err:  # noqa: BLE001 - compilers fail in many ways; the row goes on
            if not fallback or used in ("eager", "static"):
                raise
            first_line = (str(err).strip().splitlines() or [""])[0][:160]
            notes.append(f"{used} failed ({type(err).__name__}: {first_line}); fell back to static")
            run, used = HFGenerate(model, "static"), "static"
            for _ in range(warmup):
                run(batches[0], new_tokens)
        result = SpeedResult(used, prompts=len(prompts), prompt_tokens=max(map(len, prompts)), notes=notes)
        for ids in batches:
            _sync(device)
            start = time.perf_counter()
            out = run(ids, new_tokens)
            _sync(device)
            result.seconds += time.perf_counter() - start
            result.tokens += int(out.shape[1])
            result.outputs.append(out[0].tolist())
    finally:
        model.train(was_training)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed_metrics(model, tokenizer, device, backend: str, prompts: int, new_tokens: int) -> dict:
    """``infer_*`` metrics of ``prompts`` fixed prompts of PROMPT_TOKENS tokens, ``new_tokens`` each."""
    vocab = (generation_model(model) or model).config.vocab_size
    ids = prompt_token_ids(prompts, PROMPT_TOKENS, vocab, tokenizer)
    return measure_speed(model, ids, new_tokens, backend, device).metrics(backend)


def infer_speed(ctx) -> dict:
    """The ``infer_speed`` evaluator (settings infer_backend, infer_prompts, infer_new_tokens)."""
    s = ctx.settings
    return speed_metrics(ctx.unwrapped_model(), ctx.tokenizer, ctx.device, s.infer_backend, s.infer_prompts,
                         s.infer_new_tokens)
