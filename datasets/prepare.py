"""Convert an official download into this project's `<dst>/<split>/{A,B,label}` layout.

    python -m datasets.prepare levir     --src LEVIR-CD   --dst data/LEVIR
    python -m datasets.prepare levir+    --src LEVIR-CD+  --dst data/LEVIR+
    python -m datasets.prepare s2looking --src S2Looking  --dst data/S2Looking
    python -m datasets.prepare dsifn     --src DSIFN      --dst data/DSIFN

Expected raw layouts (the official folder names; --src may also be a folder holding exactly one
such dataset folder):
    levir      {train,val,test}/{A,B,label}/*.png           1024x1024 -> 16 tiles of 256
    levir+     {train,test}/{A,B,label}/*.png                1024x1024 -> 16 tiles of 256
               (no official val: none is created; the levir+ preset uses test as val)
    s2looking  {train,val,test}/{Image1,Image2,label}/*.png  1024x1024 -> 16 tiles of 256
               (label1/label2 are ignored; `label` is their union)
    dsifn      {train,val,test}/{t1,t2,mask}                 t1/t2 *.jpg copied byte for byte,
               masks .png (train/val) or .tif (test) -> .png; 512x512 kept
Tiles are named `<stem>_<row>_<col>.png` (row/col = tile index). Labels are written as 8-bit
single-channel PNG with 0 = no change and 255 = change (any non-zero channel). Re-running skips
finished outputs; every file is written atomically.
"""
import argparse
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm

from utils.fileio import atomic_path

from .checks import DatasetError, list_names, read_image_info

LABEL_EXTS = ('.png', '.tif', '.tiff', '.bmp')
RAW = {
    'levir': dict(title='LEVIR-CD', splits=('train', 'val', 'test'),
                  folders=('A', 'B', 'label'), img_ext='.png', tile=256),
    'levir+': dict(title='LEVIR-CD+', splits=('train', 'test'),
                   folders=('A', 'B', 'label'), img_ext='.png', tile=256),
    's2looking': dict(title='S2Looking', splits=('train', 'val', 'test'),
                      folders=('Image1', 'Image2', 'label'), img_ext='.png', tile=256),
    'dsifn': dict(title='DSIFN', splits=('train', 'val', 'test'),
                  folders=('t1', 't2', 'mask'), img_ext='.jpg', tile=None),
}


def _write_png(path, image):
    with atomic_path(path, suffix='.png') as tmp:     # cv2 picks the format from the suffix
        if not cv2.imwrite(tmp, image):
            raise DatasetError(f'{path}: cannot write')


def _copy(src, dst):
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _read(path, label=False):
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED if label else cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f'{path}: cannot decode image')
    if label:       # any non-zero value (in any channel) is change
        image = ((image.reshape(*image.shape[:2], -1) != 0).any(2) * 255).astype(np.uint8)
    return image


def find_source(src, name):
    """The folder under which the raw splits of dataset `name` are; DatasetError if none."""
    layout = RAW[name]
    looks_right = lambda d: all(os.path.isdir(os.path.join(d, s, f))
                                for s in layout['splits'] for f in layout['folders'])
    if looks_right(src):
        return src
    inner = [os.path.join(src, d) for d in sorted(os.listdir(src))] if os.path.isdir(src) else []
    inner = [d for d in inner if os.path.isdir(d) and looks_right(d)]
    if len(inner) == 1:
        return inner[0]
    for split in layout['splits']:
        for folder in layout['folders']:
            expected = os.path.join(src, split, folder)
            if not os.path.isdir(expected):
                raise DatasetError(
                    f"--src {src}: does not look like {layout['title']}: expected folder "
                    f"{expected} ({layout['title']} has {'/'.join(layout['splits'])}, each with "
                    f"{'/'.join(layout['folders'])})")
    raise DatasetError(f'--src {src}: not a {layout["title"]} download')


def _pairs(split_dir, layout):
    """[(stem, a_path, b_path, label_path)] of one raw split, checking that all three exist."""
    a_dir, b_dir, label_dir = (os.path.join(split_dir, f) for f in layout['folders'])
    ext = layout['img_ext']
    stems = sorted(f[:-len(ext)] for f in os.listdir(a_dir)
                   if f.endswith(ext) and not f.startswith('.'))
    if not stems:
        raise DatasetError(f"{a_dir}: no '*{ext}' images")
    labels = {os.path.splitext(f)[0]: f for f in os.listdir(label_dir)
              if f.lower().endswith(LABEL_EXTS) and not f.startswith('.')}
    no_b = [s for s in stems if not os.path.isfile(os.path.join(b_dir, s + ext))]
    no_label = [s + ext for s in stems if s not in labels]
    if no_b or no_label:
        raise DatasetError(f'{split_dir}: ' + '; '.join(
            f'{len(found)} {what}: {list_names(found)}'
            for what, found in (('images without a ' + layout['folders'][1] + ' image', no_b),
                                ('images without a label', no_label)) if found))
    return [(s, os.path.join(a_dir, s + ext), os.path.join(b_dir, s + ext),
             os.path.join(label_dir, labels[s])) for s in stems]


def _tile_names(stem, rows, cols):
    return [(r, c, f'{stem}_{r}_{c}.png') for r in range(rows) for c in range(cols)]


def _convert_one(job):
    """Write the outputs of one raw pair; returns (outputs, written)."""
    (stem, a_path, b_path, label_path), out_dir, tile, img_ext = job
    out = {k: os.path.join(out_dir, k) for k in ('A', 'B', 'label')}
    if tile is None:                    # keep the image whole (DSIFN)
        img_name, label_name = stem + img_ext, stem + '.png'
        targets = [os.path.join(out['A'], img_name), os.path.join(out['B'], img_name),
                   os.path.join(out['label'], label_name)]
        if all(os.path.exists(t) for t in targets):
            return 1, 0
        _copy(a_path, targets[0])
        _copy(b_path, targets[1])
        _write_png(targets[2], _read(label_path, label=True))
        return 1, 1
    try:
        info = read_image_info(a_path)      # header only: lets a re-run skip decoding
    except DatasetError as e:
        raise DatasetError(f'{a_path}: {e}') from None
    size = (info.height, info.width)
    if size[0] % tile or size[1] % tile:
        raise DatasetError(f'{a_path}: size {size[1]}x{size[0]} is not a multiple of the '
                           f'tile size {tile} (--tile)')
    names = _tile_names(stem, size[0] // tile, size[1] // tile)
    if all(os.path.exists(os.path.join(out[k], n)) for _, _, n in names for k in out):
        return len(names), 0
    images = {'A': _read(a_path), 'B': _read(b_path), 'label': _read(label_path, label=True)}
    for key, image in images.items():
        if image.shape[:2] != size:
            raise DatasetError(f'{a_path}: {key} image size {image.shape[1]}x{image.shape[0]} '
                               f'differs from {size[1]}x{size[0]}')
    for r, c, name in names:
        window = np.s_[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
        for key, image in images.items():
            _write_png(os.path.join(out[key], name), image[window])
    return len(names), len(names)


def prepare(name, src, dst, tile='default', workers=4, progress=True):
    """Convert raw dataset `name` from `src` into `dst`; returns {split: (outputs, written)}."""
    if name not in RAW:
        raise DatasetError(f"unknown dataset '{name}'; choose one of: {', '.join(RAW)}")
    layout = RAW[name]
    tile = layout['tile'] if tile == 'default' else tile
    src = find_source(src, name)
    summary = {}
    for split in layout['splits']:
        pairs = _pairs(os.path.join(src, split), layout)
        out_dir = os.path.join(dst, split)
        for key in ('A', 'B', 'label'):
            os.makedirs(os.path.join(out_dir, key), exist_ok=True)
        jobs = [(p, out_dir, tile, layout['img_ext']) for p in pairs]
        with ThreadPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_convert_one, jobs), total=len(jobs), disable=not progress,
                                desc=f'{name} {split}', leave=False))
        summary[split] = (len(pairs), sum(r[0] for r in results), sum(r[1] for r in results))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('name', choices=sorted(RAW))
    parser.add_argument('--src', required=True, help='the unpacked official download')
    parser.add_argument('--dst', required=True, help='output root, e.g. data/LEVIR')
    parser.add_argument('--tile', type=int, default=None,
                        help='tile size (default: 256; DSIFN is not tiled)')
    parser.add_argument('--workers', type=int, default=4)
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.name, args.src, args.dst,
                          'default' if args.tile is None else args.tile, args.workers)
    except DatasetError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for split, (images, outputs, written) in summary.items():
        print(f'{args.name} {split}: {images} images -> {outputs} pairs in '
              f'{os.path.join(args.dst, split)} ({written} written, {outputs - written} already there)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
