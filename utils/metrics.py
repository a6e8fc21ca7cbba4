"""Whole-split pixel metrics of the change class from one int64 confusion matrix.

The original `metrics.py` summed per-image counts in float32 and produced NaN on empty
denominators; here counts are exact int64 and every ratio with a zero denominator is 0.0
(e.g. precision when nothing is predicted as change), so the output never holds NaN.
"""
import json

import numpy as np
import torch

from utils.fileio import atomic_path

METRIC_NAMES = ('precision', 'recall', 'f1', 'iou', 'oa', 'kappa')
DISPLAY_NAMES = {'precision': 'Precision', 'recall': 'Recall', 'f1': 'F1', 'iou': 'IoU',
                 'oa': 'OA', 'kappa': 'Kappa'}


def _as_binary_tensor(x, what):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{what} must be a torch tensor or numpy array, got {type(x).__name__}')
    # Any non-zero value is change, as in the original (predictions/labels stored as 0/255).
    return (x != 0).reshape(-1).to(torch.int64)


def _ratio(num, den):
    return float(num) / float(den) if den else 0.0


class ConfusionMatrix:
    """Binary confusion matrix, `counts[label, pred]`, accumulated over any number of images."""

    def __init__(self):
        self.counts = torch.zeros(2, 2, dtype=torch.int64)

    def reset(self):
        self.counts.zero_()

    def update(self, pred, label):
        """Add one prediction/label pair (any shape, same number of elements; non-zero = change)."""
        pred = _as_binary_tensor(pred, 'pred')
        label = _as_binary_tensor(label, 'label')
        if pred.numel() != label.numel():
            raise ValueError(f'pred has {pred.numel()} pixels but label has {label.numel()}')
        pairs = torch.bincount(label * 2 + pred, minlength=4)
        self.counts += pairs.cpu().reshape(2, 2)
        return self

    def merge(self, other):
        self.counts += other.counts
        return self

    def compute(self):
        """Precision, recall, F1, IoU of the change class, OA and Cohen's kappa (fractions)."""
        tn, fp, fn, tp = (int(v) for v in self.counts.reshape(-1).tolist())
        total = tp + fp + fn + tn
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        oa = _ratio(tp + tn, total)
        # Chance agreement from the marginals; Python ints keep the products exact.
        expected = _ratio((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn), total * total)
        return {
            'precision': precision,
            'recall': recall,
            'f1': _ratio(2 * precision * recall, precision + recall),
            'iou': _ratio(tp, tp + fp + fn),
            'oa': oa,
            'kappa': _ratio(oa - expected, 1.0 - expected),
            'tp': tp, 'fp': fp, 'fn': fn, 'tn': tn,
        }


def format_table(metrics, title=None):
    """Metrics as a small text table, in percent with two decimals (as the paper reports)."""
    header = ' | '.join(f'{DISPLAY_NAMES[name]:>9}' for name in METRIC_NAMES)
    values = ' | '.join(f'{100.0 * metrics[name]:9.2f}' for name in METRIC_NAMES)
    rule = '-' * len(header)
    lines = [title] if title else []
    lines += [rule, header, rule, values, rule]
    if all(k in metrics for k in ('tp', 'fp', 'fn', 'tn')):
        lines.append('TP={tp} FP={fp} FN={fn} TN={tn}'.format(**metrics))
    return '\n'.join(lines)


def save_json_atomic(obj, path):
    """Write JSON to a temp file in the same folder, then rename (never a half-written file)."""
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
        f.write('\n')
