"""Data-loader throughput of the training pipeline.

    python -m datasets.bench [--size 256] [--workers 2] [--batch-size 16] [--batches 20]

generates a small synthetic set of `size` px pairs in a temporary folder (scale = crop = size)
and prints pairs/s of the train pipeline (decode + augment + normalize + collate).
"""
import argparse
import dataclasses
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from .cd_dataset import ChangeDetectionDataset
from .presets import get_preset
from .sampler import TrainSampler


def measure_loader_throughput(preset=None, num_workers=2, n_batches=20, batch_size=16, warmup=2,
                              seed=1208, size=256, pairs=64):
    """Pairs per second delivered by a DataLoader over `preset`'s train split.

    `preset`: a Preset, a preset name, or None for `pairs` generated `size`-px pairs in a
    temporary folder (scale = crop = size). The first `warmup` batches (worker start-up) are
    not timed.
    """
    if preset is None:
        from .synthetic import generate
        with tempfile.TemporaryDirectory() as root:
            generate(root, seed=0, counts={'train': pairs}, size=size)
            preset = dataclasses.replace(get_preset('custom', data_root=root),
                                         scale=size, crop=size)
            return measure_loader_throughput(preset, num_workers, n_batches, batch_size,
                                             warmup, seed)
    if isinstance(preset, str):
        preset = get_preset(preset)
    dataset = ChangeDetectionDataset(preset, 'train', train=True, seed=seed)
    sampler = TrainSampler(len(dataset), batch_size, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    elapsed = time.perf_counter() - start
    del batches                                   # stops the workers
    return n_batches * batch_size / elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--pairs', type=int, default=64, help='pairs to generate')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rate = measure_loader_throughput(None, args.workers, args.batches, args.batch_size,
                                     size=args.size, pairs=args.pairs)
    print(f'train pipeline at {args.size}px, {args.workers} workers, batch {args.batch_size}: '
          f'{rate:.1f} pairs/s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
