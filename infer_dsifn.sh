#!/usr/bin/env bash
# Evaluate the released FHD checkpoint for DSIFN-CD on its test split.
#
#   bash infer_dsifn.sh [extra eval.py options, e.g. --color --amp fp16 --device cpu]
#
# Reads   model_ckpt/dsifn.pth and data/DSIFN/test/{A,B,label}/ (paths relative to this repo)
# Writes  output_path/dsifn/label/<name>.png   0/255 predictions (lossless PNG; the original wrote JPEG)
#         output_path/dsifn/label/metrics.json precision/recall/F1/IoU/OA/kappa + TP/FP/FN/TN
#         (with --color also label/error_map/ and label/panel/)
# Override with environment variables: CKPT, DATA_ROOT, OUT_DIR, PYTHON.
# Paper (Pei & Zhang, GRSL 2022): P 72.34 R 73.40 F1 72.86 IoU 57.31
set -euo pipefail
cd "$(dirname "$0")"

CKPT="${CKPT:-model_ckpt/dsifn.pth}"
DATA_ROOT="${DATA_ROOT:-data/DSIFN}"
OUT_DIR="${OUT_DIR:-output_path/dsifn}"
PYTHON="${PYTHON:-python}"
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

if [ ! -f "$CKPT" ]; then
    echo "error: checkpoint $CKPT not found." >&2
    echo "  Download the released FHD DSIFN-CD checkpoint from the Google Drive link in the README of" >&2
    echo "  https://github.com/ZSVOS/FHD and save it as $(abspath "$CKPT") (or set CKPT=/path/to/file.pth)." >&2
    exit 1
fi
if [ ! -d "$DATA_ROOT/test/A" ] || [ ! -d "$DATA_ROOT/test/B" ] || [ ! -d "$DATA_ROOT/test/label" ]; then
    echo "error: dataset $DATA_ROOT/test/{A,B,label} not found." >&2
    echo "  Get DSIFN-CD (https://github.com/GeoZcx/A-deeply-supervised-image-fusion-network-for-change-detection-in-remote-sensing-images), prepare it as described in this repo's README (512x512 .jpg images, .png labels)" >&2
    echo "  and put it under $(abspath "$DATA_ROOT")/ (or set DATA_ROOT=/path/to/DSIFN)." >&2
    exit 1
fi

exec "$PYTHON" eval.py --dataset dsifn --data-root "$DATA_ROOT" --split test \
    --checkpoint "$CKPT" --show-dir "$OUT_DIR/label" "$@"
