"""Mix Vision Transformer (MiT), the SegFormer encoder, written from its description.

Numerically equal to the MiT used by the original FHD code: overlapping patch embeddings,
efficient self-attention with spatial reduction, Mix-FFN with a depthwise 3x3 conv, and the
original LayerNorm eps split (1e-6 in blocks and stage outputs, 1e-5 in the patch-embedding
and spatial-reduction norms).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class MiTConfig:
    embed_dims: tuple
    depths: tuple
    num_heads: tuple = (1, 2, 5, 8)
    sr_ratios: tuple = (8, 4, 2, 1)
    mlp_ratio: int = 4


MIT_VARIANTS = {
    'mit_b0': MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    'mit_b1': MiTConfig(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    'mit_b2': MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    'mit_b3': MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    'mit_b4': MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    'mit_b5': MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}

BLOCK_NORM_EPS = 1e-6   # block norms and stage-output norms (SegFormer's norm_layer)
EMBED_NORM_EPS = 1e-5   # patch-embedding and spatial-reduction norms (nn.LayerNorm default)


def drop_path(x, drop_prob, training):
    """Stochastic depth per sample, rescaled by 1/keep_prob."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = torch.floor(keep_prob + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1),
                                              dtype=x.dtype, device=x.device))
    return x.div(keep_prob) * mask


class DropPath(nn.Module):
    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob:.4f}'


def tokens_to_map(x, h, w):
    """(B, h*w, C) tokens -> (B, C, h, w) map: a free view with channels-last strides, as the
    original's ``transpose(1, 2).view(B, C, H, W)`` is. oneDNN convs take it as is, and
    ``flatten(2).transpose(1, 2)`` of their channels-last output is again a free view."""
    b, _, c = x.shape
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


def _onednn_ops_available():
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, '_convolution_pointwise')
            and hasattr(torch.ops.mkldnn, '_linear_pointwise'))


ONEDNN_FUSED_OPS = _onednn_ops_available()
# oneDNN's linear beats addmm here for maps with a side of at most 320 features (stages 1-3,
# decoder levels 1-3); for stage 4's 512/2048-wide maps it is as fast or slower.
ONEDNN_LINEAR_MAX_SIDE = 320


def can_use_onednn_fused(x):
    """oneDNN's fused kernels have no autograd formula: use them only in fp32 CPU inference,
    outside autocast and torch.compile (which does its own fusion)."""
    return (ONEDNN_FUSED_OPS and x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled('cpu')
            and not torch.compiler.is_compiling())


def conv_gelu(x, conv):
    """gelu(conv(x)) in one pass over the output (saves a read and a write of the MLP's widest
    activation, 4x the block width)."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
        'gelu', [], 'none')


def conv1x1_relu(x, weight, bias):
    """relu(conv2d(x, weight, bias)) of a 1x1 conv in one oneDNN kernel (ReLU in the epilogue)."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [0, 0], [1, 1], [1, 1], 1, 'relu', [], '')


def linear(x, weight, bias, fast):
    """F.linear; in fast inference, maps with a side of <= ONEDNN_LINEAR_MAX_SIDE features go to
    oneDNN, which adds the bias in the GEMM's epilogue instead of first copying it over the whole
    output as addmm does (1.05-1.4x faster for those shapes here)."""
    if fast and min(weight.shape) <= ONEDNN_LINEAR_MAX_SIDE and can_use_onednn_fused(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')
    return F.linear(x, weight, bias)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows, then LayerNorm over channels."""

    def __init__(self, in_chans, embed_dim, kernel_size, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=EMBED_NORM_EPS)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced token map."""

    def __init__(self, dim, num_heads, sr_ratio):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        self.fast = False   # set by FHD.fast: fused oneDNN kernels in inference
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=EMBED_NORM_EPS)

    def forward(self, x, h, w):
        b, n, c = x.shape
        head_dim = c // self.num_heads
        if self.sr_ratio > 1:
            reduced = self.sr_norm(self.sr(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2))
        else:
            reduced = x
        k, v = self.kv(reduced).reshape(b, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        if self.fast and self._fold_pays(x, k.shape[2]):
            return self._folded_attention(x, k, v)
        q = linear(x, self.q.weight, self.q.bias, self.fast)
        q = q.reshape(b, n, self.num_heads, head_dim).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)   # default scale = head_dim ** -0.5
        x = x.transpose(1, 2).reshape(b, n, c)
        return linear(x, self.proj.weight, self.proj.bias, self.fast)

    def _fold_pays(self, x, num_keys):
        """CPU inference, and the folded form needs fewer multiply-adds: per image
        H*n*m*C + m*C^2 (folded) against n*C^2 + n*m*C (q projection + attention scores; the
        value side is the same), n queries, m keys. True at 256x256 for stages 1 and 2."""
        if torch.is_grad_enabled() or x.device.type != 'cpu':
            return False
        n, c = x.shape[1], x.shape[2]
        return self.num_heads * n * num_keys + num_keys * c < n * c + n * num_keys

    def _folded_attention(self, x, k, v):
        """The same attention with the q and output projections folded into the keys and values
        (all maps are linear): scores_h = x (Wq_h^T k_h^T s) + bq_h k_h^T s, and
        proj(concat_h(a_h v_h)) = sum_h a_h (v_h Wp_h^T) + bp. When the keys are few (spatial
        reduction) this replaces the two C x C projections of every query token by m x C work
        per image; the per-head score bias goes to SDPA as an additive mask."""
        b, n, c = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        k = k * head_dim ** -0.5
        keys = torch.einsum('hdc,bhjd->bhjc', self.q.weight.view(heads, head_dim, c), k)
        score_bias = torch.einsum('hd,bhjd->bhj', self.q.bias.view(heads, head_dim), k)
        values = torch.einsum('bhjd,ohd->bhjo', v, self.proj.weight.view(c, heads, head_dim))
        out = F.scaled_dot_product_attention(x.unsqueeze(1).expand(b, heads, n, c), keys, values,
                                             attn_mask=score_bias.unsqueeze(2), scale=1.0)
        out = out.squeeze(1) if heads == 1 else out.sum(1)
        return out.add_(self.proj.bias)


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv (positional information) -> exact GELU -> fc2."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.fast = False   # set by FHD.fast: fused oneDNN kernels in inference

    def forward(self, x, h, w):
        x = tokens_to_map(linear(x, self.fc1.weight, self.fc1.bias, self.fast), h, w)
        if self.fast and can_use_onednn_fused(x):
            x = conv_gelu(x, self.dwconv)
        else:
            x = F.gelu(self.dwconv(x))
        return linear(x.flatten(2).transpose(1, 2), self.fc2.weight, self.fc2.bias, self.fast)


class MiTBlock(nn.Module):
    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path_prob):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path_prob)

    def forward(self, x, h, w):
        if self.attn.fast and not self.training and can_use_onednn_fused(x):
            # inference: add the residual into the branch's fresh output (no new tensor;
            # a + b == b + a bitwise)
            x = self.attn(self.norm1(x), h, w).add_(x)
            return self.mlp(self.norm2(x), h, w).add_(x)
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MiTStage(nn.Module):
    def __init__(self, in_chans, dim, depth, num_heads, sr_ratio, mlp_ratio, drop_path_probs,
                 first):
        super().__init__()
        kernel, stride = (7, 4) if first else (3, 2)
        self.patch_embed = OverlapPatchEmbed(in_chans, dim, kernel, stride)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, sr_ratio, mlp_ratio, p) for p in drop_path_probs)
        self.norm = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)

    def forward(self, x):
        x, h, w = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return tokens_to_map(self.norm(x), h, w)


class MixVisionTransformer(nn.Module):
    """Returns the 4 stage outputs at strides 4/8/16/32."""

    def __init__(self, cfg: MiTConfig, in_chans=3, drop_path_rate=0.1):
        super().__init__()
        self.embed_dims = tuple(cfg.embed_dims)
        # stochastic depth rate grows linearly over all blocks of all stages
        probs = torch.linspace(0, drop_path_rate, sum(cfg.depths)).tolist()
        self.stages = nn.ModuleList()
        start = 0
        for i, (dim, depth) in enumerate(zip(cfg.embed_dims, cfg.depths)):
            self.stages.append(MiTStage(
                in_chans if i == 0 else cfg.embed_dims[i - 1], dim, depth, cfg.num_heads[i],
                cfg.sr_ratios[i], cfg.mlp_ratio, probs[start:start + depth], first=i == 0))
            start += depth
        self.apply(_init_mit_weights)

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _init_mit_weights(m):
    # SegFormer's initialisation: trunc-normal linears, unit LayerNorms, He-normal convs (fan-out)
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_mit(name='mit_b2', drop_path_rate=0.1):
    if name not in MIT_VARIANTS:
        raise ValueError(f"backbone: unknown MiT variant {name!r}; choose one of "
                         f"{', '.join(MIT_VARIANTS)}")
    return MixVisionTransformer(MIT_VARIANTS[name], drop_path_rate=drop_path_rate)
