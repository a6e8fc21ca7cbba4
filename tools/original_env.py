"""Environment for running the ORIGINAL FHD code (ZSVOS/FHD @ f1f55a1) with mmcv 1.3.8's
pure-Python files on a modern torch: call setup(root) before importing mmcv/mmseg.

Compatibility shims (none touches the model code):
  * torch._six: removed from torch >= 2.0; timm 0.3.2's helpers.py imports container_abcs.
  * sys.path: shims/ (stub torchvision, matplotlib, mpl_toolkits; minimal timm), site/
    (pip-installed addict 2.4.0, yapf 0.43.0), mmcv_src/ (mmcv v1.3.8 tag, no compiled _ext),
    FHD/ (the original repo at f1f55a1).
"""
import collections.abc
import os
import sys
import types

import torch


def add_paths(root):
    """root/{shims,site,mmcv_src,FHD} in front of sys.path (see docs/performance.md)."""
    for p in reversed(['shims', 'site', 'mmcv_src', 'FHD']):
        p = os.path.join(root, p)
        if p not in sys.path:
            sys.path.insert(0, p)


if 'torch._six' not in sys.modules:
    six = types.ModuleType('torch._six')
    six.container_abcs = collections.abc
    six.string_classes = (str, bytes)
    six.int_classes = int
    six.inf = float('inf')
    sys.modules['torch._six'] = six
    torch._six = six


def setup(root):
    add_paths(root)
    register_syncbn_standin()


def register_syncbn_standin():
    """SHIM: 'SyncBN' -> a BatchNorm2d subclass (same maths on one process; this is what the
    recorded reference case did). mmcv 1.3.8's build_norm_layer calls
    layer._specify_ddp_gpu_num(1) for SyncBN, a method torch removed; the stand-in has it as a
    no-op. Module names (infer_abbr -> 'bn') and state_dict keys are unchanged."""
    import torch.nn as nn
    from mmcv.cnn.bricks.norm import NORM_LAYERS

    class SyncBNStandIn(nn.BatchNorm2d):
        def _specify_ddp_gpu_num(self, gpu_size):
            pass

    NORM_LAYERS.register_module('SyncBN', module=SyncBNStandIn, force=True)


