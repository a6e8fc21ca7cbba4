"""datasets.synthetic: the generated demo set and ensure_demo."""
import multiprocessing as mp
import os

import cv2
import numpy as np
import pytest

from datasets import ChangeDetectionDataset, ensure_demo, get_preset
from datasets import synthetic

SMALL = {'train': 4, 'val': 2, 'test': 3}


def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


def test_generate_deterministic_per_seed(tmp_path):
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        synthetic.generate(str(tmp_path / name), seed=seed, counts=SMALL, size=64)
    names = files(tmp_path / 'a')
    assert names == files(tmp_path / 'c') and len(names) == 3 * sum(SMALL.values())
    same = [(tmp_path / 'a' / n).read_bytes() == (tmp_path / 'b' / n).read_bytes() for n in names]
    images = [n for n in names if '/label/' not in n]    # empty labels may coincide
    other = [(tmp_path / 'a' / n).read_bytes() == (tmp_path / 'c' / n).read_bytes() for n in images]
    assert all(same) and not any(other)


def test_generated_formats_match_real_data(tmp_path):
    synthetic.generate(str(tmp_path), seed=0, counts={'train': 12}, size=64)
    changed = 0
    for name in sorted(os.listdir(tmp_path / 'train' / 'A')):
        assert name.endswith('.png')
        a = cv2.imread(str(tmp_path / 'train' / 'A' / name), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / 'train' / 'B' / name), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(tmp_path / 'train' / 'label' / name), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape == (64, 64, 3) and a.dtype == np.uint8
        assert label.shape == (64, 64) and set(np.unique(label)) <= {0, 255}
        changed += label.any()
        assert not np.array_equal(a, b)      # distractors change B even without change
    assert 3 <= changed <= 12
    ds = ChangeDetectionDataset(get_preset('custom', data_root=tmp_path), 'train')
    assert len(ds) == 12 and ds[(0, 0)]['img'].shape == (2, 256, 256, 3)   # uint8 A, B


def test_changes_are_buildings_and_distractors_are_not():
    rng = np.random.default_rng(7)
    scene = synthetic.make_scene(rng, 128)
    scene['buildings'] = [b for b in scene['buildings'] if b['status'] == 'both']
    assert not synthetic.change_mask(scene).any()
    a, b = synthetic.render(scene, 0, rng), synthetic.render(scene, 1, rng)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2      # yet the images differ
    fractions = [synthetic.make_pair(0, 0, i, 128)[2].mean() / 255 for i in range(40)]
    assert 0.01 < np.mean(fractions) < 0.15 and np.mean(np.array(fractions) > 0) > 0.5


def _ensure(root):
    ensure_demo(root, counts=SMALL, size=32)


def test_ensure_demo_concurrent_and_atomic(tmp_path):
    root = tmp_path / 'data' / 'demo'
    ctx = mp.get_context('fork')
    procs = [ctx.Process(target=_ensure, args=(str(root),)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(files(root)) == 3 * sum(SMALL.values())
    assert [n for n in os.listdir(root.parent) if not n.startswith('.demo.lock')] == ['demo']
    mtime = os.path.getmtime(root / 'train' / 'A' / 'train_0000.png')
    _ensure(root)                              # present: left untouched
    assert os.path.getmtime(root / 'train' / 'A' / 'train_0000.png') == mtime


def test_demo_preset_generates_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, 'DEFAULT_COUNTS', SMALL)
    preset = get_preset('demo', data_root=tmp_path / 'demo')
    ds = ChangeDetectionDataset(preset, 'val', train=False)
    assert len(ds) == 2 and ds[0]['img'].shape == (6, 128, 128)


def test_cli(tmp_path, capsys):
    out = str(tmp_path / 'd')
    args = ['--out', out, '--n-train', '2', '--n-val', '1', '--n-test', '1', '--size', '32']
    assert synthetic.main(args) == 0
    assert synthetic.main(args) == 2
    assert 'already exists' in capsys.readouterr().err
    assert synthetic.main(args + ['--seed', '1', '--force']) == 0
    assert len(files(out)) == 12 and not [n for n in os.listdir(tmp_path) if n != 'd']
    assert synthetic.main(['--out', out, '--size', '8', '--force']) == 2
