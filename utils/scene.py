"""Change maps of whole scenes in bounded memory: windows in, blended rows out, as they finish.

The tiles are those of `utils.inference.sliding_window_logits` on the same image (the scene
padded to a multiple of 32, tiles of `tile` stepping `tile - overlap`, the last one aligned to
the end), run in the same batches (consecutive tiles in row-major order) and blended with the
same fading window in the same order, so the logits are the in-memory path's to the last bit.
What differs is where the pixels live:

- a DataLoader reads the windows of A and B straight from the files (workers optional), turns
  them into the network's input (`datasets.normalize_pair`'s arithmetic; pixels invalid in A or B
  become 0, the mean colour, as the padding) and prefetches while the network runs;
- the blend accumulates into a buffer of `tile + 256` rows; when the last tile of a tile row is
  in, the rows above the next tile row are final, and whole 256-row blocks of them are turned
  into mask / probability and handed to a writer thread (compression and disk overlap the
  network). Memory: the model, a few batches, the buffer (13 bytes per pixel of
  (tile + 256) x width) and GDAL's capped block cache - never the scene.

Outputs (GeoTIFF: A's CRS and transform, tiled 256 x 256, DEFLATE, internal overviews, written
under a temporary name and renamed when complete):
  mask   uint8: 0 no change, 1 change, 255 nodata (invalid in A or B)
  prob   uint8: round(254 * p) for the change probability p, 255 nodata (band scale 1/254)
  vector GeoJSON polygons of the changed regions (4-connected), A's CRS, with `area` (CRS units
         squared), `mean_prob` and `pixels`; drawn after the mask from its regions (see
         utils/regions.py), one polygon per region whatever the blocks it spans.
With `min_area`, regions smaller than it are dropped from the polygons and set to 0 in the mask.
"""
import json
import os
import queue
import tempfile
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import shapes
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.raster import SceneError, crs_name, gdal_message, raster_env, scene_cache_bytes
from datasets.transforms import MEAN, STD
from utils.fileio import atomic_path
from utils.inference import SIZE_DIVISOR, autocast_context, tile_starts, window_weight
from utils.regions import (BOTTOM, LEFT, PIXELS, PROB_SUM, RIGHT, SEED_COL, SEED_ROW, TOP,
                           RegionTracker, region_mask)

ROW_BLOCK = 256              # GeoTIFF block side; rows are written in whole block rows
NODATA = 255
PROB_SCALE = 254             # prob = round(254 p): 255 stays free for nodata
OVERVIEW_MIN_SIDE = 256      # overviews down to about this size
MEAN_CHW = MEAN[:, None, None]
STD_CHW = STD[:, None, None]


# ------------------------------------------------------------------------------- tile plan

@dataclass(frozen=True)
class TilePlan:
    """The tiles of sliding_window_logits for an image of height x width."""
    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self):
        padded_h = -(-self.height // SIZE_DIVISOR) * SIZE_DIVISOR
        padded_w = -(-self.width // SIZE_DIVISOR) * SIZE_DIVISOR
        tile_h, tile_w = min(self.tile, padded_h), min(self.tile, padded_w)
        ys = tile_starts(padded_h, tile_h, self.overlap)
        xs = tile_starts(padded_w, tile_w, self.overlap)
        for name, value in (('padded_w', padded_w), ('tile_h', tile_h), ('tile_w', tile_w),
                            ('ys', tuple(ys)), ('xs', tuple(xs)),
                            ('boxes', tuple((y, x) for y in ys for x in xs))):
            object.__setattr__(self, name, value)


# ---------------------------------------------------------------------------- tile reading

def normalize_tile(a_rgb, b_rgb, valid, out):
    """Fill `out` (6, tile_h, tile_w) float32 with the network input: A's then B's RGB
    normalized exactly as datasets.normalize_pair does; invalid pixels and the padding beyond
    the image are 0."""
    h, w = valid.shape
    out[...] = 0.0
    for k, rgb in enumerate((a_rgb, b_rgb)):
        x = out[3 * k:3 * k + 3, :h, :w]
        x[...] = rgb                 # uint8 -> float32, exact
        x -= MEAN_CHW
        x /= STD_CHW
    inside = out[:, :h, :w]
    inside[:, ~valid] = 0.0
    return out


class TileDataset(Dataset):
    """Tile i of `plan` read from `pair`: (i, A RGB, B RGB, valid) as uint8/bool arrays of the
    tile's part inside the scene; a read error comes back as text (a worker's exception would
    reach the main process as a traceback)."""

    def __init__(self, pair, plan):
        self.pair, self.plan = pair, plan

    def __len__(self):
        return len(self.plan.boxes)

    def __getitem__(self, index):
        plan = self.plan
        y, x = plan.boxes[index]
        h, w = min(plan.tile_h, plan.height - y), min(plan.tile_w, plan.width - x)
        try:
            return (index, *self.pair.read(Window(x, y, w, h)))
        except SceneError as err:
            return index, None, None, str(err)


class TileCollate:
    """Batch of network inputs (B, 6, tile_h, tile_w), normalized straight into one tensor; in
    a worker that tensor lives in shared memory, so it reaches the main process without a copy
    (as torch's default_collate does) and the worker's heap does not churn."""

    def __init__(self, tile_h, tile_w):
        self.tile_h, self.tile_w = tile_h, tile_w

    def __call__(self, items):
        for _, a, _, extra in items:
            if a is None:
                return {'error': extra}
        shape = (len(items), 6, self.tile_h, self.tile_w)
        if torch.utils.data.get_worker_info() is not None:
            storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * 4)
            img = torch.empty(0, dtype=torch.float32).set_(storage).view(shape)
        else:
            img = torch.empty(shape, dtype=torch.float32)
        valid = np.zeros((len(items), self.tile_h, self.tile_w), bool)
        for k, (_, a, b, v) in enumerate(items):
            normalize_tile(a, b, v, out=img[k].numpy())
            valid[k, :v.shape[0], :v.shape[1]] = v
        return {'index': [i for i, _, _, _ in items], 'img': img, 'valid': valid}


class _WorkerEnv:
    """worker_init_fn: the scene's GDAL settings for a worker's whole life (a forked worker
    inherits them anyway; a spawned one would not)."""

    def __init__(self, cache_bytes):
        self.cache_bytes = cache_bytes

    def __call__(self, worker_id):
        global _worker_env
        _worker_env = raster_env(self.cache_bytes)
        _worker_env.__enter__()


_worker_env = None


def tile_loader(pair, plan, batch_size, num_workers=0, pin_memory=False, cache_bytes=None):
    """Batches of consecutive tiles in row-major order (the in-memory path's batches)."""
    init = _WorkerEnv(cache_bytes) if num_workers and cache_bytes else None
    return DataLoader(TileDataset(pair, plan), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=TileCollate(plan.tile_h, plan.tile_w),
                      pin_memory=pin_memory,
                      prefetch_factor=2 if num_workers else None, worker_init_fn=init)


# ----------------------------------------------------------------------- streaming blend

@dataclass
class Block:
    """Rows [row0, row0 + n) of the blended scene, final. `sums` (K, n, width) and `weights`
    (n, width) are views into the blend buffer, good until the stream moves on:
    logits = sums / weights, exactly the in-memory path's division."""
    row0: int
    sums: torch.Tensor
    weights: torch.Tensor
    valid: np.ndarray

    def logits(self, cols=slice(None)):
        return self.sums[:, :, cols] / self.weights[:, cols]


class RowBlender:
    """The blend buffer: `tile_h + row_block` rows of the padded width, holding the weighted
    logit sums, the weight sums and the validity of rows not yet handed out."""

    def __init__(self, plan, device, row_block=ROW_BLOCK):
        self.plan, self.device, self.row_block = plan, device, row_block
        if len(plan.boxes) == 1:    # one tile: the model's output as it is, as the in-memory path
            self.weight = torch.ones(plan.tile_h, plan.tile_w, device=device)
        else:
            self.weight = window_weight(plan.tile_h, plan.tile_w, plan.overlap, device)
        self.rows = plan.tile_h + row_block
        self.sums = None                                  # (K, rows, padded_w) once K is known
        self.weights = torch.zeros(self.rows, plan.padded_w, device=device)
        self.valid = np.zeros((self.rows, plan.width), bool)
        self.start = 0                                    # scene row of buffer row 0
        self.tile_row = {y: i for i, y in enumerate(plan.ys)}

    @torch.no_grad()
    def add(self, index, logits, valid):
        """Blend tile `index`; returns the scene row above which everything is final when this
        was the last tile of its tile row, else None."""
        plan, (th, tw) = self.plan, (self.plan.tile_h, self.plan.tile_w)
        y, x = plan.boxes[index]
        if self.sums is None:
            self.sums = torch.zeros(logits.shape[0], self.rows, plan.padded_w, device=self.device)
        r = y - self.start
        self.sums[:, r:r + th, x:x + tw] += logits * self.weight
        self.weights[r:r + th, x:x + tw] += self.weight
        h, w = min(th, plan.height - y), min(tw, plan.width - x)
        self.valid[r:r + h, x:x + w] = valid[:h, :w]
        if x != plan.xs[-1]:
            return None
        row = self.tile_row[y]
        return plan.height if row == len(plan.ys) - 1 else plan.ys[row + 1]

    def blocks(self, done):
        """Hand out the final rows below `done` in whole row blocks (all of them at the end)."""
        final = done == self.plan.height
        while self.start < done and (final or self.start + self.row_block <= done):
            n = min(self.row_block, done - self.start)
            width = self.plan.width
            yield Block(self.start, self.sums[:, :n, :width], self.weights[:n, :width], self.valid[:n])
            with torch.no_grad():
                shift_up(self.sums, n, axis=1)
                shift_up(self.weights, n, axis=0)
                shift_up(torch.from_numpy(self.valid), n, axis=0)     # shares valid's memory
            self.start += n


def stream_blocks(model, batches, plan, device, amp='none', row_block=ROW_BLOCK, progress=None):
    """Yield the scene's finished row blocks (`Block`, views good until the next one) in
    order, as the tiles of `batches` (tile_loader) come in."""
    device = torch.device(device)
    blender = RowBlender(plan, device, row_block)
    autocast = autocast_context(device, amp)
    for batch in batches:
        if 'error' in batch:
            raise SceneError(batch['error'])
        with torch.inference_mode(), autocast:
            out = model(batch['img'].to(device, non_blocking=True)).float()
        for k, index in enumerate(batch['index']):
            done = blender.add(index, out[k], batch['valid'][k])
            if done is not None:
                yield from blender.blocks(done)
        if progress is not None:
            progress.update(len(batch['index']))


def stream_logits(model, batches, plan, device, amp='none', row_block=ROW_BLOCK):
    """(row0, logits (K, n, width), valid (n, width)) per finished block, as new tensors (for
    checks and small scenes; the writer reads the blocks' views in column chunks instead)."""
    for block in stream_blocks(model, batches, plan, device, amp, row_block):
        yield block.row0, block.logits(), block.valid.copy()


def shift_up(buffer, n, axis):
    """Move `buffer`'s rows (along `axis`) n up in place and zero the last n. Copied in chunks of
    n rows, so source and destination never overlap and nothing is allocated: a large
    allocation per block would fragment the heap that the programs keep (utils/runtime.py)."""
    rows = buffer.shape[axis]
    for lo in range(n, rows, n):
        hi = min(lo + n, rows)
        buffer.narrow(axis, lo - n, hi - lo).copy_(buffer.narrow(axis, lo, hi - lo))
    buffer.narrow(axis, rows - n, n).zero_()


OUTPUT_CHUNK = 2048          # columns turned into outputs at a time: bounded scratch memory


@torch.no_grad()
def block_outputs(block, keep_prob=False):
    """Mask (0/1, 255 nodata) and probability (uint8 0-254, 255 nodata) of a block as numpy,
    and with `keep_prob` the float probability (else None); computed OUTPUT_CHUNK columns at
    a time, each pixel exactly as the PNG path computes it (argmax, softmax of the logits)."""
    n, width = block.valid.shape
    mask = np.empty((n, width), np.uint8)
    prob_u8 = np.empty((n, width), np.uint8)
    prob = np.empty((n, width), np.float32) if keep_prob else None
    for c0 in range(0, width, OUTPUT_CHUNK):
        cols = slice(c0, min(c0 + OUTPUT_CHUNK, width))
        logits = block.logits(cols)
        mask[:, cols] = logits.argmax(dim=0).to(torch.uint8).cpu().numpy()
        p = logits.softmax(dim=0)[1]
        prob_u8[:, cols] = (p * PROB_SCALE).round().to(torch.uint8).cpu().numpy()
        if keep_prob:
            prob[:, cols] = p.cpu().numpy()
    invalid = ~block.valid
    mask[invalid] = NODATA
    prob_u8[invalid] = NODATA
    return mask, prob_u8, prob


# --------------------------------------------------------------------------------- writing

def raster_profile(crs, transform, height, width, predictor=1):
    return dict(driver='GTiff', width=width, height=height, count=1, dtype='uint8', crs=crs,
                transform=transform, nodata=NODATA, tiled=True, blockxsize=ROW_BLOCK,
                blockysize=ROW_BLOCK, compress='deflate', predictor=predictor,
                BIGTIFF='IF_SAFER')


def overview_factors(height, width):
    factors, f = [], 2
    while max(height, width) / f >= OVERVIEW_MIN_SIDE:
        factors.append(f)
        f *= 2
    return factors


class BackgroundWriter:
    """Runs `consume(item)` on one thread, in order, so that compression and disk writes
    overlap the network; the first error is raised by the next put() or by close()."""

    def __init__(self, consume, depth=1):
        self.consume, self.error = consume, None
        self.queue = queue.Queue(depth)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.consume(item)
                except BaseException as err:          # re-raised in the main thread
                    self.error = err

    def put(self, item):
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self):
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


MASK_DESCRIPTION = 'change: 0 no, 1 yes, 255 nodata'
MASK_COLOURS = {0: (0, 0, 0, 255), 1: (255, 0, 0, 255)}


def open_raster_quietly(path, mode='r', **profile):
    """rasterio.open without the warning about a missing geotransform: a plain (not
    georeferenced) TIFF pair gives plain outputs, which is no news to the user."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', NotGeoreferencedWarning)
        return rasterio.open(path, mode, **profile)


def open_mask(path, final, profile, tags):
    ds = _guarded(final, open_raster_quietly, path, 'w', **profile)
    ds.update_tags(**tags, FHD_VALUES='0 no change, 1 change, 255 nodata')
    ds.set_band_description(1, MASK_DESCRIPTION)
    ds.write_colormap(1, MASK_COLOURS)
    return ds


def open_prob(path, final, profile, tags):
    ds = _guarded(final, open_raster_quietly, path, 'w', **dict(profile, predictor=2))
    ds.update_tags(**tags, FHD_VALUES=f'change probability x {PROB_SCALE}, 255 nodata')
    ds.set_band_description(1, f'change probability x {PROB_SCALE}, 255 nodata')
    ds.scales = (1 / PROB_SCALE,)
    return ds


def check_complete(path, final):
    """GDAL only logs a write that fails while a file is being closed (its last blocks and the
    overviews are flushed then) and closes without an error: so reopen the file and check that
    every block of every level was written and lies inside the file."""
    size = os.path.getsize(path)
    try:
        with open_raster_quietly(path) as ds:
            levels = [None] + list(range(len(ds.overviews(1))))
        for level in levels:
            with open_raster_quietly(path, overview_level=level) as ds:
                for (i, j), _ in ds.block_windows(1):
                    offset = int(ds.get_tag_item(f'BLOCK_OFFSET_{j}_{i}', 'TIFF', bidx=1) or 0)
                    length = int(ds.get_tag_item(f'BLOCK_SIZE_{j}_{i}', 'TIFF', bidx=1) or 0)
                    if offset <= 0 or length <= 0 or offset + length > size:
                        raise SceneError(f'writing {final} failed: the file is incomplete (block {i},{j}'
                                         f'{"" if level is None else f" of overview {level + 1}"} '
                                         'missing; disk full?); no partial file was left under that name')
    except RasterioError as err:
        raise SceneError(f'writing {final} failed: the file cannot be read back ({gdal_message(err)}; '
                         'disk full?); no partial file was left under that name') from None


class SceneRasters:
    """The mask (and probability) GeoTIFFs being written, plus the region tracker and counts.
    `paths` and `finals`: (mask, prob or None) temporary and final names."""

    def __init__(self, paths, finals, profile, tags, track_regions):
        self.finals = finals
        self.mask = open_mask(paths[0], finals[0], profile, tags)
        self.prob = None
        try:
            if paths[1]:
                self.prob = open_prob(paths[1], finals[1], profile, tags)
        except BaseException:
            self.mask.close()
            raise
        self.tracker = RegionTracker(profile['width']) if track_regions else None
        self.valid_pixels = self.changed_pixels = 0

    def write(self, item):
        row0, mask, prob_u8, prob = item
        window = Window(0, row0, mask.shape[1], mask.shape[0])
        _guarded(self.finals[0], self.mask.write, mask, 1, window=window)
        if self.prob is not None:
            _guarded(self.finals[1], self.prob.write, prob_u8, 1, window=window)
        changed = mask == 1
        self.valid_pixels += int((mask != NODATA).sum())
        self.changed_pixels += int(changed.sum())
        if self.tracker is not None:
            self.tracker.feed(row0, changed, prob)

    def close(self, overviews=True):
        """Build the overviews and close both files; returns the region records (or None)."""
        try:
            for ds, final, method in ((self.mask, self.finals[0], Resampling.nearest),
                                      (self.prob, self.finals[1], Resampling.average)):
                if ds is not None and overviews:
                    factors = overview_factors(ds.height, ds.width)
                    if factors:
                        _guarded(final, ds.build_overviews, factors, method)
        finally:
            for ds, final in ((self.mask, self.finals[0]), (self.prob, self.finals[1])):
                if ds is not None:
                    _guarded(final, ds.close)
        for ds, final in ((self.mask, self.finals[0]), (self.prob, self.finals[1])):
            if ds is not None:
                check_complete(ds.name, final)
        return self.tracker.close() if self.tracker is not None else None


# -------------------------------------------------------------------- regions and polygons

def geojson_crs(crs):
    """The (pre-RFC 7946) GeoJSON "crs" member that GDAL/QGIS read, when there is an EPSG code."""
    epsg = crs.to_epsg() if crs is not None else None
    return {'type': 'name', 'properties': {'name': f'urn:ogc:def:crs:EPSG::{epsg}'}} if epsg else None


class GeoJSONWriter:
    """A FeatureCollection written one feature at a time (nothing accumulates); `final` is the
    name the file will get, for error messages."""

    def __init__(self, f, crs, name, final):
        self.f, self.final, self.count = f, final, 0
        head = {'type': 'FeatureCollection', 'name': name}
        if geojson_crs(crs):
            head['crs'] = geojson_crs(crs)
        self._write(json.dumps(head)[:-1] + ', "features": [\n')

    def _write(self, text):
        _guarded(self.final, self.f.write, text)

    def add(self, geometry, properties):
        sep = ',\n' if self.count else ''
        self._write(sep + json.dumps({'type': 'Feature', 'properties': properties,
                                      'geometry': geometry}, separators=(',', ':')))
        self.count += 1

    def close(self):
        self._write('\n]}\n')
        _guarded(self.final, self.f.flush)


def region_polygon(component, transform):
    """GeoJSON geometry of one 4-connected component (bool array) in `transform`'s CRS."""
    parts = [geom for geom, _ in shapes(component.astype(np.uint8), mask=component,
                                        connectivity=4, transform=transform)]
    if len(parts) == 1:
        return parts[0]
    return {'type': 'MultiPolygon', 'coordinates': [p['coordinates'] for p in parts]}


def finish_regions(raw_mask_path, regions, transform, pixel_area, min_pixels=0, vector=None,
                   mask_out=None, progress=None):
    """Second pass over the written mask: polygons of the regions of >= min_pixels pixels to
    `vector` (a GeoJSONWriter), and, when `mask_out` (an open dataset) is given, the mask copied
    with the smaller regions set to 0. Reads one block row of the mask at a time, plus each
    region's bounding box. Returns (polygons written, regions removed, pixels removed)."""
    polygons = removed = removed_pixels = 0
    pending = []                                  # (top, left, component) of small regions
    with open_raster_quietly(raw_mask_path) as src:
        height, width = src.height, src.width
        nxt = 0
        block_rows = range(0, height, ROW_BLOCK) if mask_out is not None else [0]
        for r0 in block_rows:
            r1 = min(r0 + ROW_BLOCK, height) if mask_out is not None else height
            while nxt < len(regions) and regions[nxt, TOP] < r1:
                rec = regions[nxt]
                nxt += 1
                small = rec[PIXELS] < min_pixels
                if progress is not None:
                    progress.update(1)
                if not small and vector is None:
                    continue
                top, left = int(rec[TOP]), int(rec[LEFT])
                win = Window(left, top, int(rec[RIGHT]) - left, int(rec[BOTTOM]) - top)
                component = region_mask(src.read(1, window=win) == 1, int(rec[SEED_ROW]) - top,
                                        int(rec[SEED_COL]) - left)
                if small:
                    pending.append((top, left, component))
                    removed += 1
                    removed_pixels += int(rec[PIXELS])
                else:
                    vector.add(region_polygon(component, window_transform(win, transform)),
                               {'id': polygons + 1, 'area': float(rec[PIXELS] * pixel_area),
                                'mean_prob': round(float(rec[PROB_SUM] / rec[PIXELS]), 4),
                                'pixels': int(rec[PIXELS])})
                    polygons += 1
            if mask_out is None:
                continue
            block = src.read(1, window=Window(0, r0, width, r1 - r0))
            keep = []
            for top, left, component in pending:
                lo, hi = max(top, r0), min(top + component.shape[0], r1)
                if lo < hi:
                    part = component[lo - top:hi - top]
                    view = block[lo - r0:hi - r0, left:left + component.shape[1]]
                    view[part] = 0
                if top + component.shape[0] > r1:
                    keep.append((top, left, component))
            pending = keep
            mask_out.write(block, 1, window=Window(0, r0, width, r1 - r0))
    return polygons, removed, removed_pixels


# ------------------------------------------------------------------------------ a scene

@dataclass
class SceneOutputs:
    mask: str
    prob: str = None
    vector: str = None
    summary: str = None


@dataclass
class SceneOptions:
    tile: int = 256
    overlap: int = 64
    batch_size: int = 4
    amp: str = 'none'
    num_workers: int = 0
    min_area: float = 0.0
    overviews: bool = True


class _TimedBar:
    """A tqdm bar that also notes when the first batch was done: the rate after it excludes
    the start-up (workers, the model's first call) for comparison with batch-eval figures."""

    def __init__(self, bar):
        self.bar, self.first, self.first_n = bar, None, 0

    def update(self, n):
        if self.first is None:
            self.first, self.first_n = time.perf_counter(), n
        self.bar.update(n)

    def steady_rate(self, now):
        done = self.bar.n - self.first_n
        return done / (now - self.first) if self.first and done > 0 else None

    def close(self):
        self.bar.close()


@contextmanager
def scratch_path(near, suffix='.tif'):
    """A temporary file beside `near`, always removed."""
    folder = os.path.dirname(os.path.abspath(near))
    fd, path = tempfile.mkstemp(prefix='.' + os.path.basename(near) + '.raw.', suffix=suffix,
                                dir=folder)
    os.close(fd)
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.remove(path)


def check_writable(path, option):
    """Fail before any work when the output folder cannot take the file."""
    folder = os.path.dirname(os.path.abspath(path)) or '.'
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write-test.'):
            pass
    except OSError as err:
        raise SceneError(f'{option} {path}: output folder {folder} is not writable '
                         f'({err.strerror or err})') from None


def pixel_area_of(transform):
    return abs(transform.a * transform.e - transform.b * transform.d)


def run_scene(model, pair, outputs, options, device, tags=None, log=print):
    """Change map of `pair` (a datasets.raster.ScenePair) -> the summary dict (also written as
    JSON to outputs.summary). Every output appears under its final name only when all are
    complete; on any error none does."""
    a_ds, _ = pair.datasets()
    crs, transform = a_ds.crs, a_ds.transform
    # workers read (their own cache); the main process then only writes
    cache_bytes = scene_cache_bytes(pair.width, options.tile, pair.itemsize())
    main_cache = scene_cache_bytes(pair.width, options.tile, pair.itemsize(),
                                   reading=not options.num_workers)
    pair.close()                    # workers open their own; nothing open is forked
    for path, option in ((outputs.mask, '--out'), (outputs.prob, '--prob'),
                         (outputs.vector, '--vector'), (outputs.summary, 'summary')):
        if path:
            check_writable(path, option)
    area = pixel_area_of(transform)
    min_pixels = int(np.ceil(options.min_area / area - 1e-9)) if options.min_area > 0 else 0
    if min_pixels and crs is not None and crs.is_geographic:
        log(f'note: {crs_name(crs)} is geographic: --min-area and the areas are in square degrees')
    tags = dict(tags or {}, FHD_A=pair.a_path, FHD_B=pair.b_path, FHD_GRID=pair.grid_note,
                FHD_STRETCH=json.dumps({'A': pair.a_stretch.as_dict(), 'B': pair.b_stretch.as_dict()}),
                FHD_TILE=str(options.tile), FHD_OVERLAP=str(options.overlap),
                FHD_MIN_AREA=str(options.min_area))
    profile = raster_profile(crs, transform, pair.height, pair.width)
    t0 = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(raster_env(main_cache))
        mask_tmp = stack.enter_context(atomic_path(outputs.mask, suffix='.tif'))
        raw_mask = stack.enter_context(scratch_path(outputs.mask)) if min_pixels else mask_tmp
        prob_tmp = stack.enter_context(atomic_path(outputs.prob, suffix='.tif')) if outputs.prob else None
        stack.callback(pair.close)
        summary = _first_pass(model, pair, options, device, cache_bytes, profile, tags,
                              (raw_mask, prob_tmp), outputs, track=bool(outputs.vector or min_pixels),
                              overviews=options.overviews and not min_pixels)
        regions = summary.pop('regions')
        summary['inference_seconds'] = round(time.perf_counter() - t0, 3)
        summary['tiles_per_second'] = round(summary['tiles'] / summary['inference_seconds'], 3)
        if summary['first_batch_seconds'] is not None:
            summary['first_batch_seconds'] = round(summary['first_batch_seconds'] - t0, 3)
        if regions is not None:
            # with min_area the mask is written again here, without the small regions
            summary.update(_second_pass(raw_mask, mask_tmp if min_pixels else None, regions,
                                        transform, area, min_pixels, outputs, crs, profile, tags,
                                        stack))
            summary['changed_pixels'] -= summary['removed_pixels']
        summary.update(_describe(pair, crs, transform, options, outputs))
        summary['changed_area'] = summary['changed_pixels'] * area
        summary['seconds'] = round(time.perf_counter() - t0, 3)
        if outputs.summary:
            tmp = stack.enter_context(atomic_path(outputs.summary, suffix='.json'))
            _guarded(outputs.summary, _write_json, tmp, summary)
    return summary               # all temporary files renamed when the stack closed


def _first_pass(model, pair, options, device, cache_bytes, profile, tags, paths, outputs, track,
                overviews):
    """Stream the tiles into the mask (and prob) files; counts, timing and region records."""
    plan = TilePlan(pair.height, pair.width, options.tile, options.overlap)
    loader = tile_loader(pair, plan, options.batch_size, options.num_workers,
                         pin_memory=torch.device(device).type == 'cuda', cache_bytes=cache_bytes)
    batches = iter(loader)          # workers start here, before any output file is open
    rasters = SceneRasters(paths, (outputs.mask, outputs.prob), profile, tags, track)
    writer = BackgroundWriter(rasters.write, depth=1)
    bar = _TimedBar(tqdm(total=len(plan.boxes), unit='tile', desc='scene', dynamic_ncols=True))
    try:
        for block in stream_blocks(model, batches, plan, device, options.amp, progress=bar):
            writer.put((block.row0,) + block_outputs(block, keep_prob=track))
    finally:
        bar.close()
        try:
            writer.close()
        finally:
            regions = rasters.close(overviews)
    return {'tiles': len(plan.boxes), 'valid_pixels': rasters.valid_pixels,
            'changed_pixels': rasters.changed_pixels, 'regions': regions,
            'first_batch_seconds': bar.first,
            'steady_tiles_per_second': _round(bar.steady_rate(time.perf_counter()))}


def _round(value, digits=3):
    return None if value is None else round(value, digits)


def _describe(pair, crs, transform, options, outputs):
    return {'a': pair.a_path, 'b': pair.b_path, 'width': pair.width, 'height': pair.height,
            'crs': crs_name(crs), 'transform': list(transform)[:6], 'grid': pair.grid_note,
            'stretch': {'A': pair.a_stretch.as_dict(), 'B': pair.b_stretch.as_dict()},
            'tile': options.tile, 'overlap': options.overlap, 'batch_size': options.batch_size,
            'min_area': options.min_area, 'pixel_area': pixel_area_of(transform),
            'outputs': {k: v for k, v in vars(outputs).items() if v}}


def _second_pass(raw_mask, mask_tmp, regions, transform, area, min_pixels, outputs, crs,
                 profile, tags, stack):
    vector = None
    if outputs.vector:
        tmp = stack.enter_context(atomic_path(outputs.vector, suffix='.geojson'))
        f = stack.enter_context(open(tmp, 'w'))
        vector = GeoJSONWriter(f, crs, os.path.splitext(os.path.basename(outputs.vector))[0],
                               outputs.vector)
    mask_out = open_mask(mask_tmp, outputs.mask, profile, tags) if mask_tmp else None
    bar = tqdm(total=len(regions), unit='region', desc='regions', dynamic_ncols=True)
    try:
        polygons, removed, removed_pixels = _guarded(
            outputs.mask, finish_regions, raw_mask, regions, transform, area, min_pixels, vector,
            mask_out, bar)
        if mask_out is not None:
            factors = overview_factors(mask_out.height, mask_out.width)
            if factors:
                _guarded(outputs.mask, mask_out.build_overviews, factors, Resampling.nearest)
    finally:
        bar.close()
        if mask_out is not None:
            _guarded(outputs.mask, mask_out.close)
    if mask_out is not None:
        check_complete(mask_tmp, outputs.mask)
    if vector is not None:
        vector.close()
    return {'regions': int(len(regions)), 'polygons': polygons, 'removed_regions': removed,
            'removed_pixels': removed_pixels}


def _write_json(path, data):
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)


def _guarded(final_path, fn, *args, **kwargs):
    """Call fn; a failure while writing (GDAL's or the OS's) becomes one line naming the output."""
    try:
        return fn(*args, **kwargs)
    except (RasterioError, OSError) as err:
        raise SceneError(f'writing {final_path} failed: {gdal_message(err)} (disk full?); '
                         'no partial file was left under that name') from None
