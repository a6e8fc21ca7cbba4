"""Fused oneDNN kernels for fp32 CPU inference: the only place the project uses private ops.

``models.inference.for_inference`` decides once, per layer, whether the layer may use a fused
kernel (a CPU target, a torch build that has the op, a shape where it measured faster). At each
call the layer still takes the plain op whenever the fused one cannot apply: a CUDA or non-fp32
tensor, autocast, tracing / ONNX export, torch.compile, or an input that needs gradients (the
fused ops have no autograd formula). Both forms compute the same function (tests compare them).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# oneDNN's linear beats addmm here for weights with a side of at most 320 features (stages 1-3,
# decoder levels 1-3): it adds the bias in the GEMM's epilogue instead of first copying it over
# the whole output (1.05-1.4x per GEMM measured); for stage 4's 512/2048-wide maps it is as fast
# or slower.
LINEAR_MAX_SIDE = 320


def onednn_available():
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, '_convolution_pointwise')
            and hasattr(torch.ops.mkldnn, '_linear_pointwise'))


def fused_applies(x):
    """May a fused CPU kernel run on ``x`` in the current execution context?"""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and not x.requires_grad
            and not torch.is_autocast_enabled('cpu') and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling())


def _frozen(t):
    return None if t is None else t.detach().clone()


class Linear(nn.Module):
    """y = x W^T + b; oneDNN's linear when ``fused`` and the context allows."""

    def __init__(self, weight, bias, fused=False):
        super().__init__()
        self.register_buffer('weight', _frozen(weight))
        self.register_buffer('bias', _frozen(bias))
        self.fused = fused and min(weight.shape) <= LINEAR_MAX_SIDE

    def forward(self, x):
        if self.fused and fused_applies(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, 'none', [], '')
        return F.linear(x, self.weight, self.bias)


class Conv1x1ReLU(nn.Module):
    """relu(conv1x1(x) + b); conv and ReLU as one oneDNN kernel when ``fused``."""

    def __init__(self, weight, bias, fused=False):
        super().__init__()
        self.register_buffer('weight', _frozen(weight))
        self.register_buffer('bias', _frozen(bias))
        self.fused = fused

    def forward(self, x):
        if self.fused and fused_applies(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, [0, 0], [1, 1], [1, 1], 1, 'relu', [], '')
        return F.relu(F.conv2d(x, self.weight, self.bias), inplace=True)


class Conv1x1AddReLU(nn.Module):
    """relu(conv1x1(x) + other): the add and the ReLU in the conv's epilogue when ``fused``
    (``other`` must have the output's shape)."""

    def __init__(self, weight, fused=False):
        super().__init__()
        self.register_buffer('weight', _frozen(weight))
        self.fused = fused

    def forward(self, x, other):
        if self.fused and fused_applies(x) and fused_applies(other):
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, self.weight, None, [0, 0], [1, 1], [1, 1], 1, 'add', None, 'relu', [], '')
        return F.conv2d(x, self.weight).add_(other).relu_()


class DepthwiseConvGELU(nn.Module):
    """Exact GELU of a depthwise 3x3 conv; one pass over the MLP's widest activation when
    ``fused`` (GELU in the conv's epilogue)."""

    def __init__(self, conv, fused=False):
        super().__init__()
        self.register_buffer('weight', _frozen(conv.weight))
        self.register_buffer('bias', _frozen(conv.bias))
        self.padding, self.groups = list(conv.padding), conv.groups
        self.fused = fused

    def forward(self, x):
        if self.fused and fused_applies(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, [1, 1], [1, 1], self.groups,
                'gelu', [], 'none')
        return F.gelu(F.conv2d(x, self.weight, self.bias, 1, self.padding, 1, self.groups))


def add_relu_(total, other, fused=False):
    """relu(total + other) written into ``total``: one pass over the map on fp32 CPU."""
    if fused and fused_applies(total) and fused_applies(other):
        return torch.ops.aten._add_relu_(total, other)
    return total.add_(other).relu_()


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
