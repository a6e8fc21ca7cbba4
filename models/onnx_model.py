"""An exported FHD (tools/export.py) run by ONNX Runtime, callable like the PyTorch module.

ONNX Runtime is optional: it is imported only when a file is opened, and a missing package is a
one-line error.
"""
import os

import torch

from .checkpoint import CheckpointError


class OnnxFHD:
    """(B, 6, H, W) float32 tensor -> (B, 2, H, W) logits tensor, on the CPU."""

    def __init__(self, path, threads=None):
        if not os.path.isfile(path):
            raise CheckpointError(f'--onnx {path}: file not found (export one with tools/export.py)')
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError('--onnx needs ONNX Runtime: pip install onnxruntime') from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
            raise CheckpointError(f'--onnx {path}: not a readable ONNX model ({type(e).__name__})') from None
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ['pair']:
            raise CheckpointError(f'--onnx {path}: expected one input named "pair" (an FHD export '
                                  f'of tools/export.py), found {inputs}')
        self.path = path

    def __call__(self, x):
        if x.device.type != 'cpu':
            raise ValueError('--onnx runs on the CPU; use --device cpu')
        pair = x.detach().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {'pair': pair})[0])

    def eval(self):
        return self
