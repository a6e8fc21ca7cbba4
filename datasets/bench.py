"""Throughput of the training data pipeline, per stage and through a DataLoader.

    python -m datasets.bench [--case levir dsifn] [--workers 1 2] [--batches 20] [--json PATH]

Cases (generated pairs in a temporary folder, page-cached): `levir` 256 px PNG tiles, scale =
crop = 256; `dsifn` 512 px JPEG images, scale 512, crop 384 (DSIFN's preset). For each: the
per-stage time of the train pipeline in this process (OpenCV single-threaded, as in a worker),
then pairs/s through a DataLoader for each worker count: wall-clock, per worker, and per
CPU-second of the workers (the figure that does not depend on what else runs on the machine).
The batches are what training receives: uint8 pairs, normalised later on the device.
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

from .cd_dataset import ChangeDetectionDataset, read_label, read_pair
from .loader import single_thread_opencv
from .presets import get_preset
from .sampler import TrainSampler
from . import transforms as T

CASES = {'levir': dict(size=256, crop=256, img_suffix='.png'),
         'dsifn': dict(size=512, crop=384, img_suffix='.jpg')}
STAGES = ('decode A+B', 'decode label', 'resize', 'crop box', 'photometric A+B', 'flip+pad')


def generated_preset(root, size, crop, img_suffix='.png', pairs=64):
    """`pairs` generated train pairs of `size` px in `root`, as a preset (scale = size)."""
    from .synthetic import generate
    generate(root, seed=0, counts={'train': pairs}, size=size, img_suffix=img_suffix)
    return dataclasses.replace(get_preset('custom', data_root=root), scale=size, crop=crop)


def timed_sample(dataset, index, stream_id, times):
    """train_pipeline of one sample, stage by stage, adding seconds per stage to `times`.
    Same calls in the same order as ChangeDetectionDataset + train_pipeline (tested)."""
    clock = [time.perf_counter()]

    def lap(stage):
        now = time.perf_counter()
        times[stage] = times.get(stage, 0.0) + now - clock[0]
        clock[0] = now

    a_path, b_path, label_path = dataset.paths(index)
    a, b = read_pair(a_path, b_path)
    lap('decode A+B')
    label = read_label(label_path, a.shape)
    lap('decode label')
    rng = np.random.default_rng([dataset.seed, stream_id])
    preset = dataset.preset
    height, width = T.draw_rescale_size(*label.shape, rng, preset.scale)
    a, b = T.resize_pair(a, b, height, width)
    label = T.resize(label, height, width, nearest=True)
    lap('resize')
    top, left = T.random_crop_box(label, rng, preset.crop)
    box = np.s_[top:top + preset.crop, left:left + preset.crop]
    flip = rng.random() < 0.5
    lap('crop box')
    a, b = T.photometric_distortion(a[box], rng), T.photometric_distortion(b[box], rng)
    lap('photometric A+B')
    out = T.flip_and_pad([a, b], label[box], preset.crop, flip)
    lap('flip+pad')
    return out


def profile_stages(dataset, n=200):
    """Mean milliseconds per pair of each stage over `n` samples (single-threaded OpenCV)."""
    single_thread_opencv()
    times = {}
    for i in range(n):
        timed_sample(dataset, i % len(dataset), i, times)
    return {stage: 1e3 * times[stage] / n for stage in STAGES}


def _cpu_seconds(pid):
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def loader_figures(dataset, num_workers, n_batches=20, batch_size=16, warmup=2):
    """Pairs/s of a DataLoader over `dataset`: wall, per worker, per worker CPU-second.

    The first `warmup` batches (worker start-up) are not timed. With 0 workers the pipeline
    runs in this process and counts as one worker.
    """
    from .loader import train_loader
    sampler = TrainSampler(len(dataset), batch_size, seed=dataset.seed)
    loader = train_loader(dataset, sampler, batch_size, num_workers)
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    pids = [w.pid for w in getattr(batches, '_workers', [])] or [os.getpid()]
    cpu0 = sum(_cpu_seconds(p) for p in pids)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    wall = time.perf_counter() - start
    cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
    del batches                                   # stops the workers
    pairs = n_batches * batch_size
    return dict(workers=num_workers, pairs_per_s=pairs / wall,
                pairs_per_s_per_worker=pairs / wall / max(num_workers, 1),
                pairs_per_worker_cpu_s=pairs / cpu if cpu > 0 else None)


def measure_loader_throughput(preset=None, num_workers=2, n_batches=20, batch_size=16, warmup=2,
                              seed=1208, size=256, pairs=64, crop=None, img_suffix='.png'):
    """Pairs per second (wall) delivered by the training DataLoader over `preset`'s train split.

    `preset`: a Preset, a preset name, or None for `pairs` generated `size`-px pairs in a
    temporary folder (scale = size, crop = `crop` or size).
    """
    if preset is None:
        with tempfile.TemporaryDirectory() as root:
            preset = generated_preset(root, size, crop or size, img_suffix, pairs)
            return measure_loader_throughput(preset, num_workers, n_batches, batch_size,
                                             warmup, seed)
    if isinstance(preset, str):
        preset = get_preset(preset)
    dataset = ChangeDetectionDataset(preset, 'train', train=True, seed=seed)
    return loader_figures(dataset, num_workers, n_batches, batch_size, warmup)['pairs_per_s']


def normalize_ms(batch_size, crop, device='cpu', repeats=5):
    """Milliseconds of normalize_batch for one uint8 batch (on the CPU: for reference only)."""
    pairs = torch.randint(0, 256, (batch_size, 2, crop, crop, 3), dtype=torch.uint8)
    valid = torch.tensor([[crop, crop]] * batch_size)
    T.normalize_batch(pairs, device, valid)
    start = time.perf_counter()
    for _ in range(repeats):
        T.normalize_batch(pairs, device, valid)
    return 1e3 * (time.perf_counter() - start) / repeats


def run_case(name, workers, n_batches, batch_size, profile_pairs):
    case = CASES[name]
    with tempfile.TemporaryDirectory() as root:
        preset = generated_preset(root, **case)
        dataset = ChangeDetectionDataset(preset, 'train', train=True)
        stages = profile_stages(dataset, profile_pairs)
        loaders = [loader_figures(dataset, w, n_batches, batch_size)
                   for w in tqdm(workers, desc=f'{name} loaders', leave=False)]
    return dict(case=name, **case, batch_size=batch_size, stages_ms=stages, pipeline_ms=sum(stages.values()),
                pairs_per_s_in_process=1e3 / sum(stages.values()), loaders=loaders,
                normalize_batch_cpu_ms=normalize_ms(batch_size, case['crop']))


def print_case(r):
    print(f"{r['case']}: {r['size']} px {r['img_suffix']} -> crop {r['crop']}; per stage "
          f"(ms/pair, one process, OpenCV single-threaded):")
    for stage, ms in r['stages_ms'].items():
        print(f'  {stage:16s} {ms:7.3f}')
    print(f"  {'total':16s} {r['pipeline_ms']:7.3f}  = {r['pairs_per_s_in_process']:.0f} pairs/s")
    for f in r['loaders']:
        cpu = f['pairs_per_worker_cpu_s']
        print(f"  DataLoader {f['workers']} worker(s): {f['pairs_per_s']:6.1f} pairs/s, "
              f"{f['pairs_per_s_per_worker']:6.1f} per worker, "
              + (f'{cpu:6.1f} per worker CPU-second' if cpu else 'CPU time not measured'))
    print(f"  normalize_batch of a batch of {r['batch_size']} on this CPU: "
          f"{r['normalize_batch_cpu_ms']:.1f} ms (training on a GPU does it there)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--case', nargs='+', choices=sorted(CASES), default=['levir', 'dsifn'])
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--profile-pairs', type=int, default=200)
    parser.add_argument('--json', help='also write the figures here')
    args = parser.parse_args(argv)
    if min(args.workers) < 0 or args.batches < 1 or args.batch_size < 1:
        print('error: --workers must be >= 0, --batches and --batch-size >= 1', file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    results = [run_case(c, args.workers, args.batches, args.batch_size, args.profile_pairs)
               for c in args.case]
    for r in results:
        print_case(r)
    if args.json:
        from utils.metrics import save_json_atomic
        save_json_atomic(dict(load_average=os.getloadavg(), cases=results), args.json)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
