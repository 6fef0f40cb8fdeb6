"""adalora: update_and_allocate after every optimizer step, total_step = the real step count, ranks pruned."""

import json

import pytest

from tunerkit.errors import UserError


def test_budget_is_allocated_every_step_down_to_target(tiny_row, run_tiny, monkeypatch, tmp_path):
    from peft.tuners.adalora.model import AdaLoraModel

    calls = []
    original = AdaLoraModel.update_and_allocate

    def spy(self, global_step):
        config = self.peft_config[self.trainable_adapter_name]
        grads = [p.grad is not None for n, p in self.model.named_parameters() if "lora_" in n and p.requires_grad]
        calls.append({"step": global_step, "total_step": config.total_step,
                      "allocator_total_step": self.rankallocator.peft_config.total_step,
                      "budget": self.rankallocator.budget_schedule(global_step)[0],
                      "orth_reg_weight": config.orth_reg_weight,
                      "grads": all(grads) and bool(grads)})
        return original(self, global_step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", spy)
    # No max_steps: the step count comes from the data (8 samples, batch 1, 2 micro-batches per step,
    # one epoch), known only after apply_tuner built the config.
    m = run_tiny(tiny_row("adalora", max_steps=None, epochs=1.0, max_train_samples=8, batch_size=1,
                          gradient_accumulation_steps=2, save=True))
    steps = m["optimizer_steps"]
    assert steps == 4
    assert [c["step"] for c in calls] == list(range(1, steps + 1))
    assert all(c["total_step"] == c["allocator_total_step"] == steps for c in calls)
    assert all(c["grads"] for c in calls), "called before zero_grad, with every adapter gradient present"
    # The regulariser PEFT adds to each micro-batch's loss weighs 0.5 per optimizer step in all.
    assert all(c["orth_reg_weight"] == 0.5 / 2 for c in calls)
    assert m["adalora_total_step"] == steps
    # q, k, v of 4 layers: 12 matrices, init_r 12 -> 144; target_r 8 -> 96, reached at the last step.
    assert m["adalora_init_budget"] == 12 * 12
    assert m["adalora_target_budget"] == 12 * 8
    budgets = [c["budget"] for c in calls]
    assert budgets == sorted(budgets, reverse=True) and budgets[0] < 144 and budgets[-1] == 96
    assert m["adalora_rank_budget"] == m["adalora_target_budget"] < m["adalora_init_budget"]
    assert m["adalora_mean_rank"] == pytest.approx(8.0)
    saved = json.loads((tmp_path / "test" / "model" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA" and saved["orth_reg_weight"] == 0.5 and saved["total_step"] == steps


def test_schedule_without_pruning_phase_is_rejected(tiny_row):
    from tunerkit.validation import validate_row

    with pytest.raises(UserError, match="no pruning phase"):
        validate_row(tiny_row("adalora", max_steps=2, adalora={"tinit": 2}), file="<test>")
    with pytest.raises(UserError, match="target_r"):
        tiny_row("adalora", adalora={"target_r": 16, "init_r": 12})


def test_rank_divisor_stays_frozen_in_bf16(tiny_row, tiny_context):
    # PEFT re-creates ``ranknum`` as a trainable Parameter when it casts the adapter to a bf16 base.
    ctx = tiny_context(tiny_row("adalora", dtype="bf16"))
    ranknums = [p for n, p in ctx.model.named_parameters() if ".ranknum." in n]
    assert len(ranknums) == 12 and not any(p.requires_grad for p in ranknums)
    trainable = [n for n, p in ctx.model.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_A" in n or "lora_B" in n or "lora_E" in n) for n in trainable)


def test_plain_loss_is_reported_beside_the_regularised_one(tiny_row, run_tiny):
    # AdaLoRA's singular values start at zero, so at the first step the model is the base model
    # whatever P and Q are: the task loss there is the same with and without the regulariser.
    kw = dict(max_steps=3, batch_size=2, gradient_accumulation_steps=2)
    m = run_tiny(tiny_row("adalora", **kw))
    m0 = run_tiny(tiny_row("adalora", adalora={"orth_reg_weight": 0.0}, **kw))
    reg, plain = m["adalora_orth_reg_curve"], m["train_loss_plain_curve"]
    assert len(reg) == len(plain) == len(m["train_loss_curve"]) == 3
    assert reg[0] > 0.1, "P and Q start far from orthonormal"
    assert m["train_loss_curve"][0] == pytest.approx(m0["train_loss_curve"][0] + reg[0], rel=1e-4)
    assert plain[0] == pytest.approx(m0["train_loss_curve"][0], rel=1e-4)
    assert m["train_loss_plain"] == pytest.approx(m["train_loss"] - m["adalora_orth_reg"], rel=1e-6)
    assert m0["adalora_orth_reg"] == 0.0 and m0["train_loss_plain"] == pytest.approx(m0["train_loss"])
