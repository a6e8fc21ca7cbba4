#!/usr/bin/env bash
# Train, then evaluate, FHD on each dataset in turn, as the original train_eval.sh did.
#
#   bash train_eval.sh                # levir, levir+, s2looking, dsifn (missing folders are skipped)
#   bash train_eval.sh demo           # the generated demo set, end to end (fine on a CPU)
#   bash train_eval.sh levir dsifn    # any subset, in the order given
#
# The demo also draws its pictures (demo_results.png, demo_loss.png) into $OUTPUT_ROOT/demo/;
# the README's committed pictures in assets/ change only on purpose:
#   ASSETS_DIR=assets bash train_eval.sh demo      (or: python tools/demo_figure.py --out assets)
#
# Environment (all optional):
#   GPUS=N          train with torchrun on N processes (DDP + SyncBN), default 1
#   DATA_ROOT=DIR   parent of the dataset folders (LEVIR, LEVIR+, S2Looking, DSIFN, demo), default data
#   WORK_ROOT=DIR   checkpoints go to DIR/fhd.<dataset>, default work_dirs
#   OUTPUT_ROOT=DIR predictions and metrics go to DIR/<dataset>, default output_path
#   ASSETS_DIR=DIR  where the demo draws its pictures, default the demo's output folder
#   SEED=N          training seed, default 1208 (the paper's); another seed trains into
#                   $WORK_ROOT/fhd.<dataset>.seed<N> and writes $OUTPUT_ROOT/<dataset>.seed<N>
#   TRAIN_ARGS, EVAL_ARGS   extra options for train.py / eval.py (e.g. TRAIN_ARGS="--amp bf16")
#   PYTHON          interpreter, default python
#
# A run that was interrupted continues from its newest checkpoint (--resume auto); a
# finished one is not retrained, only evaluated again.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}
GPUS=${GPUS:-1}
DATA_ROOT=${DATA_ROOT:-data}
WORK_ROOT=${WORK_ROOT:-work_dirs}
OUTPUT_ROOT=${OUTPUT_ROOT:-output_path}
SEED=${SEED:-1208}
read -r -a train_args <<< "${TRAIN_ARGS:-}"
read -r -a eval_args <<< "${EVAL_ARGS:-}"

if [ $# -gt 0 ]; then datasets=("$@"); else datasets=(levir levir+ s2looking dsifn); fi

# Folder name of each preset (LEVIR, S2Looking, ...), taken from datasets/presets.py.
folder_of() {
    "$PYTHON" -c 'import sys
from datasets import get_preset, DatasetError
try:
    print(get_preset(sys.argv[1]).root.name)
except DatasetError as e:
    sys.exit(f"error: {e}")' "$1"
}

if [ "$GPUS" -gt 1 ]; then
    launcher=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS")
else
    launcher=("$PYTHON")
fi

done_list=() skipped=()
for ds in "${datasets[@]}"; do
    root="$DATA_ROOT/$(folder_of "$ds")"
    if [ "$ds" != demo ] && [ ! -d "$root" ]; then
        echo "skipping $ds: dataset folder $root not found (see README, Datasets, for where to get it and how to prepare it)"
        skipped+=("$ds")
        continue
    fi
    run="$ds"
    [ "$SEED" != 1208 ] && run="$ds.seed$SEED"     # never resume another seed's checkpoint
    work_dir="$WORK_ROOT/fhd.$run"
    out_dir="$OUTPUT_ROOT/$run"
    color=()
    [ "$ds" = demo ] && color=(--color)

    echo "=== $ds: training ($root -> $work_dir)"
    "${launcher[@]}" train.py --dataset "$ds" --data-root "$root" --work-dir "$work_dir" \
        --seed "$SEED" --deterministic --resume auto ${train_args[@]+"${train_args[@]}"}

    echo "=== $ds: evaluating $work_dir/latest.pth on the test split -> $out_dir"
    "$PYTHON" eval.py --dataset "$ds" --data-root "$root" --checkpoint "$work_dir/latest.pth" \
        --show-dir "$out_dir/label" --output-dir "$out_dir" ${color[@]+"${color[@]}"} \
        ${eval_args[@]+"${eval_args[@]}"}
    if [ "$ds" = demo ]; then   # panels + error maps and the loss curve, beside the metrics
        "$PYTHON" tools/demo_figure.py --data-root "$root" --pred-dir "$out_dir/label" \
            --work-dir "$work_dir" --out "${ASSETS_DIR:-$out_dir}"
    fi
    done_list+=("$ds")
done

echo "finished: ${done_list[*]:-none}${skipped[*]:+; skipped (no data): ${skipped[*]}}" \
     "in $((SECONDS / 60)) min $((SECONDS % 60)) s"
