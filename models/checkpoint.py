"""Loading weights: this project's checkpoints, the original FHD release (mmcv layout, 814 keys)
and the official ImageNet MiT backbones (mit_b*.pth), through one strict converter.

The original names are produced by ``original_key_map`` from this model's own names, so the
same table serves both directions (loading and the original's optimizer-group rules).
"""
import importlib
import os
import re
from collections.abc import Mapping

import torch

ORIGINAL_BACKBONE_PREFIX = 'backbone.backbone.'
# in the original's state_dict but not in this model (unused in the original's forward)
DROPPED_ORIGINAL_PREFIXES = ('decode_head.conv_seg.',)
# in the official ImageNet MiT files: the classifier, which the original also ignores
DROPPED_IMAGENET_PREFIXES = ('head.',)
WRAPPER_PREFIXES = ('module.', '_orig_mod.')   # DistributedDataParallel, torch.compile


class CheckpointError(ValueError):
    """A weight file that cannot be loaded; the message is one line naming the file."""


def _plus1(m):
    return str(int(m) + 1)


_GATE_INDEX = {  # (branch, our name) -> index in the original's nn.Sequential
    ('la', 'reduce'): '0.conv', ('la', 'reduce_norm'): '1',
    ('la', 'expand'): '3.conv', ('la', 'expand_norm'): '4',
    ('ga', 'reduce'): '1.conv', ('ga', 'reduce_norm'): '2',
    ('ga', 'expand'): '4.conv', ('ga', 'expand_norm'): '5',
}
_DATE = {'a': 'bm', 'b': 'fm'}
_TSA = {'query_proj': 'query_project', 'key_proj': 'key_project',
        'value_proj': 'value_project', 'out_proj': 'out_project', 'bottleneck': 'bottleneck'}

# (pattern on our key, function of the match giving the original key); first match wins
_RULES = [
    (r'encoder\.stages\.(\d+)\.patch_embed\.(.+)',
     lambda m: f'{ORIGINAL_BACKBONE_PREFIX}patch_embed{_plus1(m[1])}.{m[2]}'),
    (r'encoder\.stages\.(\d+)\.blocks\.(\d+)\.attn\.sr_norm\.(.+)',
     lambda m: f'{ORIGINAL_BACKBONE_PREFIX}block{_plus1(m[1])}.{m[2]}.attn.norm.{m[3]}'),
    (r'encoder\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.(.+)',
     lambda m: f'{ORIGINAL_BACKBONE_PREFIX}block{_plus1(m[1])}.{m[2]}.mlp.dwconv.dwconv.{m[3]}'),
    (r'encoder\.stages\.(\d+)\.blocks\.(\d+)\.(.+)',
     lambda m: f'{ORIGINAL_BACKBONE_PREFIX}block{_plus1(m[1])}.{m[2]}.{m[3]}'),
    (r'encoder\.stages\.(\d+)\.norm\.(.+)',
     lambda m: f'{ORIGINAL_BACKBONE_PREFIX}norm{_plus1(m[1])}.{m[2]}'),
    (r'decoder\.levels\.(\d+)\.mask_([ab])\.(.+)',
     lambda m: f'decode_head.fhd{_plus1(m[1])}.tsm_{_DATE[m[2]]}.{m[3]}'),
    (r'decoder\.levels\.(\d+)\.aggregate_([ab])\.(\w+)\.(.+)',
     lambda m: f'decode_head.fhd{_plus1(m[1])}.tsa_{_DATE[m[2]]}.{_TSA[m[3]]}.{m[4]}'),
    (r'decoder\.levels\.(\d+)\.differentiate\.(local|global)_attention\.(\w+)\.(.+)',
     lambda m: f'decode_head.fhd{_plus1(m[1])}.{m[2][0]}a_layers.'
               f'{_GATE_INDEX[(m[2][0] + "a", m[3])]}.{m[4]}'),
    (r'decoder\.level_proj\.(\d+)\.(.+)',
     lambda m: f'decode_head.linear_c{_plus1(m[1])}.proj.{m[2]}'),
    (r'decoder\.fuse\.(.+)', lambda m: f'decode_head.linear_fuse.{m[1]}'),
    (r'decoder\.classifier\.(.+)', lambda m: f'decode_head.linear_pred.{m[1]}'),
]
_RULES = [(re.compile(p + '$'), f) for p, f in _RULES]


def to_original_key(key):
    for pattern, fn in _RULES:
        m = pattern.match(key)
        if m:
            return fn(m)
    raise KeyError(f'no original name for {key!r}')


def original_key_map(model):
    """This model's state_dict key -> the original FHD's key (e.g. backbone.backbone.block1.0.attn.q.weight)."""
    return {k: to_original_key(k) for k in model.state_dict()}


def _fmt_keys(keys, n=3):
    keys = sorted(keys)
    more = f', ... ({len(keys)} in all)' if len(keys) > n else f' ({len(keys)})'
    return ', '.join(keys[:n]) + more


def read_checkpoint(path):
    """torch.load a weight file safely (weights_only); CheckpointError on anything unusable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f'{path}: checkpoint file not found')
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: not a file')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:   # unpickling garbage can raise almost anything (IndexError, ...)
        first_error = _one_line(e)
    # weights_only refuses every pickled class it does not know. mmcv checkpoints normally hold
    # only tensors and plain Python types in 'meta'/'optimizer', but some tools store numpy
    # scalars/arrays there. Those are data-only, so allow exactly the numpy globals the file
    # names and nothing else; never fall back to full unpickling (it can run arbitrary code).
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        unsafe = None
    if not unsafe:
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated, corrupt or '
                              f'another kind of file): {first_error[:160]}') from None
    foreign = [g for g in unsafe if g.split('.')[0] != 'numpy']
    if foreign:
        raise CheckpointError(f'{path}: refusing to unpickle Python objects other than tensors, '
                              f'plain types and numpy data: {_fmt_keys(foreign)}') from None
    try:
        with torch.serialization.safe_globals([_resolve(g) for g in unsafe] + _numpy_dtypes()):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint: '
                              f'{_one_line(e)[:160]}') from None


def _numpy_dtypes():
    # numpy dtype instances are rebuilt through their per-type classes (numpy.dtypes.*DType)
    import numpy as np
    return [getattr(np.dtypes, n) for n in dir(getattr(np, 'dtypes', None)) if n.endswith('DType')]


def _resolve(dotted):
    module, _, name = dotted.rpartition('.')
    return getattr(importlib.import_module(module), name)


def _one_line(e):
    return ' '.join(str(e).split()) or type(e).__name__


def extract_state_dict(obj, path='checkpoint'):
    """Unwrap {'state_dict': ...} / {'model': ...} and strip 'module.' / '_orig_mod.' prefixes."""
    if isinstance(obj, Mapping):
        for wrapper in ('state_dict', 'model'):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f'{path}: not a checkpoint (no state_dict of tensors found)')
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f'{path}: not a checkpoint (no state_dict of tensors; non-tensor '
                              f'entries {_fmt_keys(bad)})')
    out = {}
    for k, v in obj.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def convert_state_dict(state_dict, model, path='checkpoint'):
    """Map any supported layout onto ``model``'s names. Returns (new_state_dict, kind, dropped,
    expected_keys). Raises CheckpointError for unknown keys."""
    own = model.state_dict()
    keys = list(state_dict)
    if any(k.startswith(ORIGINAL_BACKBONE_PREFIX) or k.startswith('decode_head.') for k in keys):
        kind, dropped_prefixes, expected = 'original', DROPPED_ORIGINAL_PREFIXES, set(own)
        source = dict(state_dict)
    elif any(k.startswith(('encoder.', 'decoder.')) for k in keys):
        kind, dropped_prefixes, expected = 'project', (), set(own)
        source = None
    else:   # a bare MiT backbone (official ImageNet file): original backbone names, no prefix
        kind, dropped_prefixes = 'imagenet_backbone', DROPPED_IMAGENET_PREFIXES
        expected = {k for k in own if k.startswith('encoder.')}
        source = {(k if k.startswith(DROPPED_IMAGENET_PREFIXES) else ORIGINAL_BACKBONE_PREFIX + k): v
                  for k, v in state_dict.items()}
    dropped = sorted(k for k in keys if k.startswith(dropped_prefixes)) if dropped_prefixes else []
    if source is None:
        converted = dict(state_dict)
    else:
        from_original = {v: k for k, v in original_key_map(model).items()}
        converted, unknown = {}, []
        for k, v in source.items():
            if k.startswith(dropped_prefixes):
                continue
            if k in from_original:
                converted[from_original[k]] = v
            else:
                unknown.append(k[len(ORIGINAL_BACKBONE_PREFIX):] if kind == 'imagenet_backbone'
                               else k)
        if unknown:
            raise CheckpointError(f'{path}: unexpected keys for {model.backbone_name} ({kind} '
                                  f'layout): {_fmt_keys(unknown)}')
    return converted, kind, dropped, expected


def load_checkpoint(model, path):
    """Load a weight file strictly into an FHD model. Returns {'kind', 'meta', 'dropped'}.

    kind: 'project' (this project's files), 'original' (FHD release, mmcv layout) or
    'imagenet_backbone' (official mit_b*.pth: only the encoder is loaded, all of it)."""
    path = os.fspath(path)
    obj = read_checkpoint(path)
    state_dict = extract_state_dict(obj, path)
    converted, kind, dropped, expected = convert_state_dict(state_dict, model, path)
    own = model.state_dict()
    problems = []
    missing = expected - set(converted)
    unexpected = set(converted) - set(own)
    if missing:
        problems.append(f'missing keys: {_fmt_keys(missing)}')
    if unexpected:
        problems.append(f'unexpected keys: {_fmt_keys(unexpected)}')
    wrong = [k for k in set(converted) & set(own) if converted[k].shape != own[k].shape]
    if wrong:
        k = sorted(wrong)[0]
        problems.append(f'wrong shapes: {_fmt_keys(wrong)} (e.g. {k}: file '
                        f'{tuple(converted[k].shape)}, model {tuple(own[k].shape)})')
    if problems:
        raise CheckpointError(f'{path}: does not fit FHD-{model.backbone_name} ({kind} layout): '
                              + '; '.join(problems))
    model.load_state_dict(converted, strict=kind != 'imagenet_backbone')
    meta = obj.get('meta') if isinstance(obj, Mapping) else None
    return {'kind': kind, 'meta': meta, 'dropped': dropped}
