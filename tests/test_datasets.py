"""datasets/: presets, layout discovery, open-time checks, transforms, sampler."""
import os

import cv2
import numpy as np
import pytest
import torch

from datasets import (PRESETS, ChangeDetectionDataset, DatasetError, TrainSampler, get_preset,
                      normalize_pair, read_label, read_pair)
from datasets import transforms as T
from datasets.checks import check_split, read_image_info

TORCH_THREADS = 1        # read by conftest.torch_threads


def write_sample(root, split, name, size=(32, 32), label=None, img_ext='.png', label_ext='.png',
                 seed=0):
    """One A/B/label triplet under root/split with random images and a square change."""
    rng = np.random.default_rng(seed)
    h, w = size
    for folder in ('A', 'B'):
        path = os.path.join(root, split, folder, name + img_ext)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if label is None:
        label = np.zeros((h, w), np.uint8)
        label[h // 4:h // 2, w // 4:w // 2] = 255
    path = os.path.join(root, split, 'label', name + label_ext)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, label)


def make_dataset(root, n=3, splits=('train', 'val', 'test'), **kwargs):
    for split in splits:
        for i in range(n):
            write_sample(root, split, f'{split}_{i}', seed=i, **kwargs)
    return root


def custom(root):
    return get_preset('custom', data_root=root)


# ---------------------------------------------------------------- presets and discovery

def test_preset_table():
    assert set(PRESETS) == {'levir', 'levir+', 's2looking', 'dsifn', 'demo', 'custom'}
    levir = get_preset('levir')
    assert (str(levir.root), levir.img_suffix, levir.label_suffix, levir.scale, levir.crop) == \
        ('data/LEVIR', '.png', '.png', 256, 256)
    dsifn = get_preset('dsifn')
    assert (str(dsifn.root), dsifn.img_suffix, dsifn.label_suffix, dsifn.scale, dsifn.crop) == \
        ('data/DSIFN', '.jpg', '.png', 512, 384)
    assert get_preset('s2looking').splits == {'train': 'train', 'val': 'test', 'test': 'test'}
    assert get_preset('levir+').splits['val'] == 'test'
    assert str(get_preset('levir+').root) == 'data/LEVIR+'
    demo = get_preset('demo')
    assert (str(demo.root), demo.scale, demo.crop) == ('data/demo', 128, 64)
    assert str(get_preset('levir', data_root='/x/y').root) == '/x/y'


def test_preset_errors():
    with pytest.raises(DatasetError, match='unknown dataset'):
        get_preset('levir2')
    with pytest.raises(DatasetError, match='data root'):
        get_preset('custom')


def test_layout_discovery_sorted_recursive_hidden_skipped(tmp_path):
    for name in ['b', 'a', 'sub/c', '.hidden']:
        write_sample(tmp_path, 'train', name)
    ds = ChangeDetectionDataset(custom(tmp_path), 'train')
    assert ds.names == ['a.png', 'b.png', 'sub/c.png']
    assert ds[(2, 0)]['name'] == 'sub/c.png'


def test_val_maps_to_test_folder_for_s2looking(tmp_path):
    make_dataset(tmp_path, n=2, splits=('train', 'test'))
    ds = ChangeDetectionDataset(get_preset('s2looking', data_root=tmp_path), 'val', train=False)
    assert ds.split_dir == os.path.join(tmp_path, 'test') and len(ds) == 2


def test_dsifn_preset_reads_jpg_images_and_png_labels(tmp_path):
    for i in range(2):
        write_sample(tmp_path, 'test', f'{i}', size=(40, 48), img_ext='.jpg')
    ds = ChangeDetectionDataset(get_preset('dsifn', data_root=tmp_path), 'test', train=False)
    sample = ds[0]
    assert sample['img'].shape == (6, 448, 512)   # keep-ratio to 512 -> 427x512 -> x32
    assert sample['label'].shape == (40, 48)


def test_custom_detects_suffix(tmp_path):
    write_sample(tmp_path, 'train', 'x', img_ext='.jpg', label_ext='.bmp')
    ds = ChangeDetectionDataset(custom(tmp_path), 'train')
    assert (ds.img_suffix, ds.label_suffix, len(ds)) == ('.jpg', '.bmp', 1)


# ---------------------------------------------------------------- samples

def test_train_sample_layout_and_reproducibility(tmp_path):
    make_dataset(tmp_path, splits=('train',))
    ds = ChangeDetectionDataset(custom(tmp_path), 'train', seed=5)
    p = ds.preset
    sample = ds[(1, 7)]            # train: uint8 pairs (raw) for normalisation on the device
    assert sample['img'].shape == (2, p.crop, p.crop, 3) and sample['img'].dtype == torch.uint8
    assert sample['label'].shape == (p.crop, p.crop) and sample['label'].dtype == torch.uint8
    assert set(sample['label'].unique().tolist()) <= {0, 1}
    assert sample['valid_hw'].dtype == torch.int64 and (sample['valid_hw'] <= p.crop).all()
    normalized = ChangeDetectionDataset(custom(tmp_path), 'train', seed=5, raw=False)[(1, 7)]
    assert normalized['img'].shape == (6, p.crop, p.crop) and normalized['img'].dtype == torch.float32
    assert normalized['label'].dtype == torch.int64
    assert sample['name'] == 'train_1.png'
    again = ds[(1, 7)]
    assert torch.equal(sample['img'], again['img']) and torch.equal(sample['label'], again['label'])
    assert not torch.equal(sample['img'], ds[(1, 8)]['img'])
    other_seed = ChangeDetectionDataset(custom(tmp_path), 'train', seed=6)[(1, 7)]
    assert not torch.equal(sample['img'], other_seed['img'])
    assert torch.equal(ds[1]['img'], ds[(1, 1)]['img'])     # int index: stream_id = index


def test_test_sample_resized_to_multiple_of_32_label_original(tmp_path):
    write_sample(tmp_path, 'test', 'x', size=(100, 70))
    preset = custom(tmp_path)
    sample = ChangeDetectionDataset(preset, 'test', train=False)[0]
    # keep-ratio to 256: factor 2.56 -> 256 x int(179.2+0.5)=179 -> resized up to 256 x 192
    assert sample['img'].shape == (6, 256, 192)
    assert sample['label'].shape == (100, 70) and sample['ori_shape'] == (100, 70)


def test_label_nonzero_is_change_and_gray_rgb_accepted(tmp_path):
    label = np.zeros((32, 32), np.uint8)
    label[0, :3] = [1, 7, 255]
    write_sample(tmp_path, 'test', 'gray', label=label)
    write_sample(tmp_path, 'test', 'rgb', label=np.repeat(label[..., None], 3, 2))
    ds = ChangeDetectionDataset(custom(tmp_path), 'test', train=False)
    for i in range(2):
        out = ds[i]['label']
        assert out[0, :4].tolist() == [1, 1, 1, 0] and out.sum() == 3


def test_dataloader_workers_do_not_change_samples(tmp_path):
    from datasets import train_loader
    make_dataset(tmp_path, n=4, splits=('train',))
    ds = ChangeDetectionDataset(custom(tmp_path), 'train')
    # OpenCV's thread pool used in the parent must not hang forked workers (with OpenCV 4, a
    # worker calling cv2.setNumThreads did): use it here first.
    cv2.cvtColor(cv2.resize(np.zeros((300, 200, 3), np.uint8), (256, 384)), cv2.COLOR_BGR2HSV)
    batches = []
    for workers in (0, 2):
        loader = train_loader(ds, TrainSampler(len(ds), 2, seed=3), 2, num_workers=workers)
        it = iter(loader)
        batches.append([next(it) for _ in range(3)])
    for b0, b2 in zip(*batches):
        assert torch.equal(b0['img'], b2['img']) and b0['name'] == b2['name']


# ---------------------------------------------------------------- bad input

def expect_error(root, split, *patterns):
    with pytest.raises(DatasetError) as info:
        ChangeDetectionDataset(custom(root), split)
    message = str(info.value)
    assert '\n' not in message
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_missing_split_and_folders(tmp_path):
    make_dataset(tmp_path, splits=('train',))
    expect_error(tmp_path, 'val', 'split folder not found')
    for name in ('B', 'label'):
        os.rename(tmp_path / 'train' / name, tmp_path / 'train' / (name + '_x'))
    expect_error(tmp_path, 'train', 'missing folder(s) B, label')
    with pytest.raises(DatasetError, match="split 'dev'"):
        ChangeDetectionDataset(custom(tmp_path), 'dev')


def test_empty_split(tmp_path):
    for folder in ('A', 'B', 'label'):
        os.makedirs(tmp_path / 'train' / folder)
    with pytest.raises(DatasetError, match='empty split'):
        ChangeDetectionDataset(get_preset('levir', data_root=tmp_path), 'train')


def test_unpaired_files_listed_with_count(tmp_path):
    make_dataset(tmp_path, n=6, splits=('train',))
    for i in range(5):
        os.remove(tmp_path / 'train' / 'B' / f'train_{i}.png')
    write_sample(tmp_path, 'x', 'orphan')
    os.replace(tmp_path / 'x' / 'B' / 'orphan.png', tmp_path / 'train' / 'B' / 'orphan.png')
    os.replace(tmp_path / 'x' / 'label' / 'orphan.png', tmp_path / 'train' / 'label' / 'o2.png')
    os.remove(tmp_path / 'train' / 'label' / 'train_5.png')
    msg = expect_error(tmp_path, 'train', '5 A files without B: train_0.png, train_1.png, '
                       'train_2.png (+2 more)', '1 A files without label: train_5.png',
                       '1 B files without A: orphan.png', '1 label files without A: o2.png')
    assert 'train_3.png' not in msg


def test_size_mismatches(tmp_path):
    make_dataset(tmp_path, n=2, splits=('train',))
    cv2.imwrite(str(tmp_path / 'train' / 'B' / 'train_0.png'), np.zeros((32, 30, 3), np.uint8))
    cv2.imwrite(str(tmp_path / 'train' / 'label' / 'train_1.png'), np.zeros((31, 32), np.uint8))
    expect_error(tmp_path, 'train', 'A/B size mismatch: train_0.png',
                 'label size differs from A: train_1.png')


def test_truncated_and_garbage_images(tmp_path):
    make_dataset(tmp_path, n=3, splits=('train',))
    path = tmp_path / 'train' / 'A' / 'train_0.png'
    path.write_bytes(path.read_bytes()[:-40])
    (tmp_path / 'train' / 'B' / 'train_1.png').write_bytes(b'not an image at all')
    (tmp_path / 'train' / 'label' / 'train_2.png').write_bytes(b'')
    expect_error(tmp_path, 'train', 'A unreadable: truncated PNG (no IEND chunk at the end): '
                 'train_0.png', 'B unreadable: not a readable image: train_1.png',
                 'label unreadable')


def test_truncated_jpeg(tmp_path):
    write_sample(tmp_path, 'train', 'x', img_ext='.jpg')
    path = tmp_path / 'train' / 'B' / 'x.jpg'
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match='B unreadable: truncated JPEG'):
        ChangeDetectionDataset(get_preset('dsifn', data_root=tmp_path), 'train')


def test_corrupt_pixel_data_reported_lazily(tmp_path):
    make_dataset(tmp_path, n=1, splits=('train',))
    path = tmp_path / 'train' / 'A' / 'train_0.png'
    data = bytearray(path.read_bytes())
    data[40:-20] = bytes(len(data) - 60)     # header and IEND intact, IDAT destroyed
    path.write_bytes(bytes(data))
    ds = ChangeDetectionDataset(custom(tmp_path), 'train')   # header-only check passes
    with pytest.raises(DatasetError, match='train_0.png: cannot decode image'):
        ds[0]


def test_colour_label_rejected(tmp_path):
    make_dataset(tmp_path, n=2, splits=('train',))
    label = np.zeros((32, 32, 3), np.uint8)
    label[..., 2] = 255
    path = tmp_path / 'train' / 'label' / 'train_1.png'
    cv2.imwrite(str(path), label)
    expect_error(tmp_path, 'train', 'colour label', 'train_1.png')
    with pytest.raises(DatasetError, match='colour label'):
        read_label(path)


def test_read_pair(tmp_path):
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 9, 3), 5, np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), a)
    cv2.imwrite(str(tmp_path / 'b.png'), b)
    cv2.imwrite(str(tmp_path / 'c.png'), a + 3)
    x, y = read_pair(tmp_path / 'a.png', tmp_path / 'c.png')
    assert x.dtype == np.uint8 and x.shape == (8, 8, 3) and (y == 3).all()
    with pytest.raises(DatasetError, match='size mismatch'):
        read_pair(tmp_path / 'a.png', tmp_path / 'b.png')
    with pytest.raises(DatasetError, match='missing.png: cannot decode'):
        read_pair(tmp_path / 'a.png', tmp_path / 'missing.png')


def test_header_reader_matches_decoder(tmp_path):
    for ext, shape in [('.png', (17, 23, 3)), ('.png', (9, 11)), ('.jpg', (33, 21, 3)),
                       ('.bmp', (5, 6, 3))]:
        path = str(tmp_path / f'x{ext}')
        cv2.imwrite(path, np.full(shape, 100, np.uint8))
        info = read_image_info(path)
        assert (info.height, info.width) == shape[:2]
        assert info.channels == (shape[2] if len(shape) == 3 else 1)


# ---------------------------------------------------------------- transforms

class ScriptedRng:
    """Stands in for numpy's Generator: returns scripted values and records the calls."""

    def __init__(self, *values):
        self.values, self.calls = list(values), []

    def _next(self, name, args):
        self.calls.append((name,) + args)
        return self.values.pop(0)

    def integers(self, *args):
        return self._next('integers', args)

    def uniform(self, *args):
        return self._next('uniform', args)

    def random(self):
        return self._next('random', ())


def test_rescale_size_mmcv_rule():
    assert T.rescale_size(256, 256, (300, 300)) == (300, 300)
    assert T.rescale_size(100, 200, (300, 300)) == (150, 300)      # long side limits
    assert T.rescale_size(3, 5, (7, 7)) == (4, 7)                  # int(4.2+0.5)
    assert T.rescale_size(5, 3, (9, 9)) == (9, 5)                  # int(5.4+0.5)


def test_random_rescale_ratio_range_and_interpolation():
    label = (np.arange(64 * 64).reshape(64, 64) % 3 == 0).astype(np.uint8)
    image = np.zeros((64, 64, 6), np.uint8)
    sides = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        ratio = np.random.default_rng(seed).random() * 1.5 + 0.5
        img, lab = T.random_rescale(image, label, rng, 256)
        assert img.shape == (int(256 * ratio), int(256 * ratio), 6)
        assert lab.shape == img.shape[:2] and set(np.unique(lab)) <= {0, 1}   # nearest
        sides.append(img.shape[0])
    assert 128 <= min(sides) < 150 and 490 < max(sides) <= 511
    rng = ScriptedRng(1 / 3)          # ratio 1.0 -> size kept exactly
    img, lab = T.random_rescale(image + 7, label, rng, 64)
    assert (img == 7).all() and np.array_equal(lab, label)


def test_crop_balance_rule():
    def crop(change_fraction, ignore_fraction=0.0):
        values = np.zeros(100, np.uint8)
        values[:int(change_fraction * 100)] = 1
        values[100 - int(ignore_fraction * 100):] = 255
        return values.reshape(10, 10)
    assert T.crop_is_balanced(crop(0.5), 0.75)
    assert T.crop_is_balanced(crop(0.26), 0.75)
    assert not T.crop_is_balanced(crop(0.25), 0.75)        # largest class exactly 75 %
    assert not T.crop_is_balanced(crop(0.8), 0.75)
    assert not T.crop_is_balanced(crop(0.0), 0.75)         # a single class
    assert T.crop_is_balanced(crop(0.2, ignore_fraction=0.4), 0.75)     # 255 not counted
    assert not T.crop_is_balanced(crop(0.0, ignore_fraction=0.4), 0.75)


def test_random_crop_retries_then_uses_eleventh_box():
    label = np.zeros((8, 8), np.uint8)
    label[4:8, 0:2] = 1               # only the box at (4, 0) is half change
    image = np.arange(8 * 8 * 6, dtype=np.int32).reshape(8, 8, 6)
    rng = ScriptedRng(0, 0, 0, 4, 4, 0, 99, 99)            # boxes (0,0), (0,4), (4,0)
    img, lab = T.random_crop(image, label, rng, 4)
    assert np.array_equal(img, image[4:8, 0:4]) and lab.mean() == 0.5
    assert len(rng.calls) == 6 and rng.calls[0] == ('integers', 0, 5)
    empty = np.zeros((8, 8), np.uint8)
    rng = ScriptedRng(*([0, 0] * 10 + [3, 1, 99]))        # 10 rejected, 11th unchecked
    img, lab = T.random_crop(image, empty, rng, 4)
    assert np.array_equal(img, image[3:7, 1:5]) and len(rng.calls) == 22
    rng = ScriptedRng(*([0] * 22))                         # smaller than crop: kept whole
    img, lab = T.random_crop(image[:3], label[:3], rng, 4)
    assert img.shape == (3, 4, 6) and rng.calls[0] == ('integers', 0, 1)


def test_geometry_identical_for_a_b_and_label():
    rng0 = np.random.default_rng(0)
    a = rng0.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    label = (a[..., 0] > 128).astype(np.uint8)
    pair = np.concatenate([a, a], 2)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        img, lab = T.random_crop(pair, label, rng, 32)
        img, lab = T.random_hflip(img, lab, rng)
        assert np.array_equal(img[..., :3], img[..., 3:])
        assert np.array_equal(lab, (img[..., 0] > 128).astype(np.uint8))


def test_hflip_probability_and_semantics():
    image, label = np.arange(12).reshape(2, 6, 1), np.arange(12).reshape(2, 6)
    img, lab = T.random_hflip(image, label, ScriptedRng(0.49))
    assert np.array_equal(img[..., 0], label[:, ::-1]) and np.array_equal(lab, label[:, ::-1])
    img, lab = T.random_hflip(image, label, ScriptedRng(0.5))
    assert np.array_equal(lab, label)


def test_photometric_draw_order_and_values():
    image = np.full((4, 4, 3), 100, np.uint8)
    # brightness on (+10.7), mode 0, saturation off, hue off, contrast (last) on x1.5
    rng = ScriptedRng(1, 10.7, 0, 0, 0, 1, 1.5)
    out = T.photometric_distortion(image, rng)
    assert (out == 165).all()                      # int(100 + 10.7) = 110 (truncation), * 1.5
    assert [c[0] for c in rng.calls] == ['integers', 'uniform', 'integers', 'integers',
                                         'integers', 'integers', 'uniform']
    assert rng.calls[1] == ('uniform', -32, 32) and rng.calls[6] == ('uniform', 0.5, 1.5)
    # mode 1: contrast comes right after the mode draw, saturation/hue follow
    rng = ScriptedRng(0, 1, 1, 0.5, 1, 1.5, 1, -18)
    T.photometric_distortion(image, rng)
    assert rng.calls[2:] == [('integers', 2), ('uniform', 0.5, 1.5), ('integers', 2),
                             ('uniform', 0.5, 1.5), ('integers', 2), ('integers', -18, 18)]
    bright = T.photometric_distortion(np.full((2, 2, 3), 250, np.uint8),
                                      ScriptedRng(1, 31.0, 0, 0, 0, 0))
    assert (bright == 255).all()                   # clipped, not wrapped


def test_hue_shift_wraps_modulo_180():
    hsv = np.zeros((2, 2, 3), np.uint8)
    hsv[...] = (5, 200, 200)
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    out = T.photometric_distortion(bgr, ScriptedRng(0, 1, 0, 0, 1, -18))   # hue -18 only
    hue = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)[..., 0]
    assert abs(int(hue[0, 0]) - 167) <= 1


def test_photometric_draws_differ_between_a_and_b():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 6), dtype=np.uint8)
    label = np.zeros((32, 32), np.uint8)
    differ = 0
    for seed in range(10):
        out, _ = T.train_transform(image[..., :3], image[..., :3], label,
                                   np.random.default_rng(seed), 32, 32)
        differ += not torch.equal(out[:3], out[3:])
    assert differ >= 8       # both unchanged in a draw has probability 1/256


def test_pad_values_and_train_output_size():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    label = np.ones((32, 32), np.uint8)
    padded = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        side = int(32 * (np.random.default_rng(seed).random() * 1.5 + 0.5))
        img, lab = T.train_transform(image, image, label, rng, 32, 32)
        assert img.shape == (6, 32, 32) and lab.shape == (32, 32) and lab.dtype == torch.int64
        if side < 32:
            padded += 1
            assert (img[:, side:, :] == 0).all() and (img[:, :, side:] == 0).all()
            assert (lab[side:, :] == 0).all() and (lab[:side, :side] == 1).all()
    assert padded > 0


def test_normalize_pair_bgr_to_rgb_imagenet():
    a = np.zeros((2, 3, 3), np.uint8)
    a[...] = (10, 20, 30)                         # B, G, R
    b = np.full((2, 3, 3), 255, np.uint8)
    x = normalize_pair(a, b)
    assert x.shape == (6, 2, 3) and x.dtype == torch.float32
    expected = [(30 - 123.675) / 58.395, (20 - 116.28) / 57.12, (10 - 103.53) / 57.375,
                (255 - 123.675) / 58.395, (255 - 116.28) / 57.12, (255 - 103.53) / 57.375]
    assert torch.allclose(x[:, 0, 0], torch.tensor(expected), atol=1e-5)


def test_test_transform_sizes():
    a = np.zeros((300, 200, 3), np.uint8)
    assert T.test_transform(a, a, 256).shape == (6, 256, 192)   # 256x171 -> 256x192
    a = np.zeros((256, 256, 3), np.uint8)
    assert T.test_transform(a, a, 256).shape == (6, 256, 256)


# ---------------------------------------------------------------- sampler

def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_epochs_are_permutations_with_drop_last():
    stream = take(TrainSampler(10, batch_size=4, seed=1), 16)     # 2 iters per epoch
    assert [s for _, s in stream] == list(range(16))
    epoch0, epoch1 = [i for i, _ in stream[:8]], [i for i, _ in stream[8:]]
    assert len(set(epoch0)) == 8 and len(set(epoch1)) == 8 and epoch0 != epoch1
    assert take(TrainSampler(10, 4, seed=1), 16) == stream
    assert take(TrainSampler(10, 4, seed=2), 16) != stream


def test_sampler_resume_continues_the_stream():
    full = take(TrainSampler(10, 4, seed=1), 40)
    assert take(TrainSampler(10, 4, seed=1, start_iter=3), 28) == full[12:]


def test_sampler_sharding_slices_the_global_stream():
    single = take(TrainSampler(20, batch_size=6, seed=0), 18)
    rank0 = take(TrainSampler(20, 3, seed=0, rank=0, world_size=2), 9)
    rank1 = take(TrainSampler(20, 3, seed=0, rank=1, world_size=2), 9)
    for it in range(3):
        assert single[6 * it:6 * it + 3] == rank0[3 * it:3 * it + 3]
        assert single[6 * it + 3:6 * it + 6] == rank1[3 * it:3 * it + 3]
    with pytest.raises(ValueError):
        TrainSampler(20, 3, rank=2, world_size=2)


def test_sampler_dataset_smaller_than_batch():
    stream = take(TrainSampler(3, batch_size=4, seed=0), 8)
    assert sorted(i for i, _ in stream[:3]) == [0, 1, 2]


def test_check_split_progress_bar_option(tmp_path):
    make_dataset(tmp_path, n=2, splits=('train',))
    assert check_split(str(tmp_path / 'train'), '.png', '.png', progress=True) == \
        ['train_0.png', 'train_1.png']


def test_measure_loader_throughput_on_generated_set():
    from datasets import measure_loader_throughput
    rate = measure_loader_throughput(None, num_workers=0, n_batches=1, batch_size=2, warmup=0,
                                     size=32, pairs=4)
    assert rate > 0
