#!/usr/bin/env bash
# GPU check for one CUDA GPU, in under 8 minutes:
#   1. the original's recorded reference case on the GPU (fp32, both execution paths);
#   2. benchmark.py's GPU table (eval and training, fp32 / bf16 / bf16 + channels_last + compile),
#      every variant checked against the fp32 reference;
#   3. 300 training iterations of the demo at batch 16, 256x256 crops, bf16 + torch.compile,
#      reporting training pairs/s and the projected time of the paper's 80,000 x 16 schedule.
# Results: work_dirs/gpu_check/{benchmark.json,train.jsonl,summary.txt}
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-work_dirs/gpu_check}
mkdir -p "$OUT"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "error: no CUDA device")'

echo "=== 1/3 reference case on GPU"
"$PYTHON" tools/reference_check.py --device cuda | tee "$OUT/summary.txt"

echo "=== 2/3 benchmark (GPU)"
"$PYTHON" benchmark.py --device cuda --workers 8 --json "$OUT/benchmark.json" | tee -a "$OUT/summary.txt"

echo "=== 3/3 demo training, 300 iterations, batch 16, 256x256, bf16 + compile"
rm -rf "$OUT/train"
"$PYTHON" train.py --dataset demo --device cuda --work-dir "$OUT/train" --pretrained none \
    --max-iters 300 --batch-size 16 --crop-size 256 --amp bf16 --compile \
    --checkpoint-interval 300 --log-interval 50 --num-workers 12
"$PYTHON" - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(f'{sys.argv[1]}/train/train.jsonl')]
times = sorted(r['time'] for r in rows if r.get('mode') == 'train')[:-1] or [float('nan')]
sec = times[len(times) // 2]      # median s/iter; the slowest window (compilation) left out
pps = 16 / sec
print(f"demo training (bf16 + compile, 256x256, batch 16): {pps:.0f} pairs/s; "
      f"paper schedule (80,000 x 16 pairs) projected {80000 * 16 / pps / 60:.1f} min")
PY
