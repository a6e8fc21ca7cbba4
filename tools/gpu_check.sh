#!/usr/bin/env bash
# GPU check for one CUDA GPU. It fits 8 minutes by construction: every step runs under a hard
# time budget (`timeout`), 90 + 210 + 150 = 450 s, and the whole script compiles the model
# exactly three times:
#   1. the original's recorded cases on the GPU, no compilation (budget 90 s):
#      eval case (fp32 logits) and the two-step training case (float64 tight, float32 coarse;
#      drop-path and dropout off, TF32 off) through train.py's own functions;
#   2. benchmark.py's GPU table at 256x256, every variant checked against the fp32 reference
#      (budget 210 s): compilation 1 = the eval forward of 'fast bf16+cl+compile' at batch 32,
#      compilation 2 = its training step (forward + backward) at batch 16; no memory probes
#      (each would compile again in a child process) and no data-pipeline run;
#   3. demo training at the demo's own scale (its preset: 64x64 crops of the 128x128 tiles),
#      batch 16, bf16 + --compile, 500 iterations (budget 150 s): compilation 3 = the training
#      step; no validation (it would compile the eval graph too).
# Results: work_dirs/gpu_check/{summary.txt,benchmark.json,train/train.jsonl}
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-work_dirs/gpu_check}
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "error: no CUDA device")'
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

# step BUDGET_S TITLE COMMAND...: run under its budget; a step that overruns fails the check
step() {
    local budget=$1 title=$2 rc=0 start=$SECONDS
    shift 2
    echo "=== $title (budget ${budget} s)" | tee -a "$SUMMARY"
    timeout -k 10 "$budget" "$@" 2>&1 | tee -a "$SUMMARY" || rc=$?
    echo "--- $title: $((SECONDS - start)) s, exit $rc" | tee -a "$SUMMARY"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "error: '$title' exceeded its budget of ${budget} s" | tee -a "$SUMMARY" >&2
    fi
    return "$rc"
}

step 90 "1/3 reference cases on GPU (eval + training step)" \
    "$PYTHON" tools/reference_check.py --device cuda

step 210 "2/3 benchmark (GPU, 256x256; 2 compilations)" \
    "$PYTHON" benchmark.py --device cuda --eval-batches 32 --train-batch 16 --repeats 3 \
    --warmup 2 --no-memory --no-data --json "$OUT/benchmark.json"

rm -rf "$OUT/train"
step 150 "3/3 demo training at its own scale (64x64 crops), batch 16, bf16 + compile (1 compilation)" \
    "$PYTHON" train.py --dataset demo --device cuda --work-dir "$OUT/train" \
    --max-iters 500 --batch-size 16 --amp bf16 --compile --checkpoint-interval 500 \
    --log-interval 50 --num-workers 8

"$PYTHON" - "$OUT" <<'PY' | tee -a "$SUMMARY"
import json, sys
rows = [json.loads(l) for l in open(f'{sys.argv[1]}/train/train.jsonl')]
times = [r['time'] for r in rows if r.get('mode') == 'train'][1:]   # window 1 holds the compile
sec = sorted(times)[len(times) // 2] if times else float('nan')
print(f"demo training (64x64 crops, batch 16, bf16 + compile): {16 / sec:.0f} pairs/s, "
      f"{1000 * sec:.1f} ms/it (median of {len(times)} log windows after the first); the "
      f"paper-schedule projection is benchmark.py's 256x256 training row")
PY
