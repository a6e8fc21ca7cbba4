"""Evaluate FHD on a dataset split: whole-split pixel metrics of the change class.

    python eval.py --dataset levir --checkpoint model_ckpt/levir.pth
    python eval.py --dataset levir --checkpoint model_ckpt/levir.pth --show-dir output_path/levir/label --color
    python eval.py --dataset levir --pred-dir output_path/levir/label      # score saved PNGs, no model

Replaces the original's `eval.py` + `metrics.py` pair: the test pipeline of `datasets/`
(keep-ratio resize to the preset's scale, sides to a multiple of 32), full-resolution logits
resized bilinearly back to the label size, argmax, and one int64 confusion matrix over the
split. Predictions are always written as lossless PNG (the original wrote DSIFN as JPEG).
Batches travel as uint8 and are normalised on the device; `per_image.csv` next to
metrics.json lists each image's counts and scores (sort by F1 to find the failure cases).
"""
import argparse
import csv
import os
import sys
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.inference import autocast_context, resolve_device
from utils.fileio import atomic_path
from utils.metrics import ConfusionMatrix, format_table, save_json_atomic
from utils.runtime import keep_freed_memory
from utils.visualize import error_map, imwrite_atomic, mask_to_png, panel

DOWNLOAD_HINT = ('the released FHD checkpoints are linked from the README of '
                 'github.com/ZSVOS/FHD; put them in model_ckpt/')


class EvalError(Exception):
    """A user-facing problem (bad argument, missing file); printed as one line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', required=True, help='preset name: levir, levir+, s2looking, dsifn, demo, custom')
    p.add_argument('--data-root', help="dataset root (default: the preset's, e.g. data/LEVIR)")
    p.add_argument('--split', default='test', choices=('train', 'val', 'test'))
    p.add_argument('--checkpoint', help='model weights (original FHD release or this project)')
    p.add_argument('--backbone', default='mit_b2', help='MiT variant the checkpoint was trained with')
    p.add_argument('--pred-dir', help='score existing 0/255 prediction PNGs (<name>.png) instead of running a model')
    p.add_argument('--show-dir', help='write predictions (0/255 PNG named like the input) and metrics.json here')
    p.add_argument('--color', action='store_true',
                   help='with --show-dir: also write error_map/ (TP white, TN black, FP red, FN green) '
                        'and panel/ (A | B | label | prediction)')
    p.add_argument('--output-dir', help='where metrics.json goes without --show-dir (default output_path/<dataset>/)')
    p.add_argument('--amp', default='none', choices=('none', 'fp16', 'bf16'),
                   help='autocast dtype; the original evaluated under fp16 autocast on GPU (default fp32)')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    p.add_argument('--batch-size', type=int, default=16, help='images per forward (original: 16)')
    p.add_argument('--num-workers', type=int,
                   help='data loading processes (default: the CPUs on CUDA, 2 on CPU)')
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.pred_dir is None):
        p.error('give exactly one of --checkpoint (run the model) or --pred-dir (score saved predictions)')
    if args.color and not args.show_dir:
        p.error('--color needs --show-dir')
    if args.batch_size < 1:
        p.error('--batch-size must be >= 1')
    return args


def prediction_name(name):
    """Prediction file for input `name`: same relative path, always .png (lossless)."""
    return str(Path(name).with_suffix('.png'))


def default_workers(device):
    from datasets.loader import cpu_count
    return min(cpu_count(), 16) if device.type == 'cuda' else 2


@torch.inference_mode()
def predict(model, batch, device, amp='none'):
    """{0,1} int64 predictions (N, h, w) on `device`, at the labels' size, for a sub-batch of
    equal image and label shapes (datasets.loader.collate_by_shape)."""
    from datasets import normalize_batch
    imgs = normalize_batch(batch['img'], device)
    with autocast_context(device, amp):
        logits = model(imgs).float()
    size = tuple(batch['label'].shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode='bilinear', align_corners=False)
    return logits.argmax(1)


def pixel_counts(pred, label):
    """(N, 4) int64 [tp, fp, fn, tn] per image on the CPU (counted where `pred` is)."""
    pred = (pred != 0).flatten(1)
    label = (label.to(pred.device, non_blocking=True) != 0).flatten(1)
    tp, fp, fn = (pred & label).sum(1), (pred & ~label).sum(1), (~pred & label).sum(1)
    return torch.stack([tp, fp, fn, pred.shape[1] - tp - fp - fn], 1).cpu()


def image_scores(tp, fp, fn, tn):
    """Precision, recall, F1, IoU of the change class of one image; None where undefined
    (precision without predicted change, recall without true change, F1 and IoU with
    neither: a correct no-change image), so that sorting by F1 finds failures, not these."""
    ratio = lambda num, den: num / den if den else None
    return dict(precision=ratio(tp, tp + fp), recall=ratio(tp, tp + fn),
                f1=ratio(2 * tp, 2 * tp + fp + fn), iou=ratio(tp, tp + fp + fn))


PER_IMAGE_FIELDS = ('name', 'tp', 'fp', 'fn', 'tn', 'precision', 'recall', 'f1', 'iou')


def write_per_image_csv(rows, path):
    """rows: (name, tp, fp, fn, tn) in dataset order -> CSV of PER_IMAGE_FIELDS (atomic)."""
    fmt = lambda v: '' if v is None else f'{v:.6f}'
    with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(PER_IMAGE_FIELDS)
        for name, *counts in rows:
            scores = image_scores(*counts)
            writer.writerow([name, *counts, *(fmt(scores[k]) for k in PER_IMAGE_FIELDS[5:])])


def read_prediction(path, label_shape):
    pred = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pred is None:
        raise EvalError(f'cannot read prediction image {path}')
    if pred.ndim == 3:          # a 3-channel 0/255 PNG (as the original wrote): channel 0
        pred = pred[..., 0]
    if pred.shape != tuple(label_shape):
        raise EvalError(f'prediction {path} is {pred.shape[1]}x{pred.shape[0]} but its label is '
                        f'{label_shape[1]}x{label_shape[0]}')
    return torch.from_numpy(pred != 0)


class LabelsOnly(torch.utils.data.Dataset):
    """The labels of a split without decoding its images (for --pred-dir)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        from datasets import read_label
        label = read_label(self.dataset.paths(index)[2])
        return {'label': torch.from_numpy(label), 'name': self.dataset.names[index]}


class IndexedDataset(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], 'index': index}


def save_visuals(show_dir, dataset, index, name, label, pred, color):
    name = prediction_name(name)
    imwrite_atomic(os.path.join(show_dir, name), mask_to_png(pred))
    if color:
        from datasets import read_pair
        a_path, b_path, _ = dataset.paths(index)
        a, b = read_pair(a_path, b_path)
        imwrite_atomic(os.path.join(show_dir, 'error_map', name), error_map(pred, label))
        imwrite_atomic(os.path.join(show_dir, 'panel', name), panel(a, b, label, pred))


def list_missing(names, limit=5):
    shown = ', '.join(names[:limit])
    return shown + (f' ... ({len(names) - limit} more)' if len(names) > limit else '')


def evaluate(args):
    keep_freed_memory()
    from datasets import ChangeDetectionDataset, get_preset
    from datasets.loader import collate_by_shape, single_thread_opencv

    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise EvalError(f'checkpoint not found: {args.checkpoint} ({DOWNLOAD_HINT})')
    if args.pred_dir and not os.path.isdir(args.pred_dir):
        raise EvalError(f'--pred-dir is not a folder: {args.pred_dir}')
    preset = get_preset(args.dataset, args.data_root)
    if args.dataset == 'custom' and args.checkpoint:   # test at the scale it was trained at
        from utils.checkpoint import with_training_geometry
        preset = with_training_geometry(preset, args.checkpoint)
    # raw: uint8 pairs, normalised on the device by predict()
    dataset = ChangeDetectionDataset(preset, split=args.split, train=False, raw=True)
    if len(dataset) == 0:
        raise EvalError(f'no images in the {args.split} split of {preset.root}')
    if args.pred_dir:
        missing = [prediction_name(n) for n in dataset.names
                   if not (Path(args.pred_dir) / prediction_name(n)).is_file()]
        if missing:
            raise EvalError(f'{len(missing)} of {len(dataset)} predictions missing in {args.pred_dir}: '
                            f'{list_missing(missing)}')
    device = resolve_device(args.device)
    workers = default_workers(device) if args.num_workers is None else args.num_workers
    # Samples carry their index so that panels can find the A/B files.
    indexed = IndexedDataset(LabelsOnly(dataset) if args.pred_dir else dataset)
    single_thread_opencv()       # the workers are the parallelism
    loader = torch.utils.data.DataLoader(
        indexed, batch_size=args.batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate_by_shape, pin_memory=device.type == 'cuda',
        worker_init_fn=single_thread_opencv if workers else None)

    model = None
    if args.checkpoint:
        from models import build_fhd, for_inference, load_checkpoint
        model = build_fhd(backbone=args.backbone)
        load_checkpoint(model, args.checkpoint)
        model = for_inference(model, device=device)
        if device.type == 'cuda':
            torch.backends.cudnn.benchmark = True   # fixed test sizes, as the original

    rows = []          # (index, name, tp, fp, fn, tn)
    with tqdm(total=len(dataset), desc=f'eval {args.dataset}/{args.split}', unit='img',
              dynamic_ncols=True) as progress:
        for batches in loader:
            for batch in batches:
                rows += score_batch(batch, model, device, args, dataset)
                progress.update(len(batch['name']))
    rows.sort()

    confusion = ConfusionMatrix()
    tp, fp, fn, tn = (sum(r[k] for r in rows) for k in range(2, 6))
    confusion.counts += torch.tensor([[tn, fp], [fn, tp]])      # counts[label, pred]
    metrics = confusion.compute()
    out_dir = args.show_dir or args.output_dir or os.path.join('output_path', args.dataset)
    csv_path = os.path.join(out_dir, 'per_image.csv')
    record = {**metrics, 'num_images': len(rows), 'dataset': args.dataset, 'split': args.split,
              'data_root': str(preset.root), 'checkpoint': args.checkpoint, 'pred_dir': args.pred_dir,
              'backbone': args.backbone if args.checkpoint else None, 'amp': args.amp,
              'per_image_csv': csv_path}
    write_per_image_csv([r[1:] for r in rows], csv_path)
    json_path = os.path.join(out_dir, 'metrics.json')
    save_json_atomic(record, json_path)
    print(format_table(metrics, f'{args.dataset} {args.split}: {len(rows)} images'))
    print(f'metrics written to {json_path}, per image to {csv_path}')
    return record


def score_batch(batch, model, device, args, dataset):
    """Predict (or read the saved predictions of) one sub-batch, write its pictures with
    --show-dir, and return its rows (index, name, tp, fp, fn, tn)."""
    if model is not None:
        preds = predict(model, batch, device, args.amp)
    else:
        shape = batch['label'].shape[-2:]
        preds = torch.stack([read_prediction(Path(args.pred_dir) / prediction_name(name), shape)
                             for name in batch['name']])
    counts = pixel_counts(preds, batch['label']).tolist()
    if args.show_dir:
        for index, name, label, pred in zip(batch['index'], batch['name'], batch['label'], preds.cpu()):
            save_visuals(args.show_dir, dataset, index, name, label, pred, args.color)
    return [(index, name, *c) for index, name, c in zip(batch['index'], batch['name'], counts)]


def main(argv=None):
    args = parse_args(argv)
    from datasets import DatasetError
    try:
        from models import CheckpointError
    except ImportError:                      # --pred-dir must work without the model package
        CheckpointError = EvalError
    try:
        evaluate(args)
    except (EvalError, DatasetError, CheckpointError, ValueError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
