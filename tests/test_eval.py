"""eval.py: model evaluation vs --pred-dir scoring of the same predictions, written files
(per_image.csv included), error-map colours, and one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import eval as fhd_eval
from utils.visualize import FN_COLOR, FP_COLOR, TN_COLOR, TP_COLOR, error_map, overlay, panel

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = ('precision', 'recall', 'f1', 'iou', 'oa', 'kappa', 'tp', 'fp', 'fn', 'tn', 'num_images')


def test_error_map_colours():
    pred = np.array([[1, 1], [0, 0]])
    label = np.array([[1, 0], [1, 0]])
    emap = error_map(pred, label)               # BGR
    assert tuple(emap[0, 0]) == TP_COLOR == (255, 255, 255)     # TP white
    assert tuple(emap[0, 1]) == FP_COLOR == (0, 0, 255)         # FP red
    assert tuple(emap[1, 0]) == FN_COLOR == (0, 255, 0)         # FN green
    assert tuple(emap[1, 1]) == TN_COLOR == (0, 0, 0)           # TN black


def test_panel_and_overlay():
    img = np.full((8, 10, 3), 50, np.uint8)
    mask = np.zeros((8, 10), np.int64)
    mask[:2] = 1
    pic = panel(img, img, mask, mask, gap=4)
    assert pic.shape == (8, 4 * 10 + 3 * 4, 3)
    assert (pic[0, 28:38] == 255).all() and (pic[5, 28:38] == 0).all()   # masks shown white/black
    over = overlay(img, mask)
    assert tuple(over[0, 0]) == (25, 25, 152) and tuple(over[5, 0]) == (50, 50, 50)


def test_prediction_names_are_lossless_png():
    assert fhd_eval.prediction_name('sub/x_1.jpg') == str(Path('sub/x_1.png'))
    assert fhd_eval.prediction_name('y.png') == 'y.png'


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    """A DSIFN-like custom split: .jpg images, .png labels, two image sizes."""
    root = tmp_path_factory.mktemp('cd')
    rng = np.random.default_rng(0)
    for name, (h, w) in {'p0': (64, 64), 'p2': (64, 96)}.items():
        a = rng.integers(0, 256, (h, w, 3), np.uint8)
        b = a.copy()
        label = np.zeros((h, w), np.uint8)
        label[10:30, 20:50] = 255
        b[10:30, 20:50] = 255 - b[10:30, 20:50]
        for sub, img, suffix in (('A', a, '.jpg'), ('B', b, '.jpg'), ('label', label, '.png')):
            (root / 'test' / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / 'test' / sub / (name + suffix)), img)
    return root


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A checkpoint laid out like the original release: mmcv dict, original key names with the
    DataParallel 'module.' prefix, and the unused decode_head.conv_seg."""
    from models import build_fhd, original_key_map
    torch.manual_seed(0)
    model = build_fhd(backbone='mit_b0')
    names = original_key_map(model)
    state = {'module.' + names[k]: v for k, v in model.state_dict().items()}
    state['module.decode_head.conv_seg.weight'] = torch.zeros(2, 128, 1, 1)
    state['module.decode_head.conv_seg.bias'] = torch.zeros(2)
    path = tmp_path_factory.mktemp('ckpt') / 'fhd_b0.pth'
    torch.save({'meta': {'CLASSES': ('background', 'change')}, 'state_dict': state}, path)
    return path


@pytest.fixture(scope='module')
def evaluated(dataset_root, checkpoint, tmp_path_factory):
    """One real run of the CLI with a model (the expensive part, shared by the tests below)."""
    show = tmp_path_factory.mktemp('show') / 'label'
    cmd = [sys.executable, str(REPO / 'eval.py'), '--dataset', 'custom', '--data-root', str(dataset_root),
           '--checkpoint', str(checkpoint), '--backbone', 'mit_b0', '--show-dir', str(show), '--color',
           '--device', 'cpu', '--batch-size', '2', '--num-workers', '0']
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=show.parent)
    assert result.returncode == 0, result.stderr
    return show, result.stdout


def test_eval_writes_predictions_colour_maps_and_metrics(evaluated, dataset_root):
    show, stdout = evaluated
    metrics = json.loads((show / 'metrics.json').read_text())
    assert metrics['num_images'] == 2 and metrics['dataset'] == 'custom' and metrics['split'] == 'test'
    assert 'Precision' in stdout and 'Kappa' in stdout
    counts = dict(tp=0, fp=0, fn=0, tn=0)
    for name in ('p0', 'p2'):
        pred = cv2.imread(str(show / f'{name}.png'), cv2.IMREAD_UNCHANGED)    # .jpg input -> .png
        label = cv2.imread(str(dataset_root / 'test' / 'label' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert pred.shape == label.shape and set(np.unique(pred)) <= {0, 255}
        p, t = pred > 0, label > 0
        counts['tp'] += int((p & t).sum())
        counts['fp'] += int((p & ~t).sum())
        counts['fn'] += int((~p & t).sum())
        counts['tn'] += int((~p & ~t).sum())
        emap = cv2.imread(str(show / 'error_map' / f'{name}.png'))
        np.testing.assert_array_equal(emap, error_map(p, t))
        assert cv2.imread(str(show / 'panel' / f'{name}.png')).shape == (label.shape[0], 4 * label.shape[1] + 12, 3)
    assert {k: metrics[k] for k in counts} == counts          # metrics from exactly these predictions
    assert not list(show.glob('*.jpg'))


def read_per_image(path):
    import csv
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_per_image_csv_next_to_metrics(evaluated, dataset_root):
    show, _ = evaluated
    metrics = json.loads((show / 'metrics.json').read_text())
    rows = read_per_image(show / 'per_image.csv')
    assert metrics['per_image_csv'] == str(show / 'per_image.csv')
    assert [r['name'] for r in rows] == ['p0.jpg', 'p2.jpg']
    assert list(rows[0]) == ['name', 'tp', 'fp', 'fn', 'tn', 'precision', 'recall', 'f1', 'iou']
    for key in ('tp', 'fp', 'fn', 'tn'):
        assert sum(int(r[key]) for r in rows) == metrics[key]
    for r in rows:
        pred = cv2.imread(str(show / (r['name'][:-4] + '.png')), cv2.IMREAD_UNCHANGED) > 0
        label = cv2.imread(str(dataset_root / 'test' / 'label' / (r['name'][:-4] + '.png')), 0) > 0
        tp, fp, fn = int((pred & label).sum()), int((pred & ~label).sum()), int((~pred & label).sum())
        assert (int(r['tp']), int(r['fp']), int(r['fn'])) == (tp, fp, fn)
        assert int(r['tn']) == pred.size - tp - fp - fn
        assert float(r['f1']) == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
        assert r['precision'] == ('' if tp + fp == 0 else r['precision'])


def test_per_image_scores_undefined_cells():
    assert fhd_eval.image_scores(0, 0, 0, 10) == dict(precision=None, recall=None, f1=None, iou=None)
    missed = fhd_eval.image_scores(0, 0, 5, 10)          # change nowhere predicted: a failure
    assert missed == dict(precision=None, recall=0.0, f1=0.0, iou=0.0)
    assert fhd_eval.image_scores(3, 1, 2, 10)['f1'] == pytest.approx(6 / 9)


def test_pred_dir_scores_the_same_as_the_model_run(evaluated, dataset_root, tmp_path, monkeypatch):
    show, _ = evaluated
    monkeypatch.chdir(tmp_path)                               # default output: output_path/<dataset>/
    assert fhd_eval.main(['--dataset', 'custom', '--data-root', str(dataset_root), '--pred-dir', str(show),
                          '--num-workers', '2', '--batch-size', '2']) == 0     # workers + grouping
    scored = json.loads((tmp_path / 'output_path' / 'custom' / 'metrics.json').read_text())
    original = json.loads((show / 'metrics.json').read_text())
    assert {k: scored[k] for k in METRIC_KEYS} == {k: original[k] for k in METRIC_KEYS}
    assert read_per_image(tmp_path / 'output_path' / 'custom' / 'per_image.csv') == \
        read_per_image(show / 'per_image.csv')


def test_pred_dir_lists_missing_predictions(evaluated, dataset_root, tmp_path, capsys):
    show, _ = evaluated
    partial = tmp_path / 'partial'
    partial.mkdir()
    (partial / 'p2.png').write_bytes((show / 'p2.png').read_bytes())
    rc = fhd_eval.main(['--dataset', 'custom', '--data-root', str(dataset_root), '--pred-dir', str(partial),
                        '--output-dir', str(tmp_path / 'o'), '--num-workers', '0'])
    err = capsys.readouterr().err
    assert rc == 2 and err.count('\n') == 1 and err.startswith('error: 1 of 2 predictions missing')
    assert 'p0.png' in err and 'p2.png' not in err and not (tmp_path / 'o' / 'metrics.json').exists()


def test_missing_checkpoint_and_dataset_are_one_line_errors(dataset_root, tmp_path, capsys):
    rc = fhd_eval.main(['--dataset', 'custom', '--data-root', str(dataset_root),
                        '--checkpoint', str(tmp_path / 'nope.pth')])
    err = capsys.readouterr().err
    assert rc == 2 and 'checkpoint not found' in err and 'ZSVOS/FHD' in err and err.count('\n') == 1
    rc = fhd_eval.main(['--dataset', 'custom', '--data-root', str(tmp_path / 'nodata'), '--pred-dir', str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith('error: ') and err.count('\n') == 1
