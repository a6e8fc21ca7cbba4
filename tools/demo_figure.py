"""The pictures of a demo run (`bash train_eval.sh demo` writes them to output_path/demo/).

    python tools/demo_figure.py [--data-root data/demo] [--pred-dir output_path/demo/label]
                                [--work-dir work_dirs/fhd.demo] [--out output_path/demo] [--n 4]

<out>/demo_results.png: one row per test pair, A | B | label | prediction | error map
(TP white, TN black, FP red, FN green); <out>/demo_loss.png: the training loss curve from
train.jsonl. Pairs: the first --n test names (sorted) that contain change. The README's
committed pictures are updated on purpose only: `python tools/demo_figure.py --out assets`.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.visualize import error_map, imwrite_atomic, loss_curve, panel  # noqa: E402


def read(path, flags=cv2.IMREAD_COLOR):
    img = cv2.imread(str(path), flags)
    if img is None:
        sys.exit(f'error: cannot read {path}')
    return img


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data-root', default='data/demo')
    p.add_argument('--pred-dir', default='output_path/demo/label')
    p.add_argument('--work-dir', default='work_dirs/fhd.demo')
    p.add_argument('--out', default='output_path/demo',
                   help='folder of the two pictures (assets: the README\'s, on purpose only)')
    p.add_argument('--n', type=int, default=4)
    args = p.parse_args(argv)
    test = Path(args.data_root) / 'test'
    names = sorted(os.listdir(test / 'label'))
    labels = {n: read(test / 'label' / n, cv2.IMREAD_GRAYSCALE) for n in names}
    # pairs with change first, then the others (a tiny test split may have no change)
    chosen = ([n for n in names if labels[n].any()] + [n for n in names if not labels[n].any()])
    rows = []
    for name in chosen[:args.n]:
        pred = read(Path(args.pred_dir) / name, cv2.IMREAD_GRAYSCALE)
        rows.append(panel(read(test / 'A' / name), read(test / 'B' / name), labels[name], pred,
                          error_map(pred, labels[name])))
    if not rows:
        sys.exit(f'error: no test pairs under {test}')
    gap = np.full((4, rows[0].shape[1], 3), 128, np.uint8)
    grid = np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0)
    imwrite_atomic(os.path.join(args.out, 'demo_results.png'), grid)
    log = Path(args.work_dir) / 'train.jsonl'
    recs = [json.loads(line) for line in open(log)] if log.is_file() else []
    recs = [r for r in recs if r.get('mode') == 'train']
    if recs:
        curve = loss_curve([r['iter'] for r in recs], [r['loss'] for r in recs],
                           title='FHD (MiT-b2) on the demo set: training loss')
        imwrite_atomic(os.path.join(args.out, 'demo_loss.png'), curve)
    print(f'wrote {args.out}/demo_results.png' + (f' and {args.out}/demo_loss.png' if recs else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
