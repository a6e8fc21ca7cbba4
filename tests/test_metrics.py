"""utils.metrics against a confusion matrix computed by hand."""
import json
import math
import os

import numpy as np
import pytest
import torch

from utils.metrics import ConfusionMatrix, format_table, save_json_atomic

# 4x4 image: TP=3, FP=2, FN=1, TN=10.
LABEL = np.array([[1, 1, 1, 1],
                  [0, 0, 0, 0],
                  [0, 0, 0, 0],
                  [0, 0, 0, 0]])
PRED = np.array([[1, 1, 1, 0],
                 [1, 1, 0, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])


def test_hand_computed_confusion_matrix_and_kappa():
    m = ConfusionMatrix().update(PRED, LABEL).compute()
    assert (m['tp'], m['fp'], m['fn'], m['tn']) == (3, 2, 1, 10)
    assert m['precision'] == pytest.approx(3 / 5)
    assert m['recall'] == pytest.approx(3 / 4)
    assert m['f1'] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m['iou'] == pytest.approx(3 / 6)
    assert m['oa'] == pytest.approx(13 / 16)
    # Chance agreement: (pred+ * label+ + pred- * label-) / N^2 = (5*4 + 11*12) / 256.
    expected = (5 * 4 + 11 * 12) / 256
    assert m['kappa'] == pytest.approx((13 / 16 - expected) / (1 - expected))
    assert m['kappa'] == pytest.approx(7 / 13)
    assert all(isinstance(m[k], int) for k in ('tp', 'fp', 'fn', 'tn'))


def test_accumulates_tensors_arrays_and_255_masks():
    cm = ConfusionMatrix()
    cm.update(torch.from_numpy(PRED), torch.from_numpy(LABEL))   # tensors
    cm.update(PRED.astype(np.uint8) * 255, LABEL * 255)            # 0/255 arrays: non-zero = change
    assert cm.counts.dtype == torch.int64
    m = cm.compute()
    assert (m['tp'], m['fp'], m['fn'], m['tn']) == (6, 4, 2, 20)
    assert m['precision'] == pytest.approx(3 / 5)     # ratios unchanged by doubling every count


def test_zero_denominators_give_zero_not_nan():
    empty = ConfusionMatrix().compute()
    no_change = ConfusionMatrix().update(np.zeros((8, 8)), np.zeros((8, 8))).compute()
    for m in (empty, no_change):
        assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
        for k in ('precision', 'recall', 'f1', 'iou', 'kappa'):
            assert m[k] == 0.0
    assert no_change['oa'] == 1.0 and no_change['tn'] == 64


def test_large_counts_stay_exact():
    cm = ConfusionMatrix()
    cm.counts += torch.tensor([[3 * 2**40 + 1, 5], [7, 2**33 + 3]])   # beyond float32/int32
    m = cm.compute()
    assert m['tn'] == 3 * 2**40 + 1 and m['tp'] == 2**33 + 3
    assert m['recall'] == pytest.approx((2**33 + 3) / (2**33 + 10))


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match='pixels'):
        ConfusionMatrix().update(np.zeros(4), np.zeros(5))


def test_table_in_percent_with_two_decimals():
    table = format_table(ConfusionMatrix().update(PRED, LABEL).compute(), 'demo test')
    assert 'demo test' in table
    for value in ('60.00', '75.00', '66.67', '50.00', '81.25', '53.85'):
        assert value in table
    assert 'TP=3 FP=2 FN=1 TN=10' in table


def test_json_written_atomically(tmp_path):
    path = tmp_path / 'sub' / 'metrics.json'
    save_json_atomic({'f1': 0.5}, str(path))
    save_json_atomic({'f1': 0.25}, str(path))
    assert json.loads(path.read_text()) == {'f1': 0.25}
    assert os.listdir(path.parent) == ['metrics.json']     # no temp file left behind
    mask = os.umask(0o022)
    try:
        save_json_atomic({'f1': 1.0}, str(path))
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644            # not mkstemp's private 0600
