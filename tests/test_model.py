"""FHD model numerics: the recorded reference case of the original code, fast == reference."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from models import build_fhd, load_checkpoint, mit, original_key_map
from models.checkpoint import convert_state_dict
from models.reference_case import case_input, filled_original_state_dict, load_manifest

FIXTURES = Path(__file__).parent / 'fixtures'
MANIFEST = load_manifest(FIXTURES / 'fhd_mit_b2_state_dict.json')


def rel_err(new, ref):
    return ((new - ref).abs().max() / ref.abs().max()).item()


def filled_model(seed, fast=True):
    """mit_b2 FHD with fill-rule weights, filled on the ORIGINAL names, then converted."""
    model = build_fhd('mit_b2', fast=fast)
    original = filled_original_state_dict(MANIFEST, seed)
    converted, kind, dropped, _ = convert_state_dict(original, model)
    assert kind == 'original' and dropped == ['decode_head.conv_seg.bias',
                                              'decode_head.conv_seg.weight']
    model.load_state_dict(converted, strict=True)
    return model.eval()


@pytest.fixture(scope='module')
def model_seed1():
    return filled_model(seed=1)


def test_public_reference_case(model_seed1):
    case = np.load(FIXTURES / 'fhd_public_case.npz')
    x = torch.from_numpy(case['input'])
    assert torch.equal(x, case_input(1, 2, 64, 64))          # the documented input recipe
    model = model_seed1
    for fast in (False, True):
        model.fast = fast
        with torch.no_grad():
            head = model.forward_head(x)
            logits = model(x)
            logits_pair = model((x[:, :3], x[:, 3:]))
        assert rel_err(head, torch.from_numpy(case['head_logits'])) < 1e-4, fast
        assert rel_err(logits, torch.from_numpy(case['logits'])) < 1e-4, fast
        assert torch.equal(logits, logits_pair)
        margin = (logits[:, 1] - logits[:, 0]).abs()
        pred = torch.from_numpy(case['pred'])
        assert torch.equal(logits.argmax(1)[margin > 1e-3], pred[margin > 1e-3])


def test_public_case_backbone_features(model_seed1):
    case = np.load(FIXTURES / 'fhd_public_case.npz')
    x = torch.from_numpy(case['input'])
    with torch.no_grad():
        feats = model_seed1.encoder(torch.cat([x[:, :3], x[:, 3:]]))
    for i, f in enumerate(feats):
        assert rel_err(f[:2], torch.from_numpy(case[f'feat{i}_A'])) < 1e-4
        assert rel_err(f[2:], torch.from_numpy(case[f'feat{i}_B'])) < 1e-4


@pytest.mark.parametrize('seed,batch,height,width', [(1, 1, 64, 64), (3, 2, 64, 96)])
def test_fast_equals_reference(seed, batch, height, width, model_seed1):
    model = model_seed1 if seed == 1 else filled_model(seed)
    x = case_input(seed, batch, height, width)
    with torch.no_grad():
        model.fast = False
        ref = model.forward_head(x)
        model.fast = True
        fast = model.forward_head(x)
    assert fast.shape == (batch, 2, height // 4, width // 4)
    assert rel_err(fast, ref) < 1e-5


def test_state_dict_matches_original_manifest():
    model = build_fhd('mit_b2')
    key_map = original_key_map(model)
    own = model.state_dict()
    expected = {k: s for k, s in MANIFEST.items() if not k.startswith('decode_head.conv_seg.')}
    assert len(MANIFEST) == 814 and len(expected) == 812
    assert sorted(key_map.values()) == sorted(expected)             # one-to-one
    for ours, orig in key_map.items():
        assert tuple(own[ours].shape) == expected[orig], ours
    assert sum(p.numel() for p in model.parameters()) == 29_109_074


def test_layernorm_eps_structure():
    model = build_fhd('mit_b2')
    key_map = original_key_map(model)
    eps = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            eps[key_map[name + '.weight'][len('backbone.backbone.'):-len('.weight')]] = m.eps
    assert len(eps) == 53
    for name, value in eps.items():
        small = name.startswith('patch_embed') or name.endswith('attn.norm')
        assert value == (1e-5 if small else 1e-6), name
    assert sum(1 for n in eps if n.endswith('attn.norm')) == 3 + 4 + 6   # sr > 1 in stages 1-3
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.eps == 1e-5 and m.momentum == 0.1
        if isinstance(m, nn.GELU):
            assert m.approximate == 'none'


def test_bilinear_upsampling_keeps_constants():
    # why the fold may add each level's bias before upsampling: with align_corners=False the
    # (clamped) edge rows/columns also get weights summing to one
    import torch.nn.functional as F
    for src, dst in [((2, 2), (16, 16)), ((3, 5), (12, 20)), ((4, 6), (32, 48))]:
        const = torch.full((1, 3, *src), 0.37)
        up = F.interpolate(const, size=dst, mode='bilinear', align_corners=False)
        assert torch.allclose(up, torch.full_like(up, 0.37), rtol=1e-6, atol=0)


@pytest.mark.skipif(not mit.ONEDNN_FUSED_OPS, reason='this torch build has no oneDNN fused ops')
def test_fused_inference_kernels_are_used_and_equal_the_plain_ops(model_seed1, monkeypatch):
    """Fast-path inference runs the encoder's dwconv+GELU and narrow linears through oneDNN's
    fused kernels; they must be taken (counted) and equal the plain ops they replace."""
    x = case_input(5, 2, 64, 64)
    calls = {'conv_gelu': 0, 'linear': 0}
    conv_gelu, onednn_linear = mit.conv_gelu, torch.ops.mkldnn._linear_pointwise

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(mit, 'conv_gelu', counting('conv_gelu', conv_gelu))
    monkeypatch.setattr(torch.ops.mkldnn, '_linear_pointwise', counting('linear', onednn_linear))
    model_seed1.fast = True
    with torch.no_grad():
        fused = model_seed1.forward_head(x)
    assert calls['conv_gelu'] == 16                   # every MiT-b2 block
    # at 64x64 the attention of stages 1-3 is folded (no q/proj linears); fc1/fc2 of stages 1-3
    # (sides <= 320) and the decoder's levels 1-3 go to oneDNN
    assert calls['linear'] == 2 * (3 + 4 + 6) + 3
    monkeypatch.setattr(mit, 'ONEDNN_FUSED_OPS', False)
    with torch.no_grad():
        plain = model_seed1.forward_head(x)
    assert calls['conv_gelu'] == 16
    assert rel_err(fused, plain) < 1e-5
    with torch.enable_grad():                          # autograd never sees the fused kernels
        model_seed1.forward_head(x)
    assert calls['conv_gelu'] == 16


@pytest.mark.parametrize('dim,heads,sr_ratio,size',
                         [(64, 1, 8, 32), (128, 2, 4, 16), (320, 5, 2, 8)])
def test_folded_attention_equals_plain_attention(dim, heads, sr_ratio, size):
    """Fast CPU inference folds the q and output projections into the keys and values; same
    function as SDPA on the projected queries."""
    torch.manual_seed(dim)
    attn = mit.EfficientSelfAttention(dim, heads, sr_ratio).eval()
    for p in attn.parameters():
        p.data.normal_(0, 0.1)
    x = torch.randn(2, size * size, dim)
    with torch.no_grad():
        attn.fast = False
        plain = attn(x, size, size)
        attn.fast = True
        folded = attn(x, size, size)
        assert attn._fold_pays(x, (size // sr_ratio) ** 2)
    assert rel_err(folded, plain) < 1e-5


def test_attention_fold_is_taken_only_where_it_saves_work():
    """At 256x256 (64 keys everywhere) folding pays in stages 1-2 only."""
    model = build_fhd('mit_b2')
    cases = [(stage.blocks[0].attn, 64 // 2 ** i) for i, stage in enumerate(model.encoder.stages)]
    with torch.no_grad():
        pays = [a._fold_pays(torch.zeros(1, s * s, a.q.in_features), 64) for a, s in cases]
    assert pays == [True, True, False, False]
    with torch.enable_grad():   # training keeps SDPA on the projected queries
        assert not cases[0][0]._fold_pays(torch.zeros(1, 64 * 64, 64), 64)


def test_model_cost_counts_parameters_and_both_paths(monkeypatch):
    """Size/cost helper: the original's parameter count less conv_seg, its 38.2 GFLOPs per
    256x256 pair on the reference path, and the fast path counted the same with and without the
    fused oneDNN kernels (they compute the same linears/convs)."""
    from models import model_cost
    model = build_fhd('mit_b2')
    cost = model_cost(model, size=(256, 256))
    assert cost['params'] == 29_109_074        # 29,109,332 less the unused conv_seg (258)
    assert abs(cost['flops_reference'] / 1e9 - 38.2) < 0.05
    assert cost['flops_fast'] < 0.5 * cost['flops_reference']
    monkeypatch.setattr(mit, 'ONEDNN_FUSED_OPS', False)
    assert model_cost(model, size=(256, 256))['flops_fast'] == cost['flops_fast']
