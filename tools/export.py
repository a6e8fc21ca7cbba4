"""Export the inference model (all folds applied) to ONNX or TorchScript.

    python tools/export.py --checkpoint model_ckpt/levir.pth --format onnx --out fhd_levir.onnx
    python tools/export.py --checkpoint model_ckpt/levir.pth --format torchscript --out fhd_levir.pt

Input `pair`: float32 (batch, 6, height, width), A's RGB then B's RGB, normalized as the
datasets do (see datasets.normalize_pair); batch is dynamic, height and width any multiples of
32. Output `logits`: (batch, 2, height, width); argmax over dim 1 is the change mask. The file is
checked after export (ONNX Runtime, or the loaded TorchScript module, against PyTorch on two
input shapes) and written under a temporary name, renamed only when the check passed.
"""
import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from models import CheckpointError, build_fhd, for_inference, load_checkpoint  # noqa: E402
from utils.fileio import atomic_path  # noqa: E402

EXIT_BAD_INPUT = 2
CHECK_TOLERANCE = 1e-4    # max |exported - PyTorch| / max |PyTorch|


class ExportError(Exception):
    """A user-facing problem; printed as one line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--checkpoint', help="weights (original release or this project's); "
                   "'none' exports random weights (for tests and timing)")
    p.add_argument('--backbone', default='mit_b2')
    p.add_argument('--format', required=True, choices=('onnx', 'torchscript'))
    p.add_argument('--out', required=True, help='output file')
    p.add_argument('--size', type=int, nargs=2, default=(256, 256), metavar=('H', 'W'),
                   help='example input used for tracing (any multiple of 32 works afterwards)')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--no-check', action='store_true', help='skip the check against PyTorch')
    args = p.parse_args(argv)
    if args.checkpoint is None:
        p.error('--checkpoint is required (or --checkpoint none for random weights)')
    if any(s <= 0 or s % 32 for s in args.size):
        p.error(f'--size must be positive multiples of 32, got {args.size[0]} {args.size[1]}')
    return args


def build_inference_model(checkpoint, backbone):
    model = build_fhd(backbone=backbone)
    if checkpoint.lower() != 'none':
        if not os.path.isfile(checkpoint):
            raise ExportError(f'--checkpoint {checkpoint}: file not found')
        load_checkpoint(model, checkpoint)
    # plain ops only: the fused CPU kernels are private torch ops no exporter knows
    return for_inference(model, device='cpu', kernels='plain', fold_attention=True)


def export_onnx(net, example, path, opset):
    dynamic = {0: 'batch', 2: 'height', 3: 'width'}
    with warnings.catch_warnings():
        # the TorchScript-based exporter: dynamic height/width without onnxscript
        warnings.simplefilter('ignore')
        torch.onnx.export(net, (example,), path, dynamo=False, opset_version=opset,
                          input_names=['pair'], output_names=['logits'],
                          dynamic_axes={'pair': dynamic, 'logits': dynamic})


def export_torchscript(net, example, path):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')      # shape-dependent Python branches are constant
        traced = torch.jit.trace(net, example, check_trace=False)
    traced.save(path)


def run_exported(fmt, path, x):
    if fmt == 'onnx':
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        return torch.from_numpy(session.run(None, {'pair': x.numpy()})[0])
    with torch.no_grad():
        return torch.jit.load(path)(x)


def check_exported(net, fmt, path, size):
    """Largest relative error of the exported file against PyTorch on two shapes."""
    h, w = size
    worst = 0.0
    for shape in ((1, 6, h, w), (2, 6, h + 32, w + 64)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            ref = net(x)
        out = run_exported(fmt, path, x)
        if out.shape != ref.shape:
            raise ExportError(f'{path}: output shape {tuple(out.shape)} for input {shape}, '
                              f'expected {tuple(ref.shape)}')
        worst = max(worst, ((out - ref).abs().max() / ref.abs().max()).item())
    return worst


def export(args):
    net = build_inference_model(args.checkpoint, args.backbone)
    example = torch.randn(1, 6, *args.size, generator=torch.Generator().manual_seed(0))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise ExportError(f'--out {args.out}: folder {out_dir} does not exist')
    with atomic_path(args.out) as tmp:
        if args.format == 'onnx':
            export_onnx(net, example, tmp, args.opset)
        else:
            export_torchscript(net, example, tmp)
        if not args.no_check:
            err = check_exported(net, args.format, tmp, args.size)
            if err > CHECK_TOLERANCE:
                raise ExportError(f'{args.out}: exported model differs from PyTorch by {err:.2e} '
                                  f'(relative), more than {CHECK_TOLERANCE:.0e}; not written')
            print(f'check: exported == PyTorch within {err:.2e} (relative) on two input shapes')
    print(f'wrote {args.out} ({os.path.getsize(args.out) / 2 ** 20:.1f} MiB, {args.format})')


def main(argv=None):
    args = parse_args(argv)
    try:
        export(args)
    except (ExportError, CheckpointError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as err:
        print(f'error: {err.name} is needed to check an ONNX export '
              f'(pip install onnxruntime), or pass --no-check', file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == '__main__':
    sys.exit(main())
