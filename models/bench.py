"""Reference path vs inference module: size, FLOPs and eval-forward time.

    python -m models.bench [--backbone mit_b2] [--batch-sizes 1 8] [--runs 10] [--threads 2]
"""
import argparse
import sys

import torch

from .cost import benchmark_forward, format_benchmark, model_cost
from .fhd import build_fhd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backbone', default='mit_b2')
    parser.add_argument('--size', type=int, nargs=2, default=(256, 256), metavar=('H', 'W'))
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    try:
        model = build_fhd(args.backbone)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from utils.runtime import keep_freed_memory     # as train/eval/infer do
    keep_freed_memory()
    cost = model_cost(model, size=tuple(args.size))
    print(f'FHD-{args.backbone}: {cost["params"]:,} parameters')
    print(f'GFLOPs per pair at {args.size[0]}x{args.size[1]}: reference '
          f'{cost["flops_reference"] / 1e9:.2f}, folded (training) {cost["flops_folded"] / 1e9:.2f}, '
          f'inference {cost["flops_inference"] / 1e9:.2f}')
    results = benchmark_forward(model, args.batch_sizes, tuple(args.size), args.runs,
                                args.warmup, args.threads)
    print(format_benchmark(results, tuple(args.size), args.threads))
    return 0


if __name__ == '__main__':
    sys.exit(main())
