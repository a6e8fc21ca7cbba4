"""ChangeDetectionDataset: `<root>/<split>/{A,B,label}` pairs -> tensors (uint8 or normalized)."""
import os
from collections import Counter

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import (DatasetError, check_split, decode_image, decode_label, require_folders,
                     scan_images)
from .presets import SPLITS
from .transforms import normalize_batch, test_resize_pair, test_transform, train_pipeline

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')


def read_pair(a_path, b_path):
    """Decode A and B as BGR uint8 HxWx3; DatasetError if unreadable or of different sizes."""
    a, b = decode_image(a_path), decode_image(b_path)
    if a.shape != b.shape:
        raise DatasetError(f'{a_path} and {b_path}: A/B size mismatch '
                           f'({a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]})')
    return a, b


def read_label(path, shape=None):
    """HxW uint8 {0, 1}: every non-zero value is change; checks the size against `shape`."""
    label = decode_label(path)
    if shape is not None and label.shape != tuple(shape[:2]):
        raise DatasetError(f'{path}: label size {label.shape[1]}x{label.shape[0]} differs '
                           f'from the image ({shape[1]}x{shape[0]})')
    return label


def _detect_suffix(folder):
    """The one image suffix used in `folder` (for custom datasets)."""
    found = Counter(os.path.splitext(n)[1] for n in scan_images(folder, '')
                    if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)
    if len(found) != 1:
        raise DatasetError(f'{folder}: cannot tell the image suffix '
                           f"(found {', '.join(sorted(found)) or 'no images'})")
    return next(iter(found))


class ChangeDetectionDataset(Dataset):
    """One split of a preset. Checked once when opened (see datasets/checks.py).

    train=True: the paper's augmentation; `ds[(index, stream_id)]` seeds its random generator
    from (seed, stream_id), so a sample is reproducible whatever the worker layout.
    A plain int index uses stream_id = index. train=False: the test pipeline.

    raw (default: = train) chooses what `img` is:
      raw=True:  uint8 (2, H, W, 3), A and B in BGR, for `normalize_batch` on the device (a
                 quarter of the bytes through the loader); `label` uint8; in training also
                 `valid_hw` (2,) int64, the unpadded size;
      raw=False: float32 (6, H, W) normalized RGB, label int64 (the original's output; what
                 infer.py and train.py's validation read).
    Test samples also carry `ori_shape`; every sample carries `name`.
    """

    def __init__(self, preset, split='train', train=None, seed=1208, check=True, raw=None):
        if split not in SPLITS:
            raise DatasetError(f"split '{split}': expected one of {', '.join(SPLITS)}")
        if preset.name == 'demo':
            from .synthetic import ensure_demo
            ensure_demo(preset.root)
        self.preset, self.split, self.seed = preset, split, seed
        self.train = (split == 'train') if train is None else train
        self.raw = self.train if raw is None else raw
        self.split_dir = os.path.join(preset.root, preset.splits[split])
        require_folders(self.split_dir)
        self.img_suffix = preset.img_suffix or _detect_suffix(os.path.join(self.split_dir, 'A'))
        self.label_suffix = preset.label_suffix or (
            _detect_suffix(os.path.join(self.split_dir, 'label')))
        if check:
            self.names = check_split(self.split_dir, self.img_suffix, self.label_suffix)
        else:
            self.names = scan_images(os.path.join(self.split_dir, 'A'), self.img_suffix)

    def __len__(self):
        return len(self.names)

    def paths(self, index):
        name = self.names[index]
        label_name = name[:-len(self.img_suffix)] + self.label_suffix
        return (os.path.join(self.split_dir, 'A', name), os.path.join(self.split_dir, 'B', name),
                os.path.join(self.split_dir, 'label', label_name))

    def __getitem__(self, key):
        index, stream_id = key if isinstance(key, (tuple, list)) else (key, key)
        index = int(index)
        a_path, b_path, label_path = self.paths(index)
        a, b = read_pair(a_path, b_path)
        label = read_label(label_path, a.shape)
        name = self.names[index]
        if self.train:
            rng = np.random.default_rng([self.seed, int(stream_id)])
            pair, target, valid = train_pipeline(a, b, label, rng, self.preset.scale,
                                                 self.preset.crop)
            pair, target, valid = torch.from_numpy(pair), torch.from_numpy(target), torch.tensor(valid)
            if self.raw:
                return {'img': pair, 'label': target, 'valid_hw': valid, 'name': name}
            img = normalize_batch(pair[None], 'cpu', valid[None])[0]
            return {'img': img, 'label': target.long(), 'name': name}
        if self.raw:
            img = torch.from_numpy(test_resize_pair(a, b, self.preset.scale))
            target = torch.from_numpy(label)
        else:
            img = test_transform(a, b, self.preset.scale)
            target = torch.from_numpy(label.astype(np.int64))
        return {'img': img, 'label': target, 'name': name, 'ori_shape': tuple(label.shape)}

    def __repr__(self):
        return (f'ChangeDetectionDataset({self.preset.name}, {self.split} -> {self.split_dir}, '
                f'{len(self)} pairs, train={self.train}, raw={self.raw})')
