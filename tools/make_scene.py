"""A synthetic georeferenced scene pair (GeoTIFF) for infer.py's scene mode, and its picture.

    python tools/make_scene.py --out data/scene [--size 2048] [--dtype uint16] [--seed 0]
    python tools/make_scene.py --out data/scene --picture output_path/scene/change.tif \
        [--vector output_path/scene/changes.geojson] [--png assets/scene_result.png]

The scene is a mosaic of the demo set's 128 x 128 tiles (datasets/synthetic.py: ground, roads,
trees, buildings that appear or disappear between the dates), so a model trained on the demo
set sees objects at its training scale. Written to OUT/A.tif, OUT/B.tif and OUT/label.tif
(the true change, 0/1) in UTM 33N (EPSG:32633) at 0.5 m per pixel, tiled and compressed, one
row of tiles at a time (memory does not grow with --size). A's footprint is a slightly
rotated rectangle: the corners outside it are nodata (0), as on an orthorectified strip.
With --dtype uint16 the values are 12-bit (x 16 plus noise), as from a satellite sensor.

--picture draws A | B | the change mask of a result over B (nodata grey, changes red, the true
changes outlined in green) downscaled to a width of about 1,500 pixels, and prints the
precision/recall/F1 of the result against OUT/label.tif.
"""
import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rasterio  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from datasets.synthetic import make_pair  # noqa: E402
from utils.fileio import atomic_path  # noqa: E402

TILE = 128
CRS = 'EPSG:32633'
ORIGIN = (500000.0, 4650000.0)
PIXEL = 0.5
FOOTPRINT_TILT = 2.0          # degrees: A's valid footprint is a slightly rotated rectangle


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='data/scene', help='folder of A.tif, B.tif, label.tif')
    p.add_argument('--size', type=int, default=2048, help='side in pixels (a multiple of 128)')
    p.add_argument('--dtype', default='uint8', choices=('uint8', 'uint16'))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-border', action='store_true', help='no nodata corners')
    p.add_argument('--picture', metavar='MASK.tif', help='draw this result instead of making a scene')
    p.add_argument('--vector', help='(with --picture) only used to report the polygon count')
    p.add_argument('--png', default='assets/scene_result.png', help='(with --picture) the picture')
    args = p.parse_args(argv)
    if args.size <= 0 or args.size % TILE:
        p.error(f'--size must be a positive multiple of {TILE}')
    return args


def footprint(rows, cols, size):
    """bool mask of A's valid footprint for pixel rows x cols of a size x size scene."""
    angle = np.deg2rad(FOOTPRINT_TILT)
    c = (size - 1) / 2
    y, x = rows[:, None] - c, cols[None, :] - c
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    half = size * 0.47
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def tile_row(seed, row, n_tiles):
    """A, B (H, W, 3 RGB) and the 0/1 label of one row of 128 x 128 demo tiles."""
    parts = [make_pair(seed, 7, row * n_tiles + col, TILE) for col in range(n_tiles)]
    a = np.concatenate([p[0] for p in parts], 1)[..., ::-1]          # BGR -> RGB
    b = np.concatenate([p[1] for p in parts], 1)[..., ::-1]
    label = (np.concatenate([p[2] for p in parts], 1) > 0).astype(np.uint8)
    return a, b, label


def to_dtype(img, dtype, rng):
    img = img.transpose(2, 0, 1)
    if dtype == 'uint8':
        return np.maximum(img, 1)                 # 0 is nodata
    return (img.astype(np.uint16) * 16 + rng.integers(0, 16, img.shape, dtype=np.uint16) + 1)


def write_scene(out, size, dtype='uint8', seed=0, border=True, log=print):
    """OUT/A.tif, OUT/B.tif, OUT/label.tif; returns their paths."""
    os.makedirs(out, exist_ok=True)
    n_tiles = size // TILE
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    profile = dict(driver='GTiff', width=size, height=size, crs=CRS, transform=transform, tiled=True,
                   blockxsize=256, blockysize=256, compress='deflate', BIGTIFF='IF_SAFER')
    paths = [os.path.join(out, name) for name in ('A.tif', 'B.tif', 'label.tif')]
    rng = np.random.default_rng(seed)
    with atomic_path(paths[0], '.tif') as ta, atomic_path(paths[1], '.tif') as tb, \
            atomic_path(paths[2], '.tif') as tl, \
            rasterio.open(ta, 'w', count=3, dtype=dtype, nodata=0, photometric='RGB', **profile) as da, \
            rasterio.open(tb, 'w', count=3, dtype=dtype, nodata=0, photometric='RGB', **profile) as db, \
            rasterio.open(tl, 'w', count=1, dtype='uint8', **profile) as dl:
        cols = np.arange(size)
        for row in range(n_tiles):
            a, b, label = tile_row(seed, row, n_tiles)
            a, b = to_dtype(a, dtype, rng), to_dtype(b, dtype, rng)
            if border:
                a[:, ~footprint(np.arange(row * TILE, (row + 1) * TILE), cols, size)] = 0
            window = Window(0, row * TILE, size, TILE)
            da.write(a, window=window)
            db.write(b, window=window)
            dl.write(label, 1, window=window)
        for ds in (da, db):
            ds.update_tags(SOURCE='tools/make_scene.py: mosaic of datasets/synthetic.py demo tiles')
    log(f'wrote {size}x{size} {dtype} scene to {", ".join(paths)}')
    return paths


# ------------------------------------------------------------------------------- the picture

def read_small(path, width, bands=None, resampling=rasterio.enums.Resampling.nearest):
    """A raster read at about `width` pixels wide, bands first."""
    with rasterio.open(path) as ds:
        scale = width / ds.width
        shape = (len(bands) if bands else ds.count, max(1, round(ds.height * scale)), width)
        return ds.read(bands, out_shape=shape, resampling=resampling)


def to_display(rgb):
    """(3, h, w) any integer type -> (h, w, 3) BGR uint8."""
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb / 16, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)[..., ::-1])


def scores(mask_path, label_path):
    """Precision, recall, F1 (%) of a 0/1/255 mask against the 0/1 label, on valid pixels; read
    in row blocks (any size)."""
    tp = fp = fn = 0
    with rasterio.open(mask_path) as dm, rasterio.open(label_path) as dl:
        for r0 in range(0, dm.height, 1024):
            window = Window(0, r0, dm.width, min(1024, dm.height - r0))
            mask, label = dm.read(1, window=window), dl.read(1, window=window)
            valid = mask != 255
            pred, true = (mask == 1) & valid, (label == 1) & valid
            tp += int((pred & true).sum())
            fp += int((pred & ~true).sum())
            fn += int((~pred & true).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return 100 * precision, 100 * recall, 100 * f1


def draw_picture(out, mask_path, png, panel_width=448, log=print):
    smooth = rasterio.enums.Resampling.average          # images averaged, masks nearest
    a = to_display(read_small(os.path.join(out, 'A.tif'), panel_width, [1, 2, 3], smooth))
    b = to_display(read_small(os.path.join(out, 'B.tif'), panel_width, [1, 2, 3], smooth))
    mask = read_small(mask_path, panel_width)[0]
    label = read_small(os.path.join(out, 'label.tif'), panel_width)[0]
    result = b.copy()
    result[mask == 255] = (128, 128, 128)
    changed = mask == 1
    result[changed] = (0.4 * result[changed] + 0.6 * np.array([0, 0, 255])).astype(np.uint8)
    truth = ((label == 1) & (mask != 255)).astype(np.uint8)        # the truth where it was seen
    contours, _ = cv2.findContours(truth, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(result, contours, -1, (0, 255, 0), 1)
    gap = np.full((a.shape[0], 6, 3), 255, np.uint8)
    picture = np.concatenate([a, gap, b, gap, result], 1)
    ok, buf = cv2.imencode('.png', picture, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    with atomic_path(png, '.png') as tmp, open(tmp, 'wb') as f:
        f.write(buf.tobytes())
    log(f'wrote {png} ({picture.shape[1]}x{picture.shape[0]})')


def main(argv=None):
    args = parse_args(argv)
    if args.picture:
        for path in (args.picture, os.path.join(args.out, 'label.tif')):
            if not os.path.isfile(path):
                print(f'error: {path} not found (make the scene and run infer.py first)', file=sys.stderr)
                return 2
        precision, recall, f1 = scores(args.picture, os.path.join(args.out, 'label.tif'))
        print(f'{args.picture} vs {args.out}/label.tif: P {precision:.2f} R {recall:.2f} F1 {f1:.2f} %')
        draw_picture(args.out, args.picture, args.png)
        return 0
    write_scene(args.out, args.size, args.dtype, args.seed, border=not args.no_border)
    return 0


if __name__ == '__main__':
    sys.exit(main())
