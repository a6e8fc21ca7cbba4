"""The training step equals the original's: the recorded two-step case (TRAIN_STEP_CASE.md).

The model and optimizer are built and stepped by train.py's own functions (build_param_groups,
build_optimizer, set_lr, train_step) with drop-path and dropout 0; the run and the comparisons
are in tools/reference_check.py (also run on GPU by tools/gpu_check.sh)."""
import numpy as np
import pytest
import torch

import train
from tools import reference_check as rc


@pytest.fixture(scope='module')
def case():
    return rc.load_train_step_case()


def report(checks):
    return '\n'.join(c.line() for c in checks)


def test_case_file_is_the_documented_one(case):
    assert rc.TRAIN_STEP_CASE.stat().st_size == 4_976_617          # TRAIN_STEP_CASE.md
    meta = case['meta']
    assert meta['iterations'] == [2000, 2001] and meta['seed'] == 5
    assert int((case['label'] == 255).sum()) == meta['label']['n_ignored'] == 144
    assert len(case['groups']) == 595


def test_float64_step_matches_the_original_tightly(case):
    checks = rc.compare_f64(rc.run_train_step_case(case, torch.float64), case)
    assert len(checks) == 15 and all(c.ok for c in checks), report(checks)


def test_float32_step_matches_the_original_coarsely(case):
    checks = rc.compare_f32(rc.run_train_step_case(case, torch.float32), case)
    assert len(checks) == 15 and all(c.ok for c in checks), report(checks)


def test_a_wrong_loss_denominator_is_caught(case, monkeypatch):
    """The case sees the CE mean over valid pixels only (its ignore block), even in float32."""
    def mean_over_valid(logits, label):
        return torch.nn.functional.cross_entropy(logits, label, ignore_index=train.IGNORE_INDEX)

    monkeypatch.setattr(train, 'compute_loss', mean_over_valid)
    checks = {c.name: c for c in rc.compare_f32(rc.run_train_step_case(case, torch.float32), case)}
    assert not checks['loss step 1'].ok and not checks['loss step 2'].ok
    assert checks['loss step 1'].value == pytest.approx(144 / (2 * 64 * 64), rel=0.05)


def test_loss_keeps_the_logits_dtype():
    """float64 logits give a float64 loss (a float32 cast alone breaks the tight case);
    only autocast's half-precision logits are computed in float32."""
    label = torch.randint(0, 2, (1, 8, 8))
    for dtype, expected in ((torch.float64, torch.float64), (torch.float32, torch.float32),
                            (torch.bfloat16, torch.float32), (torch.float16, torch.float32)):
        logits = torch.randn(1, 2, 8, 8).to(dtype)
        assert train.compute_loss(logits, label).dtype == expected, dtype


def test_slices_of_the_selection_parse():
    x = np.arange(24).reshape(4, 6)
    assert rc.parse_slice(None) == ()
    assert np.array_equal(x[rc.parse_slice('[:, 0:2]')], x[:, :2])
    assert np.array_equal(x[rc.parse_slice('[1:3]')], x[1:3])
