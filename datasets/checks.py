"""Cheap open-time checks of a change-detection split (`<split>/{A,B,label}`).

Opening a split reads only the first bytes (PNG IHDR / JPEG SOF) and the last bytes (PNG IEND
chunk / JPEG EOI marker) of each file, on a thread pool, so 10,000 pairs are checked in about a
second. What each check costs:

- header only: missing folders, A without B/label and the reverse, empty split, unknown or
  corrupt header, A/B and label size mismatch, truncated file (the end marker is missing);
- decoded at open time: labels whose header says they have colour channels (3/4-channel or
  palette PNG, 3-component JPEG) - decoded to check that the channels are equal; and images in
  formats other than PNG/JPEG (TIFF, BMP, ...), which have no cheap header parser here;
- decoded lazily: pixel data itself. A file with an intact header and end marker but corrupt
  compressed data is reported by `__getitem__` with a DatasetError naming the file.
"""
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_IEND = b'\x00\x00\x00\x00IEND\xaeB`\x82'
# JPEG start-of-frame markers carry the image size (C4, C8 and CC are not frames).
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
MAX_LISTED = 3


class DatasetError(ValueError):
    """Bad dataset input; the message is one line naming the files and what is wrong."""


@dataclass(frozen=True)
class ImageInfo:
    height: int
    width: int
    channels: int       # 1 gray, 2 gray+alpha, 3 colour, 4 colour+alpha
    palette: bool = False


def list_names(names, limit=MAX_LISTED):
    """'a, b, c (+12 more)' - the first few names and a count of the rest."""
    names = list(names)
    shown = ', '.join(str(n) for n in names[:limit])
    return shown + (f' (+{len(names) - limit} more)' if len(names) > limit else '')


def _png_info(head, tail, size):
    if len(head) < 33 or head[12:16] != b'IHDR':
        raise DatasetError('corrupt PNG header')
    width, height, _depth, colour_type = struct.unpack('>IIBB', head[16:26])
    if tail != PNG_IEND:
        raise DatasetError('truncated PNG (no IEND chunk at the end)')
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type)
    if channels is None or width == 0 or height == 0:
        raise DatasetError('corrupt PNG header')
    return ImageInfo(height, width, channels, palette=colour_type == 3)


def _jpeg_info(f, size):
    pos = 2
    while pos + 4 <= size:
        f.seek(pos)
        marker = f.read(4)
        if len(marker) < 4 or marker[0] != 0xFF:
            break
        if marker[1] == 0xFF:               # fill byte before a marker
            pos += 1
            continue
        length = struct.unpack('>H', marker[2:4])[0]
        if marker[1] in JPEG_SOF:
            frame = f.read(6)
            if len(frame) < 6:
                break
            _precision, height, width, components = struct.unpack('>BHHB', frame)
            f.seek(max(size - 64, 0))
            if b'\xff\xd9' not in f.read():
                raise DatasetError('truncated JPEG (no end-of-image marker)')
            if height == 0 or width == 0:
                break
            return ImageInfo(height, width, components)
        pos += 2 + length
    raise DatasetError('corrupt JPEG header (no frame header found)')


def read_image_info(path):
    """Size and channel count of an image from its header; DatasetError if unreadable."""
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(33)
            if head.startswith(PNG_SIGNATURE):
                if size < 57:           # signature + IHDR + one IDAT + IEND
                    raise DatasetError('truncated PNG')
                f.seek(size - 12)
                return _png_info(head, f.read(12), size)
            if head.startswith(b'\xff\xd8'):
                return _jpeg_info(f, size)
    except OSError as e:
        raise DatasetError(f'cannot read ({e.strerror})') from None
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # other formats: decode once
    if image is None:
        raise DatasetError('not a readable image')
    channels = 1 if image.ndim == 2 else image.shape[2]
    return ImageInfo(image.shape[0], image.shape[1], channels)


def label_channels_equal(label):
    """True if a decoded HxW or HxWxC label is gray (all colour channels equal)."""
    if label.ndim == 2:
        return True
    colour = label[..., :3] if label.shape[2] >= 3 else label[..., :1]
    return bool((colour == colour[..., :1]).all())


def scan_images(folder, suffix):
    """Sorted relative names of the non-hidden files under `folder` ending in `suffix`."""
    names = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith('.')]
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            if name.endswith(suffix) and not name.startswith('.'):
                names.append(name if rel == '.' else os.path.join(rel, name))
    return sorted(names)


def _check_sample(paths):
    """Problems of one sample as a list of (problem, name); empty if fine."""
    a_path, b_path, label_path, name = paths
    problems, infos = [], {}
    for key, path in (('A', a_path), ('B', b_path), ('label', label_path)):
        try:
            infos[key] = read_image_info(path)
        except DatasetError as e:
            problems.append((f'{key} unreadable: {e}', name))
    if problems:
        return problems
    a, b, label = infos['A'], infos['B'], infos['label']
    if (a.height, a.width) != (b.height, b.width):
        problems.append(('A/B size mismatch', name))
    if (label.height, label.width) != (a.height, a.width):
        problems.append(('label size differs from A', name))
    if label.channels > 2 or label.palette:     # cannot tell from the header: decode it
        decoded = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            problems.append(('label unreadable: cannot decode', name))
        elif not label_channels_equal(decoded):
            problems.append(('colour label (channels differ; expected a single-channel '
                             '0/255 mask)', name))
    return problems


def require_folders(split_dir):
    """{'A': path, 'B': path, 'label': path}; DatasetError if the split or a folder is missing."""
    folders = {k: os.path.join(split_dir, k) for k in ('A', 'B', 'label')}
    if not os.path.isdir(split_dir):
        raise DatasetError(f'{split_dir}: split folder not found')
    missing = [k for k, d in folders.items() if not os.path.isdir(d)]
    if missing:
        raise DatasetError(f"{split_dir}: missing folder(s) {', '.join(missing)} "
                           '(expected A/, B/ and label/)')
    return folders


def check_split(split_dir, img_suffix, label_suffix, workers=8, progress=None):
    """Check a split folder and return its sorted A-relative sample names.

    Raises one DatasetError listing every kind of problem with its first few files.
    """
    folders = require_folders(split_dir)
    names = scan_images(folders['A'], img_suffix)
    if not names:
        raise DatasetError(f"{folders['A']}: empty split, no '*{img_suffix}' files")
    to_label = lambda n: n[:-len(img_suffix)] + label_suffix
    b_names = set(scan_images(folders['B'], img_suffix))
    label_names = set(scan_images(folders['label'], label_suffix))
    a_set, a_labels = set(names), {to_label(n) for n in names}
    pairing = [('A files without B', [n for n in names if n not in b_names]),
               ('A files without label', [n for n in names if to_label(n) not in label_names]),
               ('B files without A', sorted(b_names - a_set)),
               ('label files without A', sorted(label_names - a_labels))]
    issues = [(what, found) for what, found in pairing if found]
    if issues:
        raise DatasetError(f'{split_dir}: ' + '; '.join(
            f'{len(found)} {what}: {list_names(found)}' for what, found in issues))

    jobs = [(os.path.join(folders['A'], n), os.path.join(folders['B'], n),
             os.path.join(folders['label'], to_label(n)), n) for n in names]
    show = len(jobs) >= 2000 if progress is None else progress
    chunks = [jobs[i:i + 256] for i in range(0, len(jobs), 256)]   # few futures, low overhead
    check_chunk = lambda chunk: [p for job in chunk for p in _check_sample(job)]
    by_problem = {}
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(jobs), disable=not show,
                                                   desc=f'checking {split_dir}', leave=False) as bar:
        for chunk, problems in zip(chunks, pool.map(check_chunk, chunks)):
            bar.update(len(chunk))
            for what, name in problems:
                by_problem.setdefault(what, []).append(name)
    if by_problem:
        raise DatasetError(f'{split_dir}: ' + '; '.join(
            f'{len(found)} file(s) with {what}: {list_names(found)}'
            for what, found in by_problem.items()))
    return names


def decode_image(path):
    """BGR uint8 HxWx3 from an image file, DatasetError naming the file if it fails."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f'{path}: cannot decode image (missing, truncated or corrupt)')
    return image


def decode_label(path):
    """HxW uint8 {0,1} change mask: every non-zero value is change."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f'{path}: cannot decode label (missing, truncated or corrupt)')
    if not label_channels_equal(label):
        raise DatasetError(f'{path}: colour label (channels differ); expected a single-channel '
                           '0/255 mask')
    if label.ndim == 3:
        label = label[..., 0]
    return (label != 0).astype(np.uint8)
