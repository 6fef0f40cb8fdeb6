#!/usr/bin/env bash
# Gemma-3-270M (real weights) at the bench profile's 200 steps on a 2-core CPU: lora, adapter
# and full at the recipe's shared learning rate (2e-4), then full at 2e-5 (a full-fine-tuning rate).
set -uo pipefail
cd "$(dirname "$0")/../../.."
DB=bench/results/2026-12-07-cpu/quality_gemma200.db
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only lora,adapter,full --db "$DB" --no-progress
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only full --set learning_rate=2e-5 --db "$DB" --no-progress
# LISA-2 at the recipe's shared rate, after the four rows above
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only full+lisa_2 --db "$DB" --no-progress
# LISA-2 at full fine-tuning's 2e-5 (a later run, on a fresh checkout of the same machine kind)
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only full+lisa_2 --set learning_rate=2e-5 --db "$DB" --no-progress
# rsLoRA and LoRA+ at the recipe's shared rate (a later run, as the line above)
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only rslora,lora+ --db "$DB" --no-progress
# LLaMA-Pro at the recipe's shared rate (after the line above)
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only llamapro --db "$DB" --no-progress
# LoRA with NEFTune at the recipe's shared rate (after the line above)
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only lora+neftune --db "$DB" --no-progress
# DoRA at the recipe's shared rate (2026-12-07 evening, a fresh machine of the same kind)
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only dora --db "$DB" --no-progress
# AdaLoRA at the recipe's shared rate (after the line above)
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only adalora --db "$DB" --no-progress
# LISA-4 at full fine-tuning's 2e-5, the rate LISA-2 and full did well at (after the line above)
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only full+lisa_4 --set learning_rate=2e-5 --db "$DB" --no-progress
# GaLore rank 128 at 2e-5 (after the line above; its other parameters, the embedding among them, train with AdamW at that rate)
tunerkit run recipes/beyond_seed/quality.toml -p gemma --only full+galore128 --set learning_rate=2e-5 --db "$DB" --no-progress
