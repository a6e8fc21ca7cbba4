"""The paper's train and test pipelines (FHD_REFERENCE.md §1.4, §1.6), as small functions.

Geometric steps act on one HxWx6 uint8 array (A and B joined) and the label, so A, B and the
label always get identical geometry. Every random draw comes from the `rng` argument, a
`numpy.random.Generator` made per sample, so results do not depend on worker count or order.
"""
import cv2
import numpy as np
import torch

MEAN = np.array([123.675, 116.28, 103.53], np.float32)   # ImageNet, RGB order
STD = np.array([58.395, 57.12, 57.375], np.float32)


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


def random_rescale(image, label, rng, scale, ratio_range=(0.5, 2.0)):
    """Resize(img_scale=(S, S), ratio_range): keep-ratio rescale to int(S * r), r ~ U[0.5, 2)."""
    low, high = ratio_range
    ratio = rng.random() * (high - low) + low
    target = int(scale * ratio)
    height, width = rescale_size(*image.shape[:2], (target, target))
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


def random_crop(image, label, rng, crop, cat_max_ratio=0.75, tries=10):
    """RandomCrop(crop_size, cat_max_ratio): up to 10 checked boxes, else the 11th unchecked."""
    height, width = label.shape
    top, left = crop_box(height, width, crop, rng)
    if cat_max_ratio < 1:
        for _ in range(tries):
            if crop_is_balanced(label[top:top + crop, left:left + crop], cat_max_ratio):
                break
            top, left = crop_box(height, width, crop, rng)
    return image[top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]


def random_hflip(image, label, rng, prob=0.5):
    if rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def _convert(image, alpha=1.0, beta=0.0):
    """x * alpha + beta, clipped and truncated back to uint8 (as mmseg does)."""
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image, rng, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
    """mmseg PhotoMetricDistortion on one BGR uint8 image; draws in the original's order."""
    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)

    def contrast(img):
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*contrast_range))
        return img

    if mode == 1:
        image = contrast(image)
    if rng.integers(2):        # saturation, in OpenCV's 8-bit HSV
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):        # hue, H in [0, 180); shift in [-18, 17] like np randint
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        shift = rng.integers(-hue_delta, hue_delta)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0:
        image = contrast(image)
    return image


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


def pad_to(image, label, size):
    """Pad bottom/right to size x size: HxWxC image with 0 (normalized space), label with 0.

    Returns the CHW float32 image and the int64 label (padding and layout change in one copy).
    """
    height, width = label.shape
    out = np.zeros((image.shape[2], max(size, height), max(size, width)), np.float32)
    out[:, :height, :width] = image.transpose(2, 0, 1)
    target = np.zeros(out.shape[1:], np.int64)
    target[:height, :width] = label
    return out, target


def train_transform(a_bgr, b_bgr, label, rng, scale, crop, cat_max_ratio=0.75):
    """The paper's training pipeline -> (img float32 (6,K,K), label int64 (K,K))."""
    pair = np.concatenate([a_bgr, b_bgr], axis=2)
    pair, label = random_rescale(pair, label, rng, scale)
    pair, label = random_crop(pair, label, rng, crop, cat_max_ratio)
    pair, label = random_hflip(pair, label, rng)
    a = photometric_distortion(np.ascontiguousarray(pair[..., :3]), rng)   # A first,
    b = photometric_distortion(np.ascontiguousarray(pair[..., 3:]), rng)   # then B
    image = np.concatenate([normalize_image(a), normalize_image(b)], axis=2)
    image, label = pad_to(image, label, crop)
    return torch.from_numpy(image), torch.from_numpy(label)


def test_size(height, width, scale, divisor=32):
    """Keep-ratio fit into scale x scale, then each side up to a multiple of `divisor`."""
    height, width = rescale_size(height, width, (scale, scale))
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def test_transform(a_bgr, b_bgr, scale, divisor=32):
    """Test pipeline: keep-ratio resize to `scale`, then resize (not pad) to a multiple of 32."""
    height, width = rescale_size(*a_bgr.shape[:2], (scale, scale))
    a, b = resize(a_bgr, height, width), resize(b_bgr, height, width)
    height, width = test_size(*a_bgr.shape[:2], scale, divisor)
    return normalize_pair(resize(a, height, width), resize(b, height, width))
