"""infer_speed: backends, exact token counts, the greedy static loop's correctness, PEFT models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunerkit.eval import evaluators, infer

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
CPU = torch.device("cpu")


def test_registry_lists_the_new_evaluators():
    found = evaluators()
    assert {"infer_speed", "gsm8k", "arc", "ceval", "eval_loss", "accuracy"} <= set(found)


def test_prompts_are_fixed_length_and_deterministic(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row())
    a = infer.prompt_token_ids(3, 50, ctx.model.config.vocab_size, ctx.tokenizer)
    assert a == infer.prompt_token_ids(3, 50, ctx.model.config.vocab_size, ctx.tokenizer)
    assert [len(p) for p in a] == [50, 50, 50] and a[0] != a[1]
    rand = infer.prompt_token_ids(2, 20, 1000)  # no tokenizer: seeded random ids within the vocabulary
    assert rand == infer.prompt_token_ids(2, 20, 1000) and all(0 <= t < 1000 for p in rand for t in p)


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_infer_speed_evaluator(backend, tiny_row, tiny_context):
    ctx = tiny_context(tiny_row(infer_backend=backend, infer_prompts=2, infer_new_tokens=3))
    m = infer.infer_speed(ctx)
    assert m["infer_backend"] == backend and "infer_note" not in m
    assert m["infer_tokens"] == 2 * 3  # exactly infer_new_tokens per prompt, EOS or not
    assert m["infer_tokens_per_s"] > 0 and m["infer_prompt_tokens"] == infer.PROMPT_TOKENS
    assert ctx.model.training  # the evaluator restores training mode


def test_every_prompt_yields_exactly_new_tokens_even_past_eos(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row())
    model = ctx.model.eval()
    prompt = infer.prompt_token_ids(1, 16, model.config.vocab_size, ctx.tokenizer)
    ids = torch.tensor(prompt)
    first = int(model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                               do_sample=False, pad_token_id=0)[0, -1])
    model.generation_config.eos_token_id = first  # plain generate would stop after one token
    assert model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                          do_sample=False, pad_token_id=0).shape[1] == 16 + 1
    for backend in ("eager", "static"):
        assert infer.measure_speed(model, prompt, 4, backend, CPU).tokens == 4


def test_compiled_falls_back_to_static_without_cuda(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row(infer_backend="compiled", infer_prompts=1, infer_new_tokens=3))
    m = infer.infer_speed(ctx)
    assert m["infer_backend"] == "static" and m["infer_backend_requested"] == "compiled"
    assert "fell back to static" in m["infer_note"]
    assert m["infer_tokens_per_s"] > 0


def test_failed_compile_falls_back_with_the_reason(tiny_row, tiny_context, monkeypatch):
    ctx = tiny_context(tiny_row(infer_prompts=1, infer_new_tokens=2))

    class Broken:
        def __call__(self, ids, new_tokens):
            raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten")

    monkeypatch.setattr(infer, "make_backend", lambda *a, **k: (Broken(), "compiled"))
    prompts = infer.prompt_token_ids(1, 16, ctx.model.config.vocab_size)
    result = infer.measure_speed(ctx.model, prompts, 2, "compiled", CPU)
    assert result.backend == "static" and "CUDAGraphs" in result.notes[0] and result.tokens == 2
    with pytest.raises(RuntimeError):
        infer.measure_speed(ctx.model, prompts, 2, "compiled", CPU, fallback=False)


def _greedy_reference(model, ids, n):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                          min_new_tokens=n, do_sample=False, pad_token_id=0)[:, ids.shape[1]:]


def test_static_loop_decodes_like_generate_and_reuses_its_cache(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row())
    model = ctx.model.eval()
    prompts = infer.prompt_token_ids(2, 24, model.config.vocab_size, ctx.tokenizer)
    loop = infer.StaticGreedyLoop(model, max_cache_len=24 + 8, compiled=False)
    with torch.no_grad():
        for p in prompts + prompts[:1]:  # the third call runs on the reset cache
            ids = torch.tensor([p])
            assert torch.equal(loop(ids, 8), _greedy_reference(model, ids, 8))


def test_peft_model_decodes_through_its_base_with_adapters(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", lora={"rank": 4}))
    model = ctx.model.eval()
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B matrices, so the adapters change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    inner = infer.generation_model(model)
    assert inner is model.get_base_model()
    ids = torch.tensor(infer.prompt_token_ids(1, 24, inner.config.vocab_size, ctx.tokenizer))
    with torch.no_grad():
        looped = infer.StaticGreedyLoop(inner, 24 + 6, compiled=False)(ids, 6)
        assert torch.equal(looped, _greedy_reference(model, ids, 6))
        with model.disable_adapter():
            assert not torch.equal(looped, _greedy_reference(model, ids, 6))
    m = infer.measure_speed(model, [ids[0].tolist()], 4, "static", CPU)
    assert m.backend == "static" and m.tokens == 4


def test_row_runs_infer_speed_and_arc_through_the_loop(tiny_row, run_tiny):
    m = run_tiny(tiny_row("lora", lora={"rank": 4}, evaluate=["infer_speed", "arc"], eval_data_dir=str(FIXTURES),
                          eval_limit=2, infer_prompts=1, infer_new_tokens=2, gradient_checkpointing=True))
    assert m["infer_tokens_per_s"] > 0 and m["infer_backend"] == "eager" and m["infer_tokens"] == 2
    assert m["arc_items"] == 2 and 0 <= m["arc_acc"] <= 1
