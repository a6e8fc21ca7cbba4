"""Change maps for image pairs without labels, any size.

    python infer.py --checkpoint model_ckpt/levir.pth --a t1.png --b t2.png --out change.png [--prob] [--overlay]
    python infer.py --checkpoint model_ckpt/levir.pth --input-dir pairs/ --output-dir out/ [--prob] [--overlay]

Images run at their native resolution (the released models were trained on 256x256 tiles
at the datasets' native ground resolution). An image larger than `--tile` is processed
by overlapping tiles whose logits are blended with a window that fades towards the tile
borders, so there are no seams; other sizes are zero-padded to a multiple of 32 and the
result cropped back. Outputs (all PNG, written atomically):
  mask          0/255 change map (--out, or <output-dir>/<name>.png)
  --prob        8-bit change probability (OUT_prob.png, or <output-dir>/prob/<name>.png)
  --overlay     changes tinted red on image B (OUT_overlay.png, or <output-dir>/overlay/<name>.png)
With --input-dir, pairs are the files with the same name in DIR/A and DIR/B.
"""
import argparse
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from utils.inference import resolve_device, sliding_window_logits
from utils.runtime import keep_freed_memory
from utils.visualize import imwrite_atomic, mask_to_png, overlay

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')


class InferError(Exception):
    """A user-facing problem (bad argument, missing or mismatched input); printed as one line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='model weights (original FHD release or this project)')
    p.add_argument('--backbone', default='mit_b2', help='MiT variant the checkpoint was trained with')
    p.add_argument('--a', help='first-date image')
    p.add_argument('--b', help='second-date image')
    p.add_argument('--out', help='output mask PNG for --a/--b')
    p.add_argument('--input-dir', help='folder with A/ and B/ holding pairs of equal names')
    p.add_argument('--output-dir', help='output folder for --input-dir')
    p.add_argument('--tile', type=int, default=256, help='sliding-window tile size (multiple of 32)')
    p.add_argument('--overlap', type=int, default=64, help='overlap of neighbouring tiles in pixels')
    p.add_argument('--prob', action='store_true', help='also write the change probability as 8-bit PNG')
    p.add_argument('--overlay', action='store_true', help='also write the changes overlaid on image B')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    p.add_argument('--batch-size', type=int, default=4, help='tiles per forward pass')
    p.add_argument('--amp', default='none', choices=('none', 'fp16', 'bf16'))
    args = p.parse_args(argv)
    single = (args.a, args.b, args.out)
    if args.input_dir or args.output_dir:
        if any(single) or not (args.input_dir and args.output_dir):
            p.error('use either --a/--b/--out or --input-dir/--output-dir')
    elif not all(single):
        p.error('give --a, --b and --out (or --input-dir and --output-dir)')
    if args.batch_size < 1:
        p.error('--batch-size must be >= 1')
    return args


def side_paths(out):
    """Probability and overlay file names next to a single --out mask."""
    stem = os.path.splitext(out)[0]
    return stem + '_prob.png', stem + '_overlay.png'


def find_pairs(input_dir, output_dir):
    """[(a_path, b_path, mask_out, prob_out, overlay_out)] for DIR/A/* with a partner in DIR/B."""
    a_dir, b_dir = Path(input_dir) / 'A', Path(input_dir) / 'B'
    for folder in (a_dir, b_dir):
        if not folder.is_dir():
            raise InferError(f'--input-dir needs the sub-folders A/ and B/; missing {folder}')
    names = sorted(p.relative_to(a_dir) for p in a_dir.rglob('*')
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith('.'))
    if not names:
        raise InferError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {a_dir}')
    missing = [str(n) for n in names if not (b_dir / n).is_file()]
    if missing:
        raise InferError(f'{len(missing)} image(s) of {a_dir} have no partner in {b_dir}: '
                         f'{", ".join(missing[:5])}')
    out = Path(output_dir)
    return [(a_dir / n, b_dir / n, out / n.with_suffix('.png'), out / 'prob' / n.with_suffix('.png'),
             out / 'overlay' / n.with_suffix('.png')) for n in names]


def pair_logits(model, a_bgr, b_bgr, device, tile, overlap, batch_size, amp='none'):
    """(2,H,W) float32 logits for one pair of BGR uint8 images of equal size."""
    from datasets import normalize_pair
    img = normalize_pair(a_bgr, b_bgr)[None].to(device)
    logits = sliding_window_logits(model, img, tile=tile, overlap=overlap, batch_size=batch_size, amp=amp)
    return logits[0].cpu()


def run(args):
    keep_freed_memory()
    from datasets import read_pair
    from models import build_fhd, for_inference, load_checkpoint

    if args.tile % 32 or args.tile <= 0:
        raise InferError(f'--tile must be a positive multiple of 32, got {args.tile}')
    if not 0 <= args.overlap < args.tile:
        raise InferError(f'--overlap must be in [0, --tile), got {args.overlap}')
    if args.input_dir:
        jobs = find_pairs(args.input_dir, args.output_dir)
    else:
        jobs = [(Path(args.a), Path(args.b), Path(args.out), *map(Path, side_paths(args.out)))]
    if not os.path.isfile(args.checkpoint):
        raise InferError(f'checkpoint not found: {args.checkpoint} (the released FHD checkpoints are '
                         'linked from the README of github.com/ZSVOS/FHD; put them in model_ckpt/)')
    device = resolve_device(args.device)
    model = build_fhd(backbone=args.backbone)
    load_checkpoint(model, args.checkpoint)
    model = for_inference(model, device=device)

    for a_path, b_path, mask_out, prob_out, overlay_out in tqdm(jobs, desc='infer', unit='pair',
                                                                 disable=len(jobs) == 1):
        a, b = read_pair(a_path, b_path)       # DatasetError when unreadable or sizes differ
        logits = pair_logits(model, a, b, device, args.tile, args.overlap, args.batch_size, args.amp)
        mask = logits.argmax(dim=0)
        imwrite_atomic(str(mask_out), mask_to_png(mask))
        if args.prob:
            prob = logits.softmax(dim=0)[1]
            imwrite_atomic(str(prob_out), (prob * 255).round().to(torch.uint8).numpy())
        if args.overlay:
            imwrite_atomic(str(overlay_out), overlay(b, mask))
    print(f'wrote {len(jobs)} change map(s) to {args.output_dir or args.out}')


def main(argv=None):
    args = parse_args(argv)
    from datasets import DatasetError
    from models import CheckpointError
    try:
        run(args)
    except (InferError, DatasetError, CheckpointError, ValueError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
