"""datasets.prepare on fake raw downloads in each dataset's official layout (small images)."""
import os

import cv2
import numpy as np
import pytest

from datasets import ChangeDetectionDataset, DatasetError, get_preset
from datasets import prepare as P


def fake_raw(root, name, n=2, size=64, colour_label=False):
    """A raw download of dataset `name` with random images and a square change."""
    layout = P.RAW[name]
    a_dir, b_dir, label_dir = layout['folders']
    rng = np.random.default_rng(0)
    for split in layout['splits']:
        for folder in layout['folders']:
            os.makedirs(os.path.join(root, split, folder), exist_ok=True)
        for i in range(n):
            stem = f'{split}_{i}' if name != 'dsifn' else str(i)
            for folder in (a_dir, b_dir):
                cv2.imwrite(os.path.join(root, split, folder, stem + layout['img_ext']),
                            rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            label = np.zeros((size, size, 3) if colour_label else (size, size), np.uint8)
            label[:size // 2, :size // 4] = (0, 0, 255) if colour_label else 255
            label[size // 2:, :size // 4] = (0, 255, 0) if colour_label else 255
            ext = '.tif' if name == 'dsifn' and split == 'test' else '.png'
            cv2.imwrite(os.path.join(root, split, label_dir, stem + ext), label)
    return root


@pytest.mark.parametrize('name', ['levir', 'levir+', 's2looking'])
def test_tiled_datasets(tmp_path, name):
    src = fake_raw(tmp_path / 'raw', name, colour_label=name == 's2looking')
    dst = tmp_path / 'out'
    summary = P.prepare(name, str(src), str(dst), tile=32, progress=False)
    assert list(summary) == list(P.RAW[name]['splits'])
    assert all(v == (2, 8, 8) for v in summary.values())      # 2 images -> 2 x 4 tiles
    assert not (dst / 'val').exists() or name != 'levir+'       # LEVIR-CD+: no val created
    split = P.RAW[name]['splits'][0]
    names = sorted(os.listdir(dst / split / 'A'))
    assert names[:4] == [f'{split}_0_0_0.png', f'{split}_0_0_1.png', f'{split}_0_1_0.png',
                         f'{split}_0_1_1.png']
    raw_a = cv2.imread(str(src / split / P.RAW[name]['folders'][0] / f'{split}_0.png'))
    tile = cv2.imread(str(dst / split / 'A' / f'{split}_0_1_0.png'))
    assert np.array_equal(tile, raw_a[32:64, 0:32])
    label = cv2.imread(str(dst / split / 'label' / f'{split}_0_1_0.png'), cv2.IMREAD_UNCHANGED)
    assert label.ndim == 2 and set(np.unique(label)) == {0, 255}       # colour union -> 0/255
    assert (label[:, :16] == 255).all() and (label[:, 16:] == 0).all()
    preset = get_preset(name, data_root=dst)
    for split in ('train', 'val', 'test'):
        assert len(ChangeDetectionDataset(preset, split, train=False)) == 8


def test_default_tile_is_256_and_dsifn_untiled():
    assert [P.RAW[n]['tile'] for n in ('levir', 'levir+', 's2looking', 'dsifn')] == \
        [256, 256, 256, None]


def test_dsifn_copies_jpg_and_converts_tif_masks(tmp_path):
    src = fake_raw(tmp_path / 'raw', 'dsifn', size=48)
    dst = tmp_path / 'out'
    assert P.prepare('dsifn', str(src), str(dst), progress=False)['test'] == (2, 2, 2)
    assert (dst / 'test' / 'A' / '0.jpg').read_bytes() == (src / 'test' / 't1' / '0.jpg').read_bytes()
    label = cv2.imread(str(dst / 'test' / 'label' / '1.png'), cv2.IMREAD_UNCHANGED)
    assert label.shape == (48, 48) and set(np.unique(label)) == {0, 255}
    ds = ChangeDetectionDataset(get_preset('dsifn', data_root=dst), 'test', train=False)
    assert len(ds) == 2 and ds[0]['label'].shape == (48, 48)


def test_idempotent_rerun_skips_finished_tiles(tmp_path):
    src = fake_raw(tmp_path / 'raw', 'levir')
    dst = tmp_path / 'out'
    P.prepare('levir', str(src), str(dst), tile=32, progress=False)
    tile = dst / 'train' / 'B' / 'train_1_0_1.png'
    mtime = os.path.getmtime(tile)
    os.remove(dst / 'val' / 'label' / 'val_0_1_1.png')
    summary = P.prepare('levir', str(src), str(dst), tile=32, progress=False)
    assert summary['train'] == (2, 8, 0) and summary['val'] == (2, 8, 4)
    assert os.path.getmtime(tile) == mtime and (dst / 'val' / 'label' / 'val_0_1_1.png').exists()
    assert not [f for d, _, fs in os.walk(dst) for f in fs if f.startswith('.')]


def test_src_may_contain_the_dataset_folder(tmp_path):
    fake_raw(tmp_path / 'download' / 'S2Looking', 's2looking', n=1)
    summary = P.prepare('s2looking', str(tmp_path / 'download'), str(tmp_path / 'o'), tile=32,
                        progress=False)
    assert summary['val'] == (1, 4, 4)


def test_wrong_layout_names_expected_folder(tmp_path):
    src = fake_raw(tmp_path / 'raw', 'levir', n=1)
    with pytest.raises(DatasetError, match=r'does not look like S2Looking: expected folder '
                       r'\S+/train/Image1'):
        P.prepare('s2looking', str(src), str(tmp_path / 'o'))
    os.rename(src / 'val', src / 'validation')
    with pytest.raises(DatasetError, match=r'expected folder \S+/val/A'):
        P.prepare('levir', str(src), str(tmp_path / 'o'))


def test_unpaired_and_bad_sizes(tmp_path):
    src = fake_raw(tmp_path / 'raw', 'levir+', n=2, size=48)
    with pytest.raises(DatasetError, match='not a multiple of the tile size 32'):
        P.prepare('levir+', str(src), str(tmp_path / 'o'), tile=32, progress=False)
    os.remove(src / 'test' / 'label' / 'test_1.png')
    with pytest.raises(DatasetError, match='1 images without a label: test_1.png'):
        P.prepare('levir+', str(src), str(tmp_path / 'o'), tile=16, progress=False)


def test_cli_reports_summary_and_errors(tmp_path, capsys):
    src = fake_raw(tmp_path / 'raw', 'levir+', n=1)
    assert P.main(['levir+', '--src', str(src), '--dst', str(tmp_path / 'o'), '--tile', '32']) == 0
    out = capsys.readouterr().out
    assert 'levir+ train: 1 images -> 4 pairs' in out and '4 written' in out
    assert P.main(['dsifn', '--src', str(src), '--dst', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and 'train/t1' in err[0]
