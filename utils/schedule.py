"""Learning-rate schedule and optimizer parameter groups of the original FHD recipe.

The original (mmcv 1.3.8) used a poly schedule with linear warmup and parameter-wise
rules matched by substring on the parameter's *original* dotted name; both are rebuilt
here as plain functions so they can be tested against the reference values.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

# Original `paramwise_cfg.custom_keys`, in mmcv's matching order: longest key first,
# ties alphabetical -> pos_block, head, norm. The first match wins; missing mults are 1,
# so a 'head' match keeps weight decay (x1) even for the head's BatchNorms.
CUSTOM_KEYS = (
    ('pos_block', dict(lr_mult=1.0, decay_mult=0.0)),
    ('head', dict(lr_mult=10.0, decay_mult=1.0)),
    ('norm', dict(lr_mult=1.0, decay_mult=0.0)),
)


def poly_warmup_lr(i: int, base: float, max_iters: int, warmup_iters: int = 1500,
                   warmup_ratio: float = 1e-6, power: float = 1.0, min_lr: float = 0.0) -> float:
    """LR before update `i` (0-based count of updates already done).

    Poly decay, then a linear warmup that scales the *already decayed* lr, as mmcv does:
    warmup factor = 1 - (1 - i/warmup_iters) * (1 - warmup_ratio) for i < warmup_iters.
    """
    progress = min(i, max_iters) / max_iters
    lr = (base - min_lr) * (1.0 - progress) ** power + min_lr
    if warmup_iters > 0 and i < warmup_iters:
        lr *= 1.0 - (1.0 - i / warmup_iters) * (1.0 - warmup_ratio)
    return lr


def param_rule(original_name: str) -> dict:
    """lr_mult / decay_mult of one parameter, from its original dotted name."""
    for key, mults in CUSTOM_KEYS:
        if key in original_name:
            return dict(mults)
    return dict(lr_mult=1.0, decay_mult=1.0)


def classify_params(model, key_map: dict | None = None) -> "OrderedDict[str, dict]":
    """Per-tensor classification: our parameter name -> {original, lr_mult, decay_mult}.

    `key_map` maps our state_dict names to the original's (models.original_key_map);
    names missing from it are matched as they are.
    """
    key_map = key_map or {}
    table = OrderedDict()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        original = key_map.get(name, name)
        table[name] = dict(original=original, **param_rule(original))
    return table


def build_param_groups(model, lr: float, weight_decay: float, key_map: dict | None = None):
    """Optimizer groups with the original's per-parameter rules, merged by (lr_mult, decay_mult).

    mmcv made one group per tensor (595); merging identical settings gives the same update
    with a handful of groups, which keeps the optimizer step fast. Each group carries
    `lr_mult` so the schedule can set `lr = lr_mult * schedule(i)`.
    """
    table = classify_params(model, key_map)
    params = dict(model.named_parameters())
    merged = OrderedDict()
    for name, rule in table.items():
        key = (rule['lr_mult'], rule['decay_mult'])
        merged.setdefault(key, []).append(params[name])
    groups = []
    for (lr_mult, decay_mult), plist in merged.items():
        groups.append(dict(params=plist, lr=lr * lr_mult, initial_lr=lr * lr_mult,
                           weight_decay=weight_decay * decay_mult,
                           lr_mult=lr_mult, decay_mult=decay_mult))
    return groups


def set_lr(optimizer, i: int, base_lr: float, max_iters: int, **schedule) -> float:
    """Apply the schedule to every group; returns the lr of the first (backbone) group."""
    lr = poly_warmup_lr(i, base_lr, max_iters, **schedule)
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_mult', 1.0)
    return optimizer.param_groups[0]['lr']


def build_optimizer(param_groups, lr: float, weight_decay: float = 0.01, betas=(0.9, 0.999)):
    """AdamW as the original (eps 1e-8, no amsgrad), with PyTorch's fused kernel where it exists.

    The fused kernel (CPU since torch 2.4, CUDA) does the same update in one pass over all
    tensors instead of ~10 small ops per tensor; it is ~7 % of a CPU training step otherwise.
    """
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay,
                                 fused=True)
    except (RuntimeError, TypeError, ValueError):   # older torch / unsupported device or dtype
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay)
