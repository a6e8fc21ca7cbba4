#!/usr/bin/env bash
# Evaluate the released FHD checkpoint for S2Looking on its test split.
#
#   bash infer_s2looking.sh [extra eval.py options, e.g. --color --amp fp16 --device cpu]
#
# Reads   model_ckpt/s2looking.pth and data/S2Looking/test/{A,B,label}/ (paths relative to this repo)
# Writes  output_path/s2looking/label/<name>.png   0/255 predictions (lossless PNG)
#         output_path/s2looking/label/metrics.json precision/recall/F1/IoU/OA/kappa + TP/FP/FN/TN
#         (with --color also label/error_map/ and label/panel/)
# Override with environment variables: CKPT, DATA_ROOT, OUT_DIR, PYTHON.
# Paper (Pei & Zhang, GRSL 2022): P 74.09 R 56.71 F1 64.25 IoU 47.33
set -euo pipefail
cd "$(dirname "$0")"

CKPT="${CKPT:-model_ckpt/s2looking.pth}"
DATA_ROOT="${DATA_ROOT:-data/S2Looking}"
OUT_DIR="${OUT_DIR:-output_path/s2looking}"
PYTHON="${PYTHON:-python}"
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

if [ ! -f "$CKPT" ]; then
    echo "error: checkpoint $CKPT not found." >&2
    echo "  Download the released FHD S2Looking checkpoint from the Google Drive link in the README of" >&2
    echo "  https://github.com/ZSVOS/FHD and save it as $(abspath "$CKPT") (or set CKPT=/path/to/file.pth)." >&2
    exit 1
fi
if [ ! -d "$DATA_ROOT/test/A" ] || [ ! -d "$DATA_ROOT/test/B" ] || [ ! -d "$DATA_ROOT/test/label" ]; then
    echo "error: dataset $DATA_ROOT/test/{A,B,label} not found." >&2
    echo "  Get S2Looking (https://github.com/S2Looking/Dataset), prepare it as described in this repo's README (1024x1024 pairs cut into 256x256 tiles)" >&2
    echo "  and put it under $(abspath "$DATA_ROOT")/ (or set DATA_ROOT=/path/to/S2Looking)." >&2
    exit 1
fi

exec "$PYTHON" eval.py --dataset s2looking --data-root "$DATA_ROOT" --split test \
    --checkpoint "$CKPT" --show-dir "$OUT_DIR/label" "$@"
