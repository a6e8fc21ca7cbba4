"""FHD: Feature Hierarchical Differentiation for change detection (Pei & Zhang, GRSL 2022).

Written to compute exactly what the original code computes (not the paper figure): the ReLU
after the mask conv, the extra ReLUs in the differentiation branches, the factor 2 in
D = 2*I_a*w + 2*I_b*(1-w), the [context, features] and [level4..level1] concatenation orders,
16 inner channels everywhere and separate weights for the two dates.

Two orders of computation share one set of weights (``fold_decoder``):
* reference: project every level to 768 channels, upsample, concatenate (3072 channels) and
  apply the 1x1 fuse conv, as the original does;
* folded (default): projection, bilinear upsampling and the fuse conv are all linear, so the fuse
  conv's slice for each level is folded into that level's projection and applied at the level's
  own resolution before upsampling (bilinear weights sum to one, so biases pass through). This
  removes the 3072->768 conv at 1/4 resolution (19.3 of 38.2 GFLOPs per 256x256 pair). The fold
  is the same differentiable function of the weights, recomputed at every call.

Inference-only rewrites (BN folds, fused CPU kernels, the attention fold) are not here: they
are built from a trained model by ``models.inference.for_inference``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .mit import build_mit

INNER_CHANNELS_DIVISOR = 16   # the original uses r = C // 16 and inner width C // r (= 16)


class ConvBNReLU(nn.Module):
    """1x1 conv without bias -> BatchNorm -> ReLU (mmcv ConvModule with a norm)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TimeSpecificMask(nn.Module):
    """TSM: two unsupervised pseudo-class maps per date, 1x1 conv with bias, then ReLU."""

    def __init__(self, channels, num_maps=2):
        super().__init__()
        self.conv = nn.Conv2d(channels, num_maps, 1)

    def forward(self, x):
        return F.relu(self.conv(x))


def time_specific_context(features, masks):
    """TSC: one context vector per mask, averaging features with a spatial softmax of the mask.

    features (B,C,h,w), masks (B,K,h,w) -> (B,C,K,1)
    """
    weights = masks.flatten(2).softmax(dim=2)                       # (B,K,hw)
    context = torch.matmul(weights, features.flatten(2).transpose(1, 2))   # (B,K,C)
    return context.transpose(1, 2).unsqueeze(3)


class TimeSpecificAggregation(nn.Module):
    """TSA: pixels (queries) attend to their own date's K context vectors, then a
    bottleneck over [attended context, features]."""

    def __init__(self, channels, inner):
        super().__init__()
        self.inner = inner
        self.query_proj = nn.Sequential(ConvBNReLU(channels, inner), ConvBNReLU(inner, inner))
        self.key_proj = nn.Sequential(ConvBNReLU(channels, inner), ConvBNReLU(inner, inner))
        self.value_proj = ConvBNReLU(channels, inner)
        self.out_proj = ConvBNReLU(inner, channels)
        self.bottleneck = ConvBNReLU(2 * channels, channels)

    def forward(self, features, context):
        b, _, h, w = features.shape
        query = self.query_proj(features).flatten(2).transpose(1, 2)    # (B,hw,inner)
        key = self.key_proj(context).flatten(2)                         # (B,inner,K)
        value = self.value_proj(context).flatten(2).transpose(1, 2)     # (B,K,inner)
        attn = (torch.matmul(query, key) * self.inner ** -0.5).softmax(dim=-1)
        attended = torch.matmul(attn, value).transpose(1, 2).reshape(b, self.inner, h, w)
        return self.bottleneck(torch.cat([self.out_proj(attended), features], dim=1))


class GateBranch(nn.Module):
    """conv-ReLU-BN-ReLU-conv-ReLU-BN (the original's ConvModules add a ReLU before each BN)."""

    def __init__(self, channels, inner):
        super().__init__()
        self.reduce = nn.Conv2d(channels, inner, 1)
        self.reduce_norm = nn.BatchNorm2d(inner)
        self.expand = nn.Conv2d(inner, channels, 1)
        self.expand_norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        x = F.relu(self.reduce_norm(F.relu(self.reduce(x))))
        return self.expand_norm(F.relu(self.expand(x)))


class HierarchicalDifferentiation(nn.Module):
    """HD: a sigmoid gate from local (per pixel) + global (pooled) attention on I_a + I_b,
    D = 2*I_a*gate + 2*I_b*(1-gate). Nothing is subtracted."""

    def __init__(self, channels, inner):
        super().__init__()
        self.local_attention = GateBranch(channels, inner)
        self.global_attention = GateBranch(channels, inner)

    def forward(self, feat_a, feat_b):
        union = feat_a + feat_b
        gate = torch.sigmoid(self.local_attention(union)
                             + self.global_attention(F.adaptive_avg_pool2d(union, 1)))
        return 2 * feat_a * gate + 2 * feat_b * (1 - gate)


class FeatureDifferentiationLevel(nn.Module):
    """One FHD module: TSM -> TSC -> TSA per date (separate weights), then HD."""

    def __init__(self, channels):
        super().__init__()
        inner = channels // (channels // INNER_CHANNELS_DIVISOR)
        self.mask_a = TimeSpecificMask(channels)
        self.mask_b = TimeSpecificMask(channels)
        self.aggregate_a = TimeSpecificAggregation(channels, inner)
        self.aggregate_b = TimeSpecificAggregation(channels, inner)
        self.differentiate = HierarchicalDifferentiation(channels, inner)

    def forward(self, feat_a, feat_b):
        agg_a = self.aggregate_a(feat_a, time_specific_context(feat_a, self.mask_a(feat_a)))
        agg_b = self.aggregate_b(feat_b, time_specific_context(feat_b, self.mask_b(feat_b)))
        return self.differentiate(agg_a, agg_b)


class FHDDecoder(nn.Module):
    def __init__(self, in_channels=(64, 128, 320, 512), embed_dim=768, num_classes=2,
                 dropout=0.1, fold=True):
        super().__init__()
        self.embed_dim = embed_dim
        self.fold = fold
        self.levels = nn.ModuleList(FeatureDifferentiationLevel(c) for c in in_channels)
        self.level_proj = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.fuse = ConvBNReLU(len(in_channels) * embed_dim, embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)
        self._init_weights()

    def _init_weights(self):
        # mmcv ConvModule init (He-normal fan-out, zero bias, unit BN) for every conv except the
        # classifier; nn.Linear, the classifier and the plain BNs keep PyTorch's default init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.classifier:
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats_a, feats_b):
        diffs = [level(a, b) for level, a, b in zip(self.levels, feats_a, feats_b)]
        if not self.fold:
            return self.classifier(self.dropout(self.fuse(self._concat_projections(diffs))))
        # in place: BN's backward reads its input, not its output
        x = F.relu(self.fuse.bn(sum_projections(diffs, folded_projections(self))), inplace=True)
        return pointwise_conv(self.dropout(x), self.classifier)

    def _concat_projections(self, diffs):
        """The original order: project to 768, upsample, concatenate [level4..level1]."""
        size = diffs[0].shape[2:]
        projected = []
        for d, proj in zip(diffs, self.level_proj):
            p = proj(d.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(
                d.shape[0], -1, *d.shape[2:])
            if p.shape[2:] != size:
                p = F.interpolate(p, size=size, mode='bilinear', align_corners=False)
            projected.append(p)
        return torch.cat(projected[::-1], dim=1)


def folded_projections(decoder):
    """Per level (W_fuse[:, block] @ W_proj, W_fuse[:, block] @ b_proj): the fuse conv's slice
    of each level folded into that level's projection. Differentiable; computed from the
    weights as they are at the call."""
    blocks = decoder.fuse.conv.weight.flatten(1).split(decoder.embed_dim, dim=1)
    # concat order is [level4..level1]; one split, so its backward is one cat
    return [(block @ proj.weight, block @ proj.bias)
            for block, proj in zip(blocks[::-1], decoder.level_proj)]


def sum_projections(diffs, folded):
    """sum_l upsample(W_l d_l + b_l): the fuse conv's input-side work at each level's own
    resolution. Level 1's bias is added with level 4's map (bilinear weights sum to one, so a
    per-channel constant passes through), which lets its product accumulate into the sum of the
    upsampled levels inside the GEMM (addmm, beta = 1): no level-1 map, no separate add. The
    result is NCHW-shaped with channels-last strides."""
    (w1, b1), rest = folded[0], folded[1:]
    biases = [b for _, b in rest[:-1]] + [rest[-1][1] + b1]
    total = upsampled_sum(diffs[1:], [lambda x, w=w, b=b: F.linear(x, w, b)
                                      for (w, _), b in zip(rest, biases)], diffs[0].shape[2:])
    n, c, h, w = total.shape
    d1 = diffs[0].permute(0, 2, 3, 1)
    out = torch.addmm(total.permute(0, 2, 3, 1).reshape(-1, c), d1.reshape(-1, d1.shape[3]), w1.t())
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def upsampled_sum(maps, projections, size):
    """sum_l upsample(project_l(m_l)) to ``size``, from the coarsest level up. Channels-last
    throughout: a token-wise projection writes NHWC directly, and bilinear upsampling of 768
    channels is several times faster in that layout on CPU. Summed in place into the first
    upsampled map (a fresh tensor nothing saved for backward); each later one is added and
    dropped at once, so at most two are alive."""
    total = None
    for m, project in zip(maps[::-1], projections[::-1]):
        p = project(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if p.shape[2:] != size:
            p = F.interpolate(p, size=size, mode='bilinear', align_corners=False)
        total = p if total is None else total.add_(p)
    return total


def pointwise_conv(x, conv):
    """A 1x1 conv as a linear map over the channels of a channels-last map: its backward is
    two plain GEMMs (a 768->2 conv's backward through the conv kernels costs several times
    more on CPU)."""
    w = conv.weight.flatten(1)
    return F.linear(x.permute(0, 2, 3, 1), w, conv.bias).permute(0, 3, 1, 2)


def split_pair(x):
    """Accept a (B,6,H,W) tensor (A = channels 0-2, B = 3-5) or a pair of (B,3,H,W)."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f'input: expected a pair (a, b), got a sequence of {len(x)}')
        a, b = x
        if a.ndim != 4 or a.shape[1] != 3 or a.shape != b.shape:
            raise ValueError(f'input: expected two (B,3,H,W) tensors of equal shape, got '
                             f'{tuple(a.shape)} and {tuple(b.shape)}')
        return a, b
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 6:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f'input: expected a (B,6,H,W) tensor or a pair of (B,3,H,W), got {shape}')
    return x[:, :3], x[:, 3:]


class FHD(nn.Module):
    """Shared MiT encoder on both dates, FHD decoder, bilinear resize to the input size."""

    def __init__(self, backbone='mit_b2', num_classes=2, embed_dim=768, drop_path_rate=0.1,
                 dropout=0.1, fold_decoder=True):
        super().__init__()
        self.backbone_name = backbone
        self.encoder = build_mit(backbone, drop_path_rate=drop_path_rate)
        self.decoder = FHDDecoder(self.encoder.embed_dims, embed_dim, num_classes, dropout,
                                  fold=fold_decoder)

    def forward_head(self, x):
        """Logits at 1/4 resolution (the original decode head's output)."""
        a, b = split_pair(x)
        n = a.shape[0]
        # one run of the shared encoder on [A; B]; the reference order keeps the original's
        # contiguous concatenation
        pair = stack_pair(a, b) if self.decoder.fold else torch.cat([a, b], dim=0)
        # split, not two slices: the backward is one cat per level instead of two zero-filled
        # full-size gradients and their sum
        halves = [f.split(n) for f in self.encoder(pair)]
        return self.decoder([h[0] for h in halves], [h[1] for h in halves])

    def forward(self, x):
        return resize_to_input(self.forward_head(x), x)


def stack_pair(a, b):
    """[A; B] written channels-last in one copy: the first patch embedding's output is then
    channels-last too, which its LayerNorm over channels reads without a copy."""
    n = a.shape[0]
    pair = torch.empty((2 * n, *a.shape[1:]), dtype=a.dtype, device=a.device,
                       memory_format=torch.channels_last)
    pair[:n], pair[n:] = a, b
    return pair


def resize_to_input(logits, x):
    size = (x[0] if isinstance(x, (tuple, list)) else x).shape[2:]
    return F.interpolate(logits, size=size, mode='bilinear', align_corners=False)


def build_fhd(backbone='mit_b2', fold_decoder=True, drop_path_rate=0.1, num_classes=2, **kwargs):
    return FHD(backbone=backbone, fold_decoder=fold_decoder, drop_path_rate=drop_path_rate,
               num_classes=num_classes, **kwargs)
