def test_lora_row_trains_and_reports(tiny_row, run_tiny):
    m = run_tiny(tiny_row("lora", lora={"rank": 4}, max_steps=3))
    assert m["optimizer_steps"] == 3
    assert 0 < m["trainable_params"] < m["total_params"]
    assert m["random_weights"] is True
    assert len(m["train_loss_curve"]) == 3
    assert m["tokens_per_s"] > 0 and m["samples_per_s"] > 0
    assert "eval_loss" in m
