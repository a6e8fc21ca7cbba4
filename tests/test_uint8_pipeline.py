"""The uint8 train pipeline + device normalisation give the original float pipeline's output bit
for bit; the table (LUT) photometric steps equal the float formulas; the loader helpers."""
import cv2
import numpy as np
import pytest
import torch

from datasets import (ChangeDetectionDataset, TrainSampler, default_num_workers, get_preset,
                      normalize_batch, normalize_pair, train_loader)
from datasets import bench
from datasets import transforms as T
from datasets.loader import collate_by_shape

TORCH_THREADS = 1        # read by conftest.torch_threads


# ------------------------------------------------ the plain float implementation (the original)

def ref_convert(image, alpha=1.0, beta=0.0):
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def ref_photometric(image, rng):
    """mmseg PhotoMetricDistortion as it was implemented here before the tables."""
    if rng.integers(2):
        image = ref_convert(image, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)

    def contrast(img):
        if rng.integers(2):
            return ref_convert(img, alpha=rng.uniform(0.5, 1.5))
        return img

    if mode == 1:
        image = contrast(image)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = ref_convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        shift = rng.integers(-18, 18)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0:
        image = contrast(image)
    return image


def ref_normalize(bgr):
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    rgb -= T.MEAN
    rgb /= T.STD
    return rgb


def ref_train_transform(a, b, label, rng, scale, crop, cat_max_ratio=0.75):
    """The float pipeline on the joined 6-channel array, step by step as the original."""
    pair = np.concatenate([a, b], axis=2)
    ratio = rng.random() * 1.5 + 0.5
    height, width = T.rescale_size(*pair.shape[:2], (int(scale * ratio),) * 2)
    if (height, width) != pair.shape[:2]:
        pair = cv2.resize(pair, (width, height), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    box = lambda: (rng.integers(0, max(height - crop, 0) + 1), rng.integers(0, max(width - crop, 0) + 1))
    top, left = box()
    for _ in range(10):
        if T.crop_is_balanced(label[top:top + crop, left:left + crop], cat_max_ratio):
            break
        top, left = box()
    pair, label = pair[top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
    if rng.random() < 0.5:
        pair, label = pair[:, ::-1], label[:, ::-1]
    a = ref_photometric(np.ascontiguousarray(pair[..., :3]), rng)
    b = ref_photometric(np.ascontiguousarray(pair[..., 3:]), rng)
    image = np.concatenate([ref_normalize(a), ref_normalize(b)], axis=2)
    h, w = label.shape
    out = np.zeros((6, crop, crop), np.float32)
    out[:, :h, :w] = image.transpose(2, 0, 1)
    target = np.zeros((crop, crop), np.int64)
    target[:h, :w] = label
    return torch.from_numpy(out), torch.from_numpy(target)


def bits(x):
    """A float32 tensor's bit patterns (tells 0.0 from -0.0)."""
    return x.contiguous().view(torch.int32)


def scene(seed, size=64):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    b = cv2.GaussianBlur(a, (5, 5), 2)
    label = np.zeros((size, size), np.uint8)
    y, x = rng.integers(0, size - 8, 2)
    label[y:y + rng.integers(4, size // 2), x:x + rng.integers(4, size // 2)] = 1
    return a, b, label


# ------------------------------------------------ equality with the float implementation

def test_value_tables_equal_the_float_formula():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    params = [(1.0, b) for b in rng.uniform(-32, 32, 200)] + [(a, 0.0) for a in rng.uniform(0.5, 1.5, 200)]
    params += [(1.0, -32.0), (1.0, 32.0), (0.5, 0.0), (1.5, 0.0), (1.0, 0.5), (1.02, 0.0)]
    for alpha, beta in params:
        table = T.value_table(alpha, beta)
        assert np.array_equal(table[values], ref_convert(values, alpha, beta))
        assert np.array_equal(cv2.LUT(image, table), ref_convert(image, alpha, beta))
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    for shift in range(-18, 18):
        expected = hsv.copy()
        expected[..., 0] = (hsv[..., 0].astype(np.int16) + np.int64(shift)) % 180
        got = cv2.LUT(hsv, np.stack([T.hue_table(np.int64(shift)), T._VALUES, T._VALUES], 1)[None])
        assert np.array_equal(got, expected)


def test_photometric_tables_equal_float_implementation():
    image = np.random.default_rng(2).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    view = np.random.default_rng(3).integers(0, 256, (60, 60, 3), dtype=np.uint8)[5:45, 7:55]
    for seed in range(300):
        src = image if seed % 2 else view                 # crops arrive as strided views
        got = T.photometric_distortion(src, np.random.default_rng(seed))
        expected = ref_photometric(np.ascontiguousarray(src), np.random.default_rng(seed))
        assert np.array_equal(got, expected), seed


@pytest.mark.parametrize('size,scale,crop', [(64, 64, 64), (64, 64, 48), (48, 64, 32), (40, 32, 32)])
def test_train_pipeline_equals_float_original_bit_for_bit(size, scale, crop):
    padded = 0
    for seed in range(120):
        a, b, label = scene(seed, size)
        got, got_label = T.train_transform(a, b, label, np.random.default_rng(seed), scale, crop)
        exp, exp_label = ref_train_transform(a, b, label, np.random.default_rng(seed), scale, crop)
        assert torch.equal(bits(got), bits(exp)) and torch.equal(got_label, exp_label), seed
        side = int(scale * (np.random.default_rng(seed).random() * 1.5 + 0.5))
        padded += side < crop
    assert padded > 0 or scale // 2 >= crop      # the zero padding was compared too


def test_exact_halving_is_compared():
    """r just above 0.5 gives the 2x downscale that takes OpenCV's INTER_AREA code."""
    hit = [s for s in range(3000) if int(64 * (np.random.default_rng(s).random() * 1.5 + 0.5)) == 32][:4]
    assert hit
    for seed in hit:
        a, b, label = scene(seed, 64)
        got, _ = T.train_transform(a, b, label, np.random.default_rng(seed), 64, 32)
        exp, _ = ref_train_transform(a, b, label, np.random.default_rng(seed), 64, 32)
        assert torch.equal(bits(got), bits(exp))


@pytest.mark.parametrize('shape', [(64, 64), (50, 70)])
def test_resize_pair_equals_six_channel_resize_at_every_size(shape):
    rng = np.random.default_rng(4)
    a, b = (rng.integers(0, 256, shape + (3,), dtype=np.uint8) for _ in range(2))
    joined = np.concatenate([a, b], 2)
    h0, w0 = shape
    for height in range(h0 // 2, 2 * h0):
        width = max(1, round(height * w0 / h0))
        exp = cv2.resize(joined, (width, height), interpolation=cv2.INTER_LINEAR)
        ra, rb = T.resize_pair(a, b, height, width)
        assert np.array_equal(ra, exp[..., :3]) and np.array_equal(rb, exp[..., 3:]), (height, width)
    ra, rb = T.resize_pair(a, b, h0 // 2, w0 // 2)                    # the exact halving
    exp = cv2.resize(joined, (w0 // 2, h0 // 2), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(np.concatenate([ra, rb], 2), exp)


def test_binary_balance_rule_equals_histogram_rule():
    rng = np.random.default_rng(5)
    for _ in range(2000):
        crop = (rng.random((int(rng.integers(1, 12)), int(rng.integers(1, 12)))) < rng.random()).astype(np.uint8)
        for ratio in (0.75, 0.5, 0.9):
            assert T.binary_is_balanced(crop, ratio) == T.crop_is_balanced(crop, ratio)


def test_crop_box_with_ignore_pixels_uses_histogram_rule():
    """255 (ignore) is not counted as a class: the {0, 1} shortcut must not be taken."""
    def reference(label, rng, crop):
        draw = lambda: (rng.integers(0, label.shape[0] - crop + 1), rng.integers(0, label.shape[1] - crop + 1))
        top, left = draw()
        for _ in range(10):
            if T.crop_is_balanced(label[top:top + crop, left:left + crop], 0.75):
                break
            top, left = draw()
        return top, left
    rng = np.random.default_rng(7)
    for seed in range(200):
        label = rng.choice(np.array([0, 1, 255], np.uint8), (12, 12), p=[0.6, 0.1, 0.3])
        assert T.random_crop_box(label, np.random.default_rng(seed), 6) == \
            reference(label, np.random.default_rng(seed), 6)


# ------------------------------------------------ normalisation on the device

def test_normalize_batch_equals_normalize_pair_and_zeroes_padding():
    rng = np.random.default_rng(6)
    pairs = rng.integers(0, 256, (3, 2, 16, 24, 3), dtype=np.uint8)
    valid = torch.tensor([[16, 24], [10, 24], [16, 5]])
    out = normalize_batch(torch.from_numpy(pairs), 'cpu', valid)
    assert out.shape == (3, 6, 16, 24) and out.dtype == torch.float32 and out.is_contiguous()
    for i, (h, w) in enumerate(valid.tolist()):
        expected = torch.zeros(6, 16, 24)
        expected[:, :h, :w] = normalize_pair(pairs[i, 0], pairs[i, 1])[:, :h, :w]
        assert torch.equal(bits(out[i]), bits(expected))
    unpadded = normalize_batch(torch.from_numpy(pairs), 'cpu')
    assert torch.equal(bits(unpadded[0]), bits(normalize_pair(pairs[0, 0], pairs[0, 1])))


def test_extreme_values_normalise_as_the_float_code():
    pairs = np.zeros((1, 2, 2, 2, 3), np.uint8)
    pairs[0, 1] = 255
    out = normalize_batch(pairs, 'cpu')[0, :, 0, 0]
    mean, std = np.tile(T.MEAN, 2), np.tile(T.STD, 2)
    value = np.array([0, 0, 0, 255, 255, 255], np.float32)
    assert np.array_equal(out.numpy(), (value - mean) / std)


# ------------------------------------------------ datasets and loaders

def write_split(root, n=4, size=40):
    for i in range(n):
        a, b, label = scene(i, size)
        for folder, img in (('A', a), ('B', b), ('label', label * 255)):
            (root / 'train' / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / 'train' / folder / f'{i}.png'), img)
    return get_preset('custom', data_root=root)


def test_raw_sample_normalises_to_the_float_sample(tmp_path):
    preset = write_split(tmp_path)
    raw = ChangeDetectionDataset(preset, 'train', seed=3)
    flt = ChangeDetectionDataset(preset, 'train', seed=3, raw=False)
    for key in [(0, 0), (1, 5), (3, 11)]:
        r, f = raw[key], flt[key]
        assert r['img'].dtype == torch.uint8 and r['img'].shape == (2, 256, 256, 3)
        assert r['label'].dtype == torch.uint8 and r['valid_hw'].shape == (2,)
        img = normalize_batch(r['img'][None], 'cpu', r['valid_hw'][None])[0]
        assert torch.equal(bits(img), bits(f['img']))
        assert torch.equal(r['label'].long(), f['label']) and f['label'].dtype == torch.int64
    test = ChangeDetectionDataset(preset, 'train', train=False, raw=True)[0]
    assert test['img'].shape == (2, 256, 256, 3) and test['label'].shape == (40, 40)


def test_train_loader_batches_match_in_process_samples_after_parent_opencv_use(tmp_path):
    preset = write_split(tmp_path)
    ds = ChangeDetectionDataset(preset, 'train', seed=1)
    cv2.cvtColor(cv2.resize(np.zeros((300, 200, 3), np.uint8), (256, 384)), cv2.COLOR_BGR2HSV)
    loader = train_loader(ds, TrainSampler(len(ds), 2, seed=1), 2, num_workers=2)
    it = iter(loader)
    batch = next(it)
    assert cv2.getNumThreads() == 1                   # setNumThreads(0): the calling thread
    assert batch['img'].shape == (2, 2, 256, 256, 3) and batch['valid_hw'].shape == (2, 2)
    key = next(iter(TrainSampler(len(ds), 2, seed=1)))        # (index, stream_id)
    assert torch.equal(batch['img'][0], ds[key]['img'])
    assert torch.equal(batch['label'][0], ds[key]['label'])
    del it


def test_collate_by_shape_groups_stackable_samples():
    def sample(h, w, name):
        return {'img': torch.zeros(2, h, w, 3, dtype=torch.uint8), 'label': torch.zeros(h, w),
                'name': name}
    groups = collate_by_shape([sample(32, 32, 'a'), sample(32, 64, 'b'), sample(32, 32, 'c')])
    assert [g['name'] for g in groups] == [['a', 'c'], ['b']]
    assert groups[0]['img'].shape == (2, 2, 32, 32, 3) and groups[1]['label'].shape == (1, 32, 64)
    labels_only = collate_by_shape([{'label': torch.zeros(4, 4), 'name': 'x'}])
    assert labels_only[0]['label'].shape == (1, 4, 4)


def test_default_num_workers(monkeypatch):
    assert default_num_workers('cpu') == 0
    monkeypatch.setattr('datasets.loader.cpu_count', lambda: 16)
    assert default_num_workers('cuda', processes_per_node=4) == 4
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    assert default_num_workers('cuda') == 8
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '32')
    assert default_num_workers('cuda') == 1


def test_bench_timed_sample_is_the_dataset_pipeline(tmp_path):
    ds = ChangeDetectionDataset(write_split(tmp_path), 'train', seed=4)
    times = {}
    pair, label, valid = bench.timed_sample(ds, 2, 9, times)
    sample = ds[(2, 9)]
    assert np.array_equal(pair, sample['img'].numpy()) and np.array_equal(label, sample['label'].numpy())
    assert list(valid) == sample['valid_hw'].tolist() and set(times) == set(bench.STAGES)


def test_bench_cli_prints_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(bench.CASES, 'levir', dict(size=32, crop=32, img_suffix='.png'))
    out = tmp_path / 'b.json'
    assert bench.main(['--case', 'levir', '--workers', '0', '--batches', '1', '--batch-size', '2',
                       '--profile-pairs', '4', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'decode A+B' in text and 'per worker' in text
    import json
    case = json.loads(out.read_text())['cases'][0]
    assert case['loaders'][0]['pairs_per_s'] > 0 and set(case['stages_ms']) == set(bench.STAGES)
    assert bench.main(['--workers', '-1']) == 2
