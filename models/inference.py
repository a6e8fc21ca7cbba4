"""The inference transform: a trained FHD -> a new, frozen module that computes the same function.

    net = for_inference(model, device='cpu')     # eval mode, weights as they are now
    logits = net(x)

Everything that only holds for a fixed set of weights is derived here, once, from the weights
as they are at the call: the decoder fold with the fuse BN absorbed, every conv-BN(-ReLU) folded
into one conv, conv + ReLU as one kernel. Where it pays on
CPU, the encoder's attention folds its query and output projections into keys and values, and
the layers use the fused kernels of ``models.cpu_kernels`` (chosen here, once, with a plain-op
fallback for autocast, tracing, export and torch.compile). The result shares no tensor with the
source model: training it further, loading other weights or moving it never changes the
inference module; run the transform again to follow the new weights (about 0.2 s for MiT-b2
on 2 CPU cores).
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_kernels as K
from .fhd import (ConvBNReLU, FeatureDifferentiationLevel, GateBranch,
                  HierarchicalDifferentiation, TimeSpecificAggregation, folded_projections,
                  resize_to_input, split_pair, stack_pair, upsampled_sum)
from .mit import EfficientSelfAttention, MiTBlock, MiTStage, MixFFN, tokens_to_map


def bn_scale_shift(bn):
    """The eval-mode BatchNorm as y = scale * x + shift (per channel)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fold_conv_bn(conv, bn):
    """One conv (weight, bias) equal to bn(conv(x)) in eval mode."""
    scale, shift = bn_scale_shift(bn)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return conv.weight * scale[:, None, None, None], bias


class FoldedAttention(nn.Module):
    """Efficient self-attention; on CPU, the q and output projections are folded into the keys
    and values when that needs fewer multiply-adds (all three maps are linear):
    scores_h = x (Wq_h^T k_h^T s) + bq_h k_h^T s and proj(concat_h a_h v_h) = sum_h a_h (v_h Wp_h^T)
    + bp. With few keys (spatial reduction) this replaces the two C x C projections of every
    query token by m x C work per image; the per-head score bias goes to SDPA as an additive
    mask."""

    def __init__(self, attn: EfficientSelfAttention, fused, fold):
        super().__init__()
        self.num_heads, self.sr_ratio, self.fold = attn.num_heads, attn.sr_ratio, fold
        self.q = K.Linear(attn.q.weight, attn.q.bias, fused)
        self.kv = K.Linear(attn.kv.weight, attn.kv.bias, fused)
        self.proj = K.Linear(attn.proj.weight, attn.proj.bias, fused)
        if self.sr_ratio > 1:
            self.sr = K.Conv2d.of(attn.sr, fused=fused)
            self.sr_norm = copy.deepcopy(attn.sr_norm)

    keys_values = EfficientSelfAttention.keys_values

    def forward(self, x, h, w):
        b, n, c = x.shape
        k, v = self.keys_values(x, h, w)
        if self.fold and self._fold_pays(n, c, k.shape[2]):
            return self._folded(x, k, v)
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))

    def _fold_pays(self, n, c, m):
        """Folded: H*n*m*C + m*C^2 multiply-adds per image, against n*C^2 + n*m*C (q projection
        + scores; the value side is the same). True at 256x256 for stages 1 and 2."""
        return self.num_heads * n * m + m * c < n * c + n * m

    def _folded(self, x, k, v):
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


class FusedMixFFN(nn.Module):
    def __init__(self, mlp: MixFFN, fused):
        super().__init__()
        self.fc1 = K.Linear(mlp.fc1.weight, mlp.fc1.bias, fused)
        self.dwconv_gelu = K.DepthwiseConvGELU(mlp.dwconv, fused)
        self.fc2 = K.Linear(mlp.fc2.weight, mlp.fc2.bias, fused)

    def forward(self, x, h, w):
        x = self.dwconv_gelu(tokens_to_map(self.fc1(x), h, w))
        return self.fc2(x.flatten(2).transpose(1, 2))


class InferenceBlock(nn.Module):
    """MiT block without drop-path; each residual is added into the branch's fresh output
    (no new tensor; a + b == b + a bitwise)."""

    def __init__(self, block: MiTBlock, fused, fold_attention):
        super().__init__()
        self.norm1, self.norm2 = copy.deepcopy(block.norm1), copy.deepcopy(block.norm2)
        self.attn = FoldedAttention(block.attn, fused, fold_attention)
        self.mlp = FusedMixFFN(block.mlp, fused)

    def forward(self, x, h, w):
        x = self.attn(self.norm1(x), h, w).add_(x)
        return self.mlp(self.norm2(x), h, w).add_(x)


class InferenceStage(nn.Module):
    """A MiT stage whose blocks run over groups of images (each image's tokens are independent
    in a block): at 256x256 a batch-8 pair's stage-1 MLP map is 67 MB and spills out of the
    cache between fc1, the depthwise conv and fc2; over groups of CACHE_GROUP_BYTES it stays."""

    def __init__(self, stage: MiTStage, fused, fold_attention):
        super().__init__()
        self.fused = fused
        self.patch_embed = copy.deepcopy(stage.patch_embed)
        self.patch_embed.proj = K.Conv2d.of(stage.patch_embed.proj, fused=fused)
        self.blocks = nn.ModuleList(InferenceBlock(b, fused, fold_attention) for b in stage.blocks)
        self.norm = copy.deepcopy(stage.norm)

    def forward(self, x):
        x, h, w = self.patch_embed(x)
        if self.fused and K.fused_applies(x):
            # working set: the MLP's fc1 and depthwise-conv outputs
            hidden = self.blocks[0].mlp.fc1.weight.shape[0]
            x = over_image_groups(lambda part: self._blocks(part, h, w), [x], 2 * hidden * h * w)
        else:
            x = self._blocks(x, h, w)
        return tokens_to_map(self.norm(x), h, w)

    def _blocks(self, x, h, w):
        for block in self.blocks:
            x = block(x, h, w)
        return x


class FusedGateBranch(nn.Module):
    """conv-ReLU-BN-ReLU-conv-ReLU-BN; a ReLU follows each conv and each BN but the last, so
    no BN folds into a conv; the convs run with their ReLU fused."""

    def __init__(self, branch: GateBranch, fused):
        super().__init__()
        self.reduce = K.Conv1x1ReLU(branch.reduce.weight, branch.reduce.bias, fused)
        self.reduce_norm = copy.deepcopy(branch.reduce_norm)
        self.expand = K.Conv1x1ReLU(branch.expand.weight, branch.expand.bias, fused)
        self.expand_norm = copy.deepcopy(branch.expand_norm)

    def forward(self, x):
        x = F.relu(self.reduce_norm(self.reduce(x)), inplace=True)
        return self.expand_norm(self.expand(x))


class FusedDifferentiation(nn.Module):
    """HD with fewer passes over the maps: the gate's sum and sigmoid in place, and
    D = 2*I_a*g + 2*I_b*(1-g) as 2 * lerp(I_b, I_a, g) (the same value up to rounding)."""

    def __init__(self, hd: HierarchicalDifferentiation, fused):
        super().__init__()
        self.local_attention = FusedGateBranch(hd.local_attention, fused)
        self.global_attention = FusedGateBranch(hd.global_attention, fused)

    def forward(self, feat_a, feat_b):
        union = feat_a + feat_b
        gate = self.local_attention(union).add_(
            self.global_attention(F.adaptive_avg_pool2d(union, 1))).sigmoid_()
        return torch.lerp(feat_b, feat_a, gate).mul_(2)


def as_tokens(x):
    """(B, C, h, w) -> (B, h*w, C); free for the channels-last maps the encoder and the fused
    convs produce (a flatten(2) of them would copy the whole map)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def tokens_as_map(x, h, w):
    return x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


def conv_relu(block: ConvBNReLU, fused):
    return K.Conv1x1ReLU(*fold_conv_bn(block.conv, block.bn), fused)


class FusedAggregation(nn.Module):
    """TSA without layout copies; the bottleneck over [attended context, features] as two convs
    whose sum and ReLU are fused (no concatenated map)."""

    def __init__(self, tsa: TimeSpecificAggregation, fused):
        super().__init__()
        self.inner = tsa.inner
        self.query_proj = nn.Sequential(*(conv_relu(m, fused) for m in tsa.query_proj))
        self.key_proj = nn.Sequential(*(conv_relu(m, fused) for m in tsa.key_proj))
        self.value_proj = conv_relu(tsa.value_proj, fused)
        self.out_proj = conv_relu(tsa.out_proj, fused)
        weight, bias = fold_conv_bn(tsa.bottleneck.conv, tsa.bottleneck.bn)
        c = weight.shape[0]
        self.bottleneck_context = K.Linear(weight[:, :c, 0, 0], bias, fused)   # [context, features]
        self.bottleneck_features = K.Conv1x1AddReLU(weight[:, c:], fused)

    def forward(self, features, context):
        b, _, h, w = features.shape
        query = as_tokens(self.query_proj(features))                    # (B,hw,inner)
        key = self.key_proj(context).flatten(2) * self.inner ** -0.5    # (B,inner,K)
        value = self.value_proj(context).flatten(2).transpose(1, 2)     # (B,K,inner)
        attended = torch.matmul(torch.matmul(query, key).softmax(dim=-1), value)
        attended = tokens_as_map(attended, h, w)
        # the context half of the bottleneck as a token-wise linear: NHWC in, NHWC out
        context_part = self.bottleneck_context(self.out_proj(attended).permute(0, 2, 3, 1))
        return self.bottleneck_features(features, context_part.permute(0, 3, 1, 2))


class FusedLevel(nn.Module):
    """One FHD module (TSM -> TSC -> TSA per date, then HD) in the inference form."""

    def __init__(self, level: FeatureDifferentiationLevel, fused):
        super().__init__()
        self.mask_a = K.Conv1x1ReLU(level.mask_a.conv.weight, level.mask_a.conv.bias, fused)
        self.mask_b = K.Conv1x1ReLU(level.mask_b.conv.weight, level.mask_b.conv.bias, fused)
        self.aggregate_a = FusedAggregation(level.aggregate_a, fused)
        self.aggregate_b = FusedAggregation(level.aggregate_b, fused)
        self.differentiate = FusedDifferentiation(level.differentiate, fused)

    def forward(self, feat_a, feat_b):
        agg_a = self.aggregate_a(feat_a, token_context(feat_a, self.mask_a(feat_a)))
        agg_b = self.aggregate_b(feat_b, token_context(feat_b, self.mask_b(feat_b)))
        return self.differentiate(agg_a, agg_b)


def token_context(features, masks):
    """fhd.time_specific_context on channels-last maps: (B,C,h,w), (B,K,h,w) -> (B,C,K,1)."""
    weights = masks.flatten(2).softmax(dim=2)                       # (B,K,hw)
    return torch.matmul(weights, as_tokens(features)).transpose(1, 2).unsqueeze(3)


class InferenceDecoder(nn.Module):
    """FHD levels with folded BNs, then sum_l upsample(W'_l d_l + b'_l) -> ReLU -> classifier,
    where W'_l, b'_l hold the level projection, the fuse conv's slice and the fuse BN.

    On CPU the 768-channel sum at 1/4 resolution is built over groups of images small enough to
    stay in the cache, level 1's product accumulated into it by the GEMM itself."""

    def __init__(self, decoder, fused):
        super().__init__()
        self.fused = fused
        self.levels = nn.ModuleList(FusedLevel(level, fused) for level in decoder.levels)
        scale, shift = bn_scale_shift(decoder.fuse.bn)
        folded = folded_projections(decoder)
        # A per-channel constant passes through bilinear upsampling (its weights sum to one), so
        # every constant (level 1's bias, the BN's shift) is added once, with level 4's map;
        # level 1's projection then needs no bias and can accumulate into the upsampled sum.
        constant = scale * folded[0][1] + shift
        projections = []
        for i, (w, b) in enumerate(folded):
            bias = (None if i == 0 else
                    scale * b + (constant if i == len(folded) - 1 else 0))
            projections.append(K.Linear(scale[:, None] * w, bias, fused))
        self.projections = nn.ModuleList(projections)
        self.classifier = K.Conv2d.of(decoder.classifier, fused=fused)

    def forward(self, feats_a, feats_b):
        diffs = [level(a, b) for level, a, b in zip(self.levels, feats_a, feats_b)]
        if not (self.fused and K.fused_applies(diffs[0])):
            return self.classifier(F.relu(self._level_sum(diffs, accumulate=False), inplace=True))
        # working set: the upsampled sum and one upsampled level, 768 channels each
        width, (h, w) = self.projections[0].weight.shape[0], diffs[0].shape[2:]
        return over_image_groups(
            lambda *part: self.classifier(self._level_sum(part, accumulate=True).relu_()),
            diffs, 2 * width * h * w)

    def _level_sum(self, diffs, accumulate):
        """sum_l upsample(W'_l d_l + b'_l), channels-last (as fhd.sum_projections).
        ``accumulate``: level 1's product is added by its GEMM (CPU fast path)."""
        total = upsampled_sum(diffs[1:], self.projections[1:], diffs[0].shape[2:])
        level1 = diffs[0].permute(0, 2, 3, 1)
        if not accumulate:
            return total.add_(self.projections[0](level1).permute(0, 3, 1, 2))
        # total += d_1 W'_1^T inside the GEMM (beta = 1): no level-1 map, no separate add
        total = total.contiguous(memory_format=torch.channels_last)
        tokens = total.permute(0, 2, 3, 1).view(-1, total.shape[1])
        tokens.addmm_(level1.reshape(-1, level1.shape[3]), self.projections[0].weight.t())
        return total


# Working set of a group of images that still stays in the cache of the 2-core machine the
# defaults were measured on (Intel Xeon, 2 threads, batch-8 256x256 pairs): the encoder's stage-1
# blocks took 42 instead of 48 ms over groups of 4 images, the decoder's 768-channel tail 49
# instead of 74 ms over groups of 2 (docs/performance.md). Groups only change the order in which
# images are processed, not the function (GEMM rounding may differ by ~1e-6 with the row count).
CACHE_GROUP_BYTES = 32 * 2 ** 20


def over_image_groups(fn, tensors, values_per_image):
    """``fn`` over consecutive groups of images (``tensors`` split alike along dim 0) whose
    ``values_per_image`` elements fit CACHE_GROUP_BYTES; the outputs concatenated."""
    size = image_group_size(tensors[0], values_per_image)
    outs = [fn(*part) for part in zip(*(t.split(size) for t in tensors))]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def image_group_size(x, values_per_image):
    """Images per group so that a group's ``values_per_image`` elements fit CACHE_GROUP_BYTES,
    the batch split into equal-sized groups (at least one image each)."""
    n = x.shape[0]
    groups = -(-n * values_per_image * x.element_size() // CACHE_GROUP_BYTES)
    return max(1, -(-n // max(1, groups)))


class InferenceFHD(nn.Module):
    """The frozen inference form of an FHD model (built by ``for_inference``)."""

    def __init__(self, model, fused, fold_attention):
        super().__init__()
        self.backbone_name = model.backbone_name
        self.encoder = copy.deepcopy(model.encoder)
        replace_modules(self.encoder, MiTStage,
                        lambda m: InferenceStage(m, fused, fold_attention))
        self.decoder = InferenceDecoder(model.decoder, fused)

    def forward_head(self, x):
        a, b = split_pair(x)
        n = a.shape[0]
        feats = self.encoder(stack_pair(a, b))
        return self.decoder([f[:n] for f in feats], [f[n:] for f in feats])

    def forward(self, x):
        return resize_to_input(self.forward_head(x), x)


def replace_modules(root, kind, make):
    """Replace every submodule of type ``kind`` under ``root`` by ``make(old)``."""
    for name, child in root.named_children():
        if isinstance(child, kind):
            setattr(root, name, make(child))
        else:
            replace_modules(child, kind, make)


def unwrap(model):
    """The FHD inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, '_orig_mod', None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


@torch.no_grad()
def for_inference(model, device=None, kernels='auto', fold_attention=None):
    """A new eval-mode module computing ``model``'s eval function from its weights as they are now.

    device: where the result lives (default: the model's device). kernels: 'auto' uses the
    fused CPU kernels on a CPU target; 'plain' only standard ops (export, comparisons).
    fold_attention: fold q/output projections into keys/values where that saves work (default:
    on a CPU target with 'auto' kernels). The result never changes when ``model`` does."""
    if kernels not in ('auto', 'plain'):
        raise ValueError(f"kernels must be 'auto' or 'plain', got {kernels!r}")
    model = unwrap(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    source = copy.deepcopy(model).to(device).eval()    # folds in the model's own dtype
    fused = device.type == 'cpu' and kernels == 'auto'
    if fold_attention is None:
        fold_attention = fused
    net = InferenceFHD(source, fused=fused and K.onednn_available(), fold_attention=fold_attention)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


