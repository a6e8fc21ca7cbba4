#!/usr/bin/env bash
# Evaluate the released FHD checkpoint for LEVIR-CD+ on its test split.
#
#   bash infer_levir+.sh [extra eval.py options, e.g. --color --amp fp16 --device cpu]
#
# Reads   model_ckpt/levir+.pth and data/LEVIR+/test/{A,B,label}/ (paths relative to this repo)
# Writes  output_path/levir+/label/<name>.png   0/255 predictions (lossless PNG)
#         output_path/levir+/label/metrics.json precision/recall/F1/IoU/OA/kappa + TP/FP/FN/TN
#         (with --color also label/error_map/ and label/panel/)
# Override with environment variables: CKPT, DATA_ROOT, OUT_DIR, PYTHON.
# Paper (Pei & Zhang, GRSL 2022): P 89.60 R 83.83 F1 86.62 IoU 76.40
set -euo pipefail
cd "$(dirname "$0")"

CKPT="${CKPT:-model_ckpt/levir+.pth}"
DATA_ROOT="${DATA_ROOT:-data/LEVIR+}"
OUT_DIR="${OUT_DIR:-output_path/levir+}"
PYTHON="${PYTHON:-python}"
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

if [ ! -f "$CKPT" ]; then
    echo "error: checkpoint $CKPT not found." >&2
    echo "  Download the released FHD LEVIR-CD+ checkpoint from the Google Drive link in the README of" >&2
    echo "  https://github.com/ZSVOS/FHD and save it as $(abspath "$CKPT") (or set CKPT=/path/to/file.pth)." >&2
    exit 1
fi
if [ ! -d "$DATA_ROOT/test/A" ] || [ ! -d "$DATA_ROOT/test/B" ] || [ ! -d "$DATA_ROOT/test/label" ]; then
    echo "error: dataset $DATA_ROOT/test/{A,B,label} not found." >&2
    echo "  Get LEVIR-CD+ (https://github.com/S2Looking/Dataset), prepare it as described in this repo's README (1024x1024 pairs cut into 256x256 tiles)" >&2
    echo "  and put it under $(abspath "$DATA_ROOT")/ (or set DATA_ROOT=/path/to/LEVIR+)." >&2
    exit 1
fi

exec "$PYTHON" eval.py --dataset levir+ --data-root "$DATA_ROOT" --split test \
    --checkpoint "$CKPT" --show-dir "$OUT_DIR/label" "$@"
