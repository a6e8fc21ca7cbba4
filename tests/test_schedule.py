"""LR schedule and optimizer parameter groups against the original's numbers (FHD_REFERENCE §3.2-3.3)."""
import json
import os
from collections import Counter

import pytest
import torch

from utils.schedule import build_param_groups, classify_params, param_rule, poly_warmup_lr, set_lr

HERE = os.path.dirname(__file__)
MANIFEST = os.path.join(HERE, 'fixtures', 'fhd_mit_b2_state_dict.json')


def mmcv_reference_lr(i, base=6e-5, max_iters=80000, warmup_iters=1500, ratio=1e-6):
    """The formula as written in the reference, step by step (independent of the closed form)."""
    poly = base * (1 - i / max_iters) ** 1.0
    if i < warmup_iters:
        return poly * (1 - (1 - i / warmup_iters) * (1 - ratio))
    return poly


@pytest.mark.parametrize('i,expected', [
    (0, 6.0e-11), (750, 2.9719e-5), (1499, 5.8837e-5), (1500, 5.8875e-5),
    (40000, 3.0e-5), (79999, 7.5e-10)])
def test_backbone_lr_matches_reference_values(i, expected):
    lr = poly_warmup_lr(i, 6e-5, 80000)
    assert lr == pytest.approx(expected, rel=2e-4)
    assert lr == pytest.approx(mmcv_reference_lr(i), rel=1e-12)


@pytest.mark.parametrize('i', [0, 1, 750, 1500, 40000, 79999])
def test_head_lr_is_ten_times_backbone(i):
    assert poly_warmup_lr(i, 6e-4, 80000) == pytest.approx(10 * mmcv_reference_lr(i), rel=1e-12)


def test_lr_at_iteration_one_and_no_warmup():
    # i=1: poly(1) * (1/1500 + 1e-6 * (1 - 1/1500))
    expected = 6e-5 * (1 - 1 / 80000) * (1 / 1500 + 1e-6 * (1 - 1 / 1500))
    assert poly_warmup_lr(1, 6e-5, 80000) == pytest.approx(expected, rel=1e-12)
    assert poly_warmup_lr(0, 6e-5, 100, warmup_iters=0) == pytest.approx(6e-5)
    assert poly_warmup_lr(100, 6e-5, 100, warmup_iters=0) == 0.0
    assert poly_warmup_lr(50, 1.0, 100, warmup_iters=0, min_lr=0.1) == pytest.approx(0.55)


def test_rule_order_first_match_wins():
    # 'head' matches 'decode_head' before 'norm': head BN/norm tensors keep decay, lr x10.
    assert param_rule('decode_head.linear_fuse.bn.weight') == dict(lr_mult=10.0, decay_mult=1.0)
    assert param_rule('backbone.backbone.block1.0.attn.norm.weight') == dict(lr_mult=1.0, decay_mult=0.0)
    assert param_rule('backbone.backbone.block1.0.attn.sr.bias') == dict(lr_mult=1.0, decay_mult=1.0)
    assert param_rule('backbone.backbone.pos_block.0.proj.weight') == dict(lr_mult=1.0, decay_mult=0.0)


def _counts(rules):
    c = Counter((r['lr_mult'], r['decay_mult']) for r in rules)
    return c[(1.0, 0.0)], c[(1.0, 1.0)], c[(10.0, 1.0)]


def test_manifest_counts_106_226_263():
    manifest = json.load(open(MANIFEST))
    keys = [e['key'] for e in manifest['entries'] if e['kind'] == 'parameter']
    assert len(keys) == 595
    assert _counts([param_rule(k) for k in keys]) == (106, 226, 263)


def test_model_counts_106_226_261_and_merged_groups():
    from models import build_fhd, original_key_map
    model = build_fhd(backbone='mit_b2')
    key_map = original_key_map(model)
    table = classify_params(model, key_map)
    # The original's counts minus the unused decode_head.conv_seg (weight, bias).
    assert _counts(table.values()) == (106, 226, 261)
    manifest = json.load(open(MANIFEST))
    original_rules = {e['key']: param_rule(e['key']) for e in manifest['entries']}
    for name, rule in table.items():
        assert rule['original'] in original_rules, name
        assert original_rules[rule['original']] == dict(lr_mult=rule['lr_mult'],
                                                        decay_mult=rule['decay_mult'])

    groups = build_param_groups(model, 6e-5, 0.01, key_map)
    assert len(groups) == 3
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))
    settings = sorted((len(g['params']), g['lr'], g['weight_decay']) for g in groups)
    assert settings == sorted([(106, 6e-5, 0.0), (226, 6e-5, 0.01), (261, pytest.approx(6e-4), 0.01)])
    # The first group is a backbone group, so the logged lr is the backbone lr (as the original).
    assert groups[0]['lr_mult'] == 1.0

    opt = torch.optim.AdamW(groups, lr=6e-5)
    lr = set_lr(opt, 750, 6e-5, 80000)
    assert lr == pytest.approx(2.9719e-5, rel=2e-4)
    assert max(g['lr'] for g in opt.param_groups) == pytest.approx(10 * lr)
