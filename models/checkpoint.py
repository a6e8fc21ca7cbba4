"""Loading weights: this project's checkpoints, the original FHD release (mmcv layout, 814 keys),
the official ImageNet MiT backbones (mit_b*.pth) and the Hugging Face ``nvidia/mit-b0..b5``
files (transformers SegFormer layout, ``model.safetensors`` / ``pytorch_model.bin``), through
one strict converter.

The original names are produced by ``original_key_map`` from this model's own names, so the
same table serves both directions (loading and the original's optimizer-group rules). The
Hugging Face names are first mapped onto the original's bare-backbone names.

    python -m models.checkpoint FILE [--backbone mit_b2]    # what a file is, and its SHA-256
"""
import hashlib
import importlib
import os
import re
import sys
from collections.abc import Mapping

import torch

ORIGINAL_BACKBONE_PREFIX = 'backbone.backbone.'
# in the original's state_dict but not in this model (unused in the original's forward)
DROPPED_ORIGINAL_PREFIXES = ('decode_head.conv_seg.',)
# in the official ImageNet MiT files: the classifier, which the original also ignores
DROPPED_IMAGENET_PREFIXES = ('head.',)
WRAPPER_PREFIXES = ('module.', '_orig_mod.')   # DistributedDataParallel, torch.compile
# Hugging Face SegFormer: the encoder (with or without the `segformer.` model prefix), and the
# heads that are not ours: `classifier.` (SegformerForImageClassification, the ImageNet files)
# and `decode_head.` (SegformerForSemanticSegmentation's MLP head)
_HF_ENCODER = re.compile(r'^(segformer\.)?encoder\.(patch_embeddings|block|layer_norm)\.\d')
DROPPED_HF_PREFIXES = ('classifier.', 'decode_head.')


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


def is_safetensors(path):
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    with open(path, 'rb') as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b'{':
        return False
    return 2 <= int.from_bytes(head[:8], 'little') <= os.path.getsize(path) - 8


def read_safetensors(path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f'{path}: a safetensors file; reading it needs the safetensors '
                              f'package (pip install safetensors)') from None
    try:
        return load_file(path, device='cpu')
    except Exception as e:   # a truncated header or data raises the library's own errors
        raise CheckpointError(f'{path}: not a readable safetensors file (truncated or corrupt): '
                              f'{_one_line(e)[:160]}') from None


def read_checkpoint(path):
    """torch.load a weight file safely (weights_only), or read a safetensors file;
    CheckpointError on anything unusable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f'{path}: checkpoint file not found')
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: not a file')
    if is_safetensors(path):
        return read_safetensors(path)
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


_HF_BLOCK_PARTS = (   # transformers SegformerLayer -> the original MiT Block (kv: see below)
    ('layer_norm_1.', 'norm1.'), ('layer_norm_2.', 'norm2.'),
    ('attention.self.query.', 'attn.q.'), ('attention.self.sr.', 'attn.sr.'),
    ('attention.self.layer_norm.', 'attn.norm.'), ('attention.output.dense.', 'attn.proj.'),
    ('mlp.dense1.', 'mlp.fc1.'), ('mlp.dense2.', 'mlp.fc2.'), ('mlp.dwconv.dwconv.', 'mlp.dwconv.dwconv.'),
)
_HF_RULES = [(re.compile(p + '$'), f) for p, f in [
    (r'patch_embeddings\.(\d+)\.proj\.(\w+)', lambda m: f'patch_embed{_plus1(m[1])}.proj.{m[2]}'),
    (r'patch_embeddings\.(\d+)\.layer_norm\.(\w+)', lambda m: f'patch_embed{_plus1(m[1])}.norm.{m[2]}'),
    (r'layer_norm\.(\d+)\.(\w+)', lambda m: f'norm{_plus1(m[1])}.{m[2]}'),
    (r'block\.(\d+)\.(\d+)\.(.+)', lambda m: _hf_block_key(f'block{_plus1(m[1])}.{m[2]}.', m[3])),
]]


def _hf_block_key(block, rest):
    for hf, original in _HF_BLOCK_PARTS:
        if rest.startswith(hf):
            return block + original + rest[len(hf):]
    return None


def _hf_to_original(state_dict, path):
    """Hugging Face SegFormer encoder names -> the original's bare MiT names (as in mit_b*.pth).

    transformers splits the original `attn.kv` linear into `key` and `value`; they are
    concatenated back, key rows first (the original computes k, v = kv(x).split: k first).
    Returns (state_dict, dropped, unknown)."""
    out, kv, dropped, unknown = {}, {}, [], []
    for key, value in state_dict.items():
        if key.startswith(DROPPED_HF_PREFIXES):
            dropped.append(key)
            continue
        name = key[len('segformer.'):] if key.startswith('segformer.') else key
        name = name[len('encoder.'):] if name.startswith('encoder.') else None
        m = re.match(r'block\.(\d+)\.(\d+)\.attention\.self\.(key|value)\.(\w+)$', name or '')
        if m:
            block = f'block{_plus1(m[1])}.{m[2]}.attn.kv.{m[4]}'
            kv.setdefault(block, {})[m[3]] = (key, value)
            continue
        original = None
        for pattern, fn in _HF_RULES:
            hit = pattern.match(name or '')
            if hit:
                original = fn(hit)
                break
        if original is None:
            unknown.append(key)
        else:
            out[original] = value
    for name, parts in kv.items():
        if set(parts) != {'key', 'value'}:
            only = next(iter(parts.values()))[0]
            raise CheckpointError(f'{path}: {only} has no matching '
                                  f"{'value' if 'key' in parts else 'key'} tensor (Hugging Face "
                                  f'SegFormer layout: key and value are concatenated into kv)')
        out[name] = torch.cat([parts['key'][1], parts['value'][1]], dim=0)
    return out, sorted(dropped), unknown


def convert_state_dict(state_dict, model, path='checkpoint'):
    """Map any supported layout onto ``model``'s names. Returns (new_state_dict, kind, dropped,
    expected_keys). Raises CheckpointError for unknown keys."""
    own = model.state_dict()
    keys = list(state_dict)
    if any(_HF_ENCODER.match(k) for k in keys):   # before 'original': HF heads are decode_head.*
        bare, dropped, unknown = _hf_to_original(state_dict, path)
        if unknown:
            raise CheckpointError(f'{path}: unexpected keys for {model.backbone_name} (huggingface '
                                  f'layout): {_fmt_keys(unknown)}')
        converted, _, _, expected = convert_state_dict(bare, model, path)
        return converted, 'huggingface_backbone', dropped, expected
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

    kind: 'project' (this project's files), 'original' (FHD release, mmcv layout),
    'imagenet_backbone' (official mit_b*.pth) or 'huggingface_backbone' (nvidia/mit-b*): for
    the last two only the encoder is loaded, all of it."""
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
    model.load_state_dict(converted, strict=not kind.endswith('_backbone'))
    meta = obj.get('meta') if isinstance(obj, Mapping) else None
    return {'kind': kind, 'meta': meta, 'dropped': dropped}


def sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def describe(path, backbone='mit_b2'):
    """What a weight file is (it must load strictly into FHD-<backbone>), its size and SHA-256."""
    from .fhd import build_fhd
    model = build_fhd(backbone=backbone, drop_path_rate=0.0)
    info = load_checkpoint(model, path)
    state_dict = extract_state_dict(read_checkpoint(path), path)
    converted, _, _, _ = convert_state_dict(state_dict, model, path)
    return dict(path=os.fspath(path), kind=info['kind'], bytes=os.path.getsize(path),
                sha256=sha256(path), tensors_in_file=len(state_dict), tensors_loaded=len(converted),
                parameters_loaded=sum(v.numel() for k, v in converted.items()
                                      if not k.endswith(('running_mean', 'running_var',
                                                         'num_batches_tracked'))),
                dropped=info['dropped'])


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description='Check that a weight file loads into FHD; print its '
                                            'kind, size and SHA-256.')
    p.add_argument('file')
    p.add_argument('--backbone', default='mit_b2')
    args = p.parse_args(argv)
    try:
        d = describe(args.file, args.backbone)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for k, v in d.items():
        print(f'{k}: {v}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
