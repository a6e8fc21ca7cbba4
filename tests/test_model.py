"""FHD model numerics: the recorded reference case of the original code in every order of
computation (reference, decoder fold, the inference module), fused CPU kernels, attention fold."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from models import build_fhd, cpu_kernels, for_inference, mit, original_key_map
from models.cost import reference_path
from models.inference import FoldedAttention
from models.reference_case import case_input, load_manifest
from reference_model import filled_reference_model

FIXTURES = Path(__file__).parent / 'fixtures'
MANIFEST = load_manifest(FIXTURES / 'fhd_mit_b2_state_dict.json')


def rel_err(new, ref):
    return ((new - ref).abs().max() / ref.abs().max()).item()


filled_model = filled_reference_model


@pytest.fixture(scope='module')
def model_seed1():
    return filled_model(seed=1)


def all_paths(model):
    """The same weights in every order of computation the project has."""
    return {'reference': reference_path(model).eval(), 'folded': model.eval(),
            'inference': for_inference(model), 'inference plain': for_inference(model, kernels='plain')}


def test_public_reference_case(model_seed1):
    case = np.load(FIXTURES / 'fhd_public_case.npz')
    x = torch.from_numpy(case['input'])
    assert torch.equal(x, case_input(1, 2, 64, 64))          # the documented input recipe
    for name, model in all_paths(model_seed1).items():
        with torch.no_grad():
            head = model.forward_head(x)
            logits = model(x)
            logits_pair = model((x[:, :3], x[:, 3:]))
        assert rel_err(head, torch.from_numpy(case['head_logits'])) < 1e-4, name
        assert rel_err(logits, torch.from_numpy(case['logits'])) < 1e-4, name
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
def test_every_path_equals_reference(seed, batch, height, width, model_seed1):
    model = model_seed1 if seed == 1 else filled_model(seed)
    x = case_input(seed, batch, height, width)
    paths = all_paths(model)
    with torch.no_grad():
        ref = paths.pop('reference').forward_head(x)
        for name, net in paths.items():
            out = net.forward_head(x)
            assert out.shape == (batch, 2, height // 4, width // 4)
            assert rel_err(out, ref) < 1e-5, name


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


@pytest.mark.skipif(not cpu_kernels.onednn_available(), reason='this torch build has no oneDNN fused ops')
def test_fused_cpu_kernels_are_used_and_equal_the_plain_ops(model_seed1, monkeypatch):
    """The CPU inference module runs every conv and linear through oneDNN's kernels with
    weights packed once by the transform (dwconv+GELU, conv1x1+ReLU fused): they must be taken
    (counted, packed) and equal the plain ops; under autograd, autocast and tracing the same
    module falls back to the plain ops."""
    x = case_input(5, 2, 64, 64)
    calls = {'conv': 0, 'conv_add': 0, 'linear': 0}
    unpacked = []
    conv, linear = torch.ops.mkldnn._convolution_pointwise, torch.ops.mkldnn._linear_pointwise

    def counting(name, fn, weight_arg):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            if not args[weight_arg].is_mkldnn:
                unpacked.append((name, tuple(args[weight_arg].shape)))
            return fn(*args, **kwargs)
        return wrapped

    class CountingConv:                        # the op packet with its .binary overload
        __call__ = staticmethod(counting('conv', conv, 1))
        binary = staticmethod(counting('conv_add', conv.binary, 2))

    monkeypatch.setattr(torch.ops.mkldnn, '_convolution_pointwise', CountingConv())
    monkeypatch.setattr(torch.ops.mkldnn, '_linear_pointwise', counting('linear', linear, 1))
    fused_net = for_inference(model_seed1)
    with torch.no_grad():
        fused = fused_net.forward_head(x)
    # encoder: 16 MiT-b2 blocks (dwconv+GELU), 4 patch embeddings, 13 spatial reductions (stages
    # 1-3); decoder: per level 2 masks + 2 x 6 TSA conv+ReLUs + 2 x 2 gate convs = 18, x 4
    # levels, the classifier (one image group at this size); each TSA's bottleneck as conv +
    # add + ReLU (8)
    assert calls['conv'] == 16 + 4 + 13 + 4 * 18 + 1 and calls['conv_add'] == 8
    # at 64x64 the attention of stages 1-3 is folded (no q/proj linears): kv of stages 1-3,
    # q/kv/proj of stage 4, fc1 and fc2 of all 16 blocks, the projections of levels 2-4 (level
    # 1's accumulates into their sum as addmm_) and the context half of the 8 TSA bottlenecks
    assert calls['linear'] == (3 + 4 + 6) + 3 * 3 + 2 * 16 + 3 + 8
    assert not unpacked
    seen = dict(calls)
    with torch.no_grad():
        plain = for_inference(model_seed1, kernels='plain').forward_head(x)
    assert calls == seen
    assert rel_err(fused, plain) < 1e-5
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        fused_net.forward_head(x)
    fused_net.forward_head(x.clone().requires_grad_(True))
    torch.jit.trace(fused_net, x, check_trace=False)   # (its check re-runs eager Python)
    assert calls == seen                                # none of these reached a fused kernel


def test_image_groups_split_the_batch_evenly_within_the_budget():
    from models.inference import CACHE_GROUP_BYTES, image_group_size
    per_image = CACHE_GROUP_BYTES // 4 // 4            # float32 values: 4 images per budget
    assert image_group_size(torch.zeros(16), per_image) == 4
    assert image_group_size(torch.zeros(5), 2 * per_image) == 2         # 3 groups: 2, 2, 1
    assert image_group_size(torch.zeros(8), 8 * per_image) == 1         # one image over budget
    assert image_group_size(torch.zeros(3), 1) == 3                     # all fit: one group
    assert image_group_size(torch.zeros(9, dtype=torch.float64), per_image) == 2   # 8-byte values


@pytest.mark.skipif(not cpu_kernels.onednn_available(), reason='this torch build has no oneDNN fused ops')
def test_image_groups_change_no_output(model_seed1, monkeypatch):
    """The CPU module runs encoder stages and the decoder's 768-channel tail over groups of
    images; with a budget of one byte every image is its own group. Same logits as one group,
    as the plain-op module and as the reference path."""
    import models.inference as inference
    x = case_input(7, 3, 64, 96)
    net = for_inference(model_seed1)
    calls = []
    for name in ('encoder.stages.0.blocks.0', 'encoder.stages.3.blocks.0', 'decoder.classifier'):
        net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    with torch.no_grad():
        whole = net(x)
        assert len(calls) == 3                          # one group each
        monkeypatch.setattr(inference, 'CACHE_GROUP_BYTES', 1)
        single = net(x)
        assert len(calls) == 3 + (6 + 6 + 3)            # one group per image (both dates)
        plain = for_inference(model_seed1, kernels='plain')(x)
        ref = reference_path(model_seed1).eval()(x)
    assert rel_err(single, whole) < 1e-5               # GEMM rounding differs with the rows
    assert rel_err(single, plain) < 1e-5 and rel_err(single, ref) < 1e-5


def attention_pair(dim, heads, sr_ratio):
    torch.manual_seed(dim)
    attn = mit.EfficientSelfAttention(dim, heads, sr_ratio).eval()
    for p in attn.parameters():
        p.data.normal_(0, 0.1)
    return attn, FoldedAttention(attn, fused=False, fold=True)


@pytest.mark.parametrize('dim,heads,sr_ratio,size',
                         [(64, 1, 8, 32), (128, 2, 4, 16), (320, 5, 2, 8)])
def test_folded_attention_equals_plain_attention(dim, heads, sr_ratio, size):
    """CPU inference folds the q and output projections into the keys and values; same
    function as SDPA on the projected queries."""
    attn, folded = attention_pair(dim, heads, sr_ratio)
    x = torch.randn(2, size * size, dim)
    assert folded._fold_pays(size * size, dim, (size // sr_ratio) ** 2)
    with torch.no_grad():
        assert rel_err(folded(x, size, size), attn(x, size, size)) < 1e-5


def test_attention_fold_is_taken_only_where_it_saves_work():
    """At 256x256 (64 keys everywhere) folding pays in stages 1-2 only."""
    net = for_inference(build_fhd('mit_b2'))
    cases = [(stage.blocks[0].attn, 64 // 2 ** i, dim)
             for i, (stage, dim) in enumerate(zip(net.encoder.stages, (64, 128, 320, 512)))]
    assert [a._fold_pays(s * s, dim, 64) for a, s, dim in cases] == [True, True, False, False]
    assert not for_inference(build_fhd('mit_b0'), kernels='plain').encoder.stages[0].blocks[0].attn.fold


def test_model_cost_counts_parameters_and_every_path():
    """Size/cost helper: the original's parameter count less conv_seg, its 38.2 GFLOPs per
    256x256 pair on the reference path; the fold removes half; the fused CPU kernels are counted
    as the linears/convs they compute."""
    from models import model_cost
    from models.cost import count_flops
    model = build_fhd('mit_b2')
    cost = model_cost(model, size=(256, 256))
    assert cost['params'] == 29_109_074        # 29,109,332 less the unused conv_seg (258)
    assert abs(cost['flops_reference'] / 1e9 - 38.2) < 0.05
    assert cost['flops_inference'] < cost['flops_folded'] < 0.55 * cost['flops_reference']
    plain = for_inference(model, kernels='plain')
    for stage in plain.encoder.stages:         # the attention fold as in the fused module
        for block in stage.blocks:
            block.attn.fold = True
    assert count_flops(plain, (256, 256)) == cost['flops_inference']
