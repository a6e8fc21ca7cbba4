"""Fused oneDNN kernels for fp32 CPU inference: the only place the project uses private ops.

``models.inference.for_inference`` decides once, per layer, whether the layer may use a fused
kernel (a CPU target, a torch build that has the ops) and then packs its weight. At each call
the layer still takes the plain op whenever the fused one cannot apply: a CUDA or non-fp32
tensor, autocast, tracing / ONNX export, torch.compile, or an input that needs gradients (the
fused ops have no autograd formula). Both forms compute the same function (tests compare them).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def onednn_available():
    return (torch.backends.mkldnn.is_available()
            and all(hasattr(torch.ops.mkldnn, op) for op in (
                '_convolution_pointwise', '_linear_pointwise', '_reorder_convolution_weight',
                '_reorder_linear_weight')))


def fused_applies(x):
    """May a fused CPU kernel run on ``x`` in the current execution context?"""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and not x.requires_grad
            and not torch.is_autocast_enabled('cpu') and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling())


def _frozen(t):
    return None if t is None else t.detach().clone()


class PackedWeight(nn.Module):
    """Base of the fused layers. The weight is a plain buffer (the module's state: state_dict,
    .to(), the plain-op fallback); when ``fused``, ``packed`` holds it in oneDNN's own blocked
    layout, which spares the reorder oneDNN otherwise does on every call (5-12 % per GEMM or
    conv measured, bitwise the same result). ``packed`` is derived from the buffer, never
    stored: when the layer is built, copied or pickled, and after ``load_state_dict``. The
    layers are frozen (built by the transform, no gradients); edit weights in place and the two
    part ways, so build the module again instead."""

    def __init__(self, weight, bias, fused):
        super().__init__()
        self.register_buffer('weight', _frozen(weight))
        self.register_buffer('bias', _frozen(bias))
        self.fused = fused
        self.packed = None
        self.register_load_state_dict_post_hook(_repack_after_load)

    def pack(self, weight):
        raise NotImplementedError

    def repack(self):
        self.packed = self.pack(self.weight.detach().float().cpu()) if self.fused else None

    def __getstate__(self):                 # copies and pickles carry the plain weight only
        return {**super().__getstate__(), 'packed': None}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.repack()


def _repack_after_load(module, incompatible_keys):
    module.repack()


class Linear(PackedWeight):
    """y = x W^T + b; oneDNN's linear with the packed weight when ``fused`` and the context
    allows."""

    def __init__(self, weight, bias, fused=False):
        super().__init__(weight, bias, fused)
        self.repack()

    def pack(self, weight):
        return torch.ops.mkldnn._reorder_linear_weight(weight)

    def forward(self, x):
        if self.packed is not None and fused_applies(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, 'none', [], '')
        return F.linear(x, self.weight, self.bias)


class Conv2d(PackedWeight):
    """A frozen copy of an ``nn.Conv2d`` (no dilation); oneDNN's conv with the packed weight
    when ``fused`` and the context allows, then the fused ``activation`` ('none', 'relu',
    'gelu': exact)."""

    def __init__(self, weight, bias, stride=1, padding=0, groups=1, activation='none',
                 fused=False):
        super().__init__(weight, bias, fused)
        self.stride, self.padding = _pair(stride), _pair(padding)
        self.groups, self.activation = groups, activation
        self.repack()

    @classmethod
    def of(cls, conv: nn.Conv2d, activation='none', fused=False):
        assert tuple(conv.dilation) == (1, 1) and conv.padding_mode == 'zeros'
        return cls(conv.weight, conv.bias, conv.stride, conv.padding, conv.groups, activation,
                   fused)

    def pack(self, weight):
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, self.padding, self.stride, [1, 1], self.groups)

    def forward(self, x):
        if self.packed is not None and fused_applies(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.packed, self.bias, self.padding, self.stride, [1, 1], self.groups,
                self.activation, [], 'none' if self.activation == 'gelu' else '')
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        if self.activation == 'relu':
            return F.relu(y, inplace=True)
        return F.gelu(y) if self.activation == 'gelu' else y


def Conv1x1ReLU(weight, bias, fused=False):
    """relu(conv1x1(x) + b); conv and ReLU as one oneDNN kernel when ``fused``."""
    return Conv2d(weight, bias, activation='relu', fused=fused)


def DepthwiseConvGELU(conv, fused=False):
    """Exact GELU of a depthwise 3x3 conv; one pass over the MLP's widest activation when
    ``fused`` (GELU in the conv's epilogue)."""
    return Conv2d.of(conv, activation='gelu', fused=fused)


class Conv1x1AddReLU(Conv2d):
    """relu(conv1x1(x) + other): the add and the ReLU in the conv's epilogue when ``fused``
    (``other`` must have the output's shape)."""

    def __init__(self, weight, fused=False):
        super().__init__(weight, None, fused=fused)

    def forward(self, x, other):
        if self.packed is not None and fused_applies(x) and fused_applies(other):
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, self.packed, None, [0, 0], [1, 1], [1, 1], 1, 'add', None, 'relu', [],
                '')
        return F.conv2d(x, self.weight).add_(other).relu_()


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def _linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs):
    rows = 1
    for d in x_shape[:-1]:
        rows *= d
    return 2 * rows * w_shape[0] * w_shape[1]


def _conv_flop(x_shape, *args, out_shape=None, **kwargs):
    """Both overloads: (X, W, B, ...) and .binary (X, other, W, B, ...); FlopCounterMode keys
    formulas by the op packet, so one formula serves both."""
    from torch.utils.flop_counter import conv_flop_count
    binary = isinstance(args[1], (tuple, list, torch.Size)) and len(args[1]) == 4
    return conv_flop_count(x_shape, args[1] if binary else args[0], out_shape)


def flop_formulas():
    """FlopCounterMode formulas of the fused ops (counted as the linear / conv they are)."""
    formulas = {}
    if hasattr(torch.ops.mkldnn, '_linear_pointwise'):
        formulas[torch.ops.mkldnn._linear_pointwise] = _linear_flop
    if hasattr(torch.ops.mkldnn, '_convolution_pointwise'):
        formulas[torch.ops.mkldnn._convolution_pointwise] = _conv_flop
    return formulas
