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


class Linear(nn.Linear):
    """nn.Linear with the bias added to the product in place, after it. The same function; on
    CPU, addmm (copy the bias into the output, then accumulate the product into it) is up to
    1.2x slower for the encoder's thin products (64 input channels at stage 1)."""

    def forward(self, x):
        return F.linear(x, self.weight).add_(self.bias)


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
        self.q = Linear(dim, dim)
        self.kv = Linear(dim, 2 * dim)
        self.proj = Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=EMBED_NORM_EPS)

    def keys_values(self, x, h, w):
        """(B, heads, m, head_dim) keys and values of the m reduced tokens."""
        b, _, c = x.shape
        if self.sr_ratio > 1:
            x = self.sr_norm(self.sr(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2))
        kv = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads)
        return kv.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x, h, w):
        b, n, c = x.shape
        k, v = self.keys_values(x, h, w)
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)   # default scale = head_dim ** -0.5
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv (positional information) -> exact GELU -> fc2."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim)
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x, h, w):
        # GELU on the (B, hw, C) token view, not the 4-D map: the same dense channels-last
        # memory, but CPU elementwise kernels run it 1.3-1.8x faster as a 3-D tensor
        x = self.dwconv(tokens_to_map(self.fc1(x), h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class MiTBlock(nn.Module):
    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path_prob):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path_prob)

    def forward(self, x, h, w):
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
