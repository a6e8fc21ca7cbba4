"""The paper's train and test pipelines (FHD_REFERENCE.md §1.4, §1.6), as small functions.

A, B and the label always get identical geometry. Every random draw comes from the `rng`
argument, a `numpy.random.Generator` made per sample, so results do not depend on worker count
or order.

The pipelines stay in uint8 on the CPU: `train_pipeline` and `test_resize_pair` return uint8 BGR
pairs (2, H, W, 3) and `normalize_batch` normalises a batch of them on the device. The original
normalised on the CPU in float32 (`train_transform`, `normalize_pair` still do); the results are
equal bit for bit (same float32 subtract-then-divide; the tests compare them). How each step was
made cheaper without changing a pixel is in docs/data_pipeline.md.
"""
import cv2
import numpy as np
import torch

MEAN = np.array([123.675, 116.28, 103.53], np.float32)   # ImageNet, RGB order
STD = np.array([58.395, 57.12, 57.375], np.float32)
_VALUES = np.arange(256, dtype=np.uint8)


def rescale_size(height, width, scale):
    """mmcv's keep-ratio rule: fit (h, w) into a `scale` box, rounding with int(x + 0.5)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize(image, height, width, nearest=False):
    if image.shape[:2] == (height, width):
        return image
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def resize_pair(a, b, height, width):
    """A and B resized as the original resized them: as one 6-channel image.

    OpenCV's bilinear uint8 resize is per channel, so two 3-channel calls give the same pixels
    for half the work and no joining copy, except for an exact 2x downscale, which OpenCV
    routes to its INTER_AREA code whose vector paths round differently for 6 channels (tested
    over every size in tests/test_uint8_pipeline.py).
    """
    if a.shape[:2] == (2 * height, 2 * width):
        joined = resize(np.concatenate([a, b], axis=2), height, width)
        return joined[..., :3], joined[..., 3:]
    return resize(a, height, width), resize(b, height, width)


def draw_rescale_size(height, width, rng, scale, ratio_range=(0.5, 2.0)):
    """Resize(img_scale=(S, S), ratio_range)'s output size: keep-ratio to int(S * r), r ~ U[0.5, 2)."""
    low, high = ratio_range
    ratio = rng.random() * (high - low) + low
    target = int(scale * ratio)
    return rescale_size(height, width, (target, target))


def random_rescale(image, label, rng, scale, ratio_range=(0.5, 2.0)):
    """Resize(img_scale=(S, S), ratio_range) of one image (any channels) and its label."""
    height, width = draw_rescale_size(*image.shape[:2], rng, scale, ratio_range)
    return resize(image, height, width), resize(label, height, width, nearest=True)


def crop_box(height, width, crop, rng):
    """A random crop box (top, left); an image smaller than `crop` keeps offset 0."""
    top = rng.integers(0, max(height - crop, 0) + 1)
    left = rng.integers(0, max(width - crop, 0) + 1)
    return top, left


def crop_is_balanced(label_crop, cat_max_ratio, ignore_index=255):
    """mmseg's accept rule: more than one class and the largest class < cat_max_ratio."""
    counts = np.bincount(label_crop.ravel(), minlength=256)   # O(n); np.unique sorts
    counts[ignore_index] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def binary_is_balanced(label_crop, cat_max_ratio):
    """crop_is_balanced for a {0, 1} label crop without a 256-bin histogram (10x cheaper): the
    same two counts and the same float64 division."""
    change, total = np.count_nonzero(label_crop), label_crop.size
    return 0 < change < total and max(change, total - change) / total < cat_max_ratio


def random_crop_box(label, rng, crop, cat_max_ratio=0.75, tries=10):
    """RandomCrop(crop_size, cat_max_ratio)'s box: up to 10 checked boxes, else the 11th unchecked."""
    height, width = label.shape
    top, left = crop_box(height, width, crop, rng)
    if cat_max_ratio < 1:
        # The pipeline's labels are {0, 1} (read_label); others take mmseg's histogram.
        is_balanced = binary_is_balanced if label.max(initial=0) <= 1 else crop_is_balanced
        for _ in range(tries):
            if is_balanced(label[top:top + crop, left:left + crop], cat_max_ratio):
                break
            top, left = crop_box(height, width, crop, rng)
    return top, left


def random_crop(image, label, rng, crop, cat_max_ratio=0.75, tries=10):
    """RandomCrop of one image (any channels) and its label (views)."""
    top, left = random_crop_box(label, rng, crop, cat_max_ratio, tries)
    return image[top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]


def random_hflip(image, label, rng, prob=0.5):
    if rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def _convert(image, alpha=1.0, beta=0.0):
    """x * alpha + beta, clipped and truncated back to uint8 (as mmseg does)."""
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def value_table(alpha=1.0, beta=0.0):
    """_convert of every uint8 value. _convert maps each pixel value on its own with the same
    dtypes whatever the array, so table[x] == _convert(x) bit for bit (tested)."""
    return _convert(_VALUES, alpha, beta)


def hue_table(shift):
    """The original's (H + shift) % 180 (int16 arithmetic, stored as uint8) for every value."""
    return ((_VALUES.astype(np.int16) + shift) % 180).astype(np.uint8)


def apply_table(image, table):
    return image if table is None else cv2.LUT(image, table)


def map_hsv_channel(bgr, channel, table):
    """BGR -> OpenCV 8-bit HSV, one channel through `table`, back to BGR."""
    tables = np.repeat(_VALUES[:, None], 3, axis=1)
    tables[:, channel] = table
    hsv = cv2.LUT(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), tables[None])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def photometric_distortion(image, rng, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
    """mmseg PhotoMetricDistortion on one BGR uint8 image; draws in the original's order.

    Brightness, contrast and the saturation/hue edits map each value on its own, so each is a
    256-entry table (value_table, hue_table) applied with cv2.LUT; back-to-back value maps
    (brightness then contrast) are composed into one table. The HSV round trips stay, as they
    are not value maps. Returns `image` itself (not a copy) when every step is off.
    """
    pending = [None]                         # value table not applied yet

    def then(table):
        pending[0] = table if pending[0] is None else table[pending[0]]

    def flush(img):
        img, pending[0] = apply_table(img, pending[0]), None
        return img

    def contrast():
        if rng.integers(2):
            then(value_table(alpha=rng.uniform(*contrast_range)))

    if rng.integers(2):
        then(value_table(beta=rng.uniform(-brightness_delta, brightness_delta)))
    mode = rng.integers(2)
    if mode == 1:
        contrast()
    if rng.integers(2):        # saturation, in OpenCV's 8-bit HSV
        image = flush(image)
        image = map_hsv_channel(image, 1, value_table(alpha=rng.uniform(*saturation_range)))
    if rng.integers(2):        # hue, H in [0, 180); shift in [-18, 17] like np randint
        image = flush(image)
        image = map_hsv_channel(image, 0, hue_table(rng.integers(-hue_delta, hue_delta)))
    if mode == 0:
        contrast()
    return flush(image)


def flip_and_pad(images, label, size, flip):
    """Stack BGR images into uint8 (N, size, size, 3) and the label into (size, size), padded
    bottom/right with 0, mirrored when `flip`; also returns the unpadded (h, w)."""
    height, width = label.shape
    out = np.zeros((len(images), size, size, 3), np.uint8)
    target = np.zeros((size, size), np.uint8)
    for dst, img in zip(out, images):
        dst[:height, :width] = cv2.flip(img, 1) if flip else img
    target[:height, :width] = label[:, ::-1] if flip else label
    return out, target, (height, width)


def train_pipeline(a_bgr, b_bgr, label, rng, scale, crop, cat_max_ratio=0.75):
    """The paper's training pipeline up to normalisation, in uint8.

    -> pair uint8 (2, K, K, 3) [A, B] BGR, label uint8 (K, K) {0, 1}, (h, w) the unpadded size
    (normalize_batch zeroes the rest, as the original padded after normalising). Same draws,
    in the same order, and same pixels as the original's resize, crop, flip, distort A,
    distort B, pad: the distortion is per pixel, so it runs on the crop before the flip.
    """
    height, width = draw_rescale_size(*label.shape, rng, scale)
    a, b = resize_pair(a_bgr, b_bgr, height, width)
    label = resize(label, height, width, nearest=True)
    top, left = random_crop_box(label, rng, crop, cat_max_ratio)
    box = np.s_[top:top + crop, left:left + crop]
    flip = rng.random() < 0.5
    a = photometric_distortion(a[box], rng)          # A first,
    b = photometric_distortion(b[box], rng)          # then B
    return flip_and_pad([a, b], label[box], crop, flip)


_STATS = {}


def _mean_std(device):
    """Per-channel mean and std of [A; B] in RGB, (6, 1, 1) float32 on `device` (cached)."""
    key = str(device)
    if key not in _STATS:
        mean = torch.from_numpy(np.tile(MEAN, 2)).view(6, 1, 1).to(device)
        std = torch.from_numpy(np.tile(STD, 2)).view(6, 1, 1).to(device)
        _STATS[key] = mean, std
    return _STATS[key]


def normalize_batch(pairs, device=None, valid_hw=None, non_blocking=True):
    """uint8 pairs (N, 2, H, W, 3) [A, B] BGR -> float32 (N, 6, H, W) [R_A, G_A, B_A, R_B, G_B,
    B_B] with ImageNet mean/std, computed on `device` (the uint8 batch is what crosses the bus).

    Bit for bit what normalize_pair gives per pair. `valid_hw` (N, 2): unpadded size of each
    sample; pixels beyond it become 0 (the original padded in normalised space).
    """
    x = torch.as_tensor(pairs).to(device, non_blocking=non_blocking)
    n, _, height, width, _ = x.shape
    x = x.flip(-1).permute(0, 1, 4, 2, 3).reshape(n, 6, height, width).float()
    mean, std = _mean_std(x.device)
    x.sub_(mean).div_(std)
    if valid_hw is not None:
        valid_hw = torch.as_tensor(valid_hw)
        if bool((valid_hw < torch.tensor([height, width])).any()):   # on the CPU: no sync
            valid_hw = valid_hw.to(x.device, non_blocking=non_blocking)
            rows = torch.arange(height, device=x.device)[None, :, None]
            cols = torch.arange(width, device=x.device)[None, None, :]
            pad = (rows >= valid_hw[:, 0, None, None]) | (cols >= valid_hw[:, 1, None, None])
            x.masked_fill_(pad[:, None], 0.0)
    return x


def normalize_image(bgr):
    """BGR uint8 HxWx3 -> RGB float32 HxWx3 with ImageNet mean/std."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    rgb -= MEAN
    rgb /= STD
    return rgb


def to_chw_tensor(image):
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def normalize_pair(a_bgr, b_bgr):
    """Two BGR uint8 images -> float32 tensor (6, H, W): [R_A, G_A, B_A, R_B, G_B, B_B]."""
    return to_chw_tensor(np.concatenate([normalize_image(a_bgr), normalize_image(b_bgr)], 2))


def train_transform(a_bgr, b_bgr, label, rng, scale, crop, cat_max_ratio=0.75):
    """The paper's training pipeline normalised on the CPU, as the original delivered it
    -> (img float32 (6, K, K), label int64 (K, K))."""
    pair, target, valid = train_pipeline(a_bgr, b_bgr, label, rng, scale, crop, cat_max_ratio)
    img = normalize_batch(torch.from_numpy(pair)[None], 'cpu', torch.tensor([valid]))[0]
    return img, torch.from_numpy(target).long()


def test_size(height, width, scale, divisor=32):
    """Keep-ratio fit into scale x scale, then each side up to a multiple of `divisor`."""
    height, width = rescale_size(height, width, (scale, scale))
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def test_resize_pair(a_bgr, b_bgr, scale, divisor=32):
    """Test pipeline before normalisation: keep-ratio resize to `scale`, then resize (not pad)
    to a multiple of 32 -> uint8 (2, H, W, 3) [A, B] BGR."""
    height, width = rescale_size(*a_bgr.shape[:2], (scale, scale))
    a, b = resize_pair(a_bgr, b_bgr, height, width)
    height, width = test_size(*a_bgr.shape[:2], scale, divisor)
    return np.stack(resize_pair(a, b, height, width))


def test_transform(a_bgr, b_bgr, scale, divisor=32):
    """Test pipeline, normalised on the CPU -> float32 (6, H, W) (the eval-mode dataset's img)."""
    a, b = test_resize_pair(a_bgr, b_bgr, scale, divisor)
    return normalize_pair(a, b)
