"""Scene pairs from GeoTIFF (any raster GDAL reads, through rasterio): bands, validity, bit depth
and grids, read in windows so that no scene is ever held whole in memory.

A `ScenePair` is a small picklable description of two rasters on A's pixel grid. Each process
(the main one, or a DataLoader worker) opens the files itself on first use; `read(window)`
returns both images as RGB uint8 (the stretch applied) and the pixels valid in both.

Rules (docs/scenes.md has the reasons):
- bands: `--bands` (1-based, as GDAL counts), else the bands whose colour interpretation is
  red/green/blue, else the first three; fewer than three bands is an error;
- validity: GDAL's mask of each chosen band (nodata value, alpha band or internal mask); a pixel
  is valid in an image when any chosen band is valid there (GDAL's dataset-mask rule) and its
  values are finite; a pair pixel is valid when it is valid in both images;
- bit depth: uint8 is used as it is (the models were trained on 8-bit RGB); other types are
  mapped to 8 bit by a per-band stretch `value -> 255 * (value - low) / (high - low)`, low/high
  the 2nd/98th percentiles of the valid pixels of A and B together (one stretch for both images,
  so that a real change is not normalized away), sampled once from overviews or windows;
- grids: same CRS, transform and size, or `align=True`: B read through a bilinear warped view
  onto A's grid (pixels of A outside B's footprint are invalid).
"""
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .checks import DatasetError

# GDAL's block cache defaults to 5 % of the RAM: on a large machine it would grow with the
# scene up to many GB. A fixed cap keeps the resident set independent of the scene size.
GDAL_CACHE_MB = 256
DEFAULT_PERCENTILES = (2.0, 98.0)
# The stretch sample: about 1 Mpx per image, so it costs a few MB whatever the scene.
STRETCH_SAMPLE_WHOLE = 1024 * 1024      # scenes up to this many pixels: stretch from all pixels
STRETCH_WINDOWS = 8                     # else from overviews, or an 8 x 8 grid of windows ...
STRETCH_WINDOW = 128                    # ... of 128 x 128 pixels
STRETCH_OVERVIEW_SIDE = 1024            # an overview is read at most this large


class SceneError(DatasetError):
    """Bad scene input; the message is one line naming the file or option and what is wrong."""


def limit_gdal_cache(megabytes=GDAL_CACHE_MB):
    """Cap GDAL's block cache for the whole program (unless the user set GDAL_CACHEMAX); GDAL
    reads it when its cache is first used."""
    os.environ.setdefault('GDAL_CACHEMAX', str(megabytes))


def scene_cache_bytes(width, tile, itemsize=1, reading=True):
    """GDAL block cache for streaming a scene `width` pixels wide, 4 MB to 512 MB. A reading
    process needs the input blocks of one tile row of A and B (3 bands each, a block of slack
    above and below), so that a striped file is not decoded again for every tile; the writing
    one two block rows of the two outputs."""
    need = 2 * 2 * 256 * width
    if reading:
        need += (tile + 2 * 256) * width * 3 * 2 * itemsize
    return int(min(max(need, 4 * 2 ** 20), 512 * 2 ** 20))


def raster_env(cache_bytes):
    """GDAL settings of a scene run: the block cache above, and no .aux.xml side files
    (tags, scale and colours all go into the GeoTIFFs themselves)."""
    return rasterio.Env(GDAL_CACHEMAX=cache_bytes, GDAL_PAM_ENABLED='NO')


def gdal_message(err):
    """One line for a rasterio/GDAL error: rasterio's own text often only says 'see previous
    exception', the GDAL message is then its cause."""
    text = str(err)
    cause = err.__cause__ or err.__context__
    if cause is not None and 'previous exception' in text:
        text = str(cause)
    return ' '.join(text.split())


def open_raster(path, role):
    """rasterio dataset for `path`; SceneError naming the file (`role` is 'A' or 'B')."""
    if not os.path.isfile(path):
        raise SceneError(f'{role} {path}: no such file')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioError as err:
        raise SceneError(f'{role} {path}: not a readable raster ({gdal_message(err)})') from None


def parse_bands(text):
    """'1,2,3' -> (1, 2, 3); None -> None (pick automatically)."""
    if text is None:
        return None
    try:
        bands = tuple(int(v) for v in text.split(','))
    except ValueError:
        raise SceneError(f'--bands {text}: expected three 1-based band numbers, e.g. 1,2,3') from None
    if len(bands) != 3:
        raise SceneError(f'--bands {text}: expected three band numbers (red, green, blue), got {len(bands)}')
    return bands


def pick_bands(ds, path, role, bands=None):
    """The three 1-based band indexes used as R, G, B for dataset `ds`."""
    if ds.count < 3:
        raise SceneError(f'{role} {path}: {ds.count} band(s); an RGB image needs at least 3')
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise SceneError(f'--bands {",".join(map(str, bands))}: band {bad[0]} is out of range for '
                             f'{role} {path}, which has bands 1-{ds.count}')
        return tuple(bands)
    interp = list(ds.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return tuple(interp.index(c) + 1 for c in wanted)
    return (1, 2, 3)


# ------------------------------------------------------------------------------------ stretch

@dataclass(frozen=True)
class StretchSpec:
    """What --stretch asked for: 'auto' (uint8 unchanged, other types by percentiles), 'none',
    'percentile', 'minmax' or 'fixed' (low/high given)."""
    method: str = 'auto'
    low: float = None
    high: float = None


def parse_stretch(text):
    if text in (None, 'auto'):
        return StretchSpec()
    if text in ('none', 'percentile', 'minmax'):
        return StretchSpec(text)
    try:
        low, high = (float(v) for v in text.split(','))
    except ValueError:
        raise SceneError(f'--stretch {text}: expected none, percentile, minmax or LOW,HIGH') from None
    if not high > low:
        raise SceneError(f'--stretch {text}: HIGH must be greater than LOW')
    return StretchSpec('fixed', low, high)


@dataclass(frozen=True)
class Stretch:
    """Per-band (low, high) of one image, or None: values used as they are (clipped to 0-255)."""
    low: tuple = None
    high: tuple = None
    method: str = 'none'

    def apply(self, values):
        """(3, h, w) raw values -> (3, h, w) uint8."""
        if self.low is None:
            if values.dtype == np.uint8:
                return values
            return np.clip(np.rint(values), 0, 255).astype(np.uint8)
        low = np.asarray(self.low, np.float64)[:, None, None]
        span = np.maximum(np.asarray(self.high, np.float64)[:, None, None] - low, 1e-12)
        scaled = (values.astype(np.float64) - low) * (255.0 / span)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def describe(self):
        if self.low is None:
            return 'none (values used as they are)'
        bands = ', '.join(f'{lo:g}-{hi:g}' for lo, hi in zip(self.low, self.high))
        return f'{self.method}: {bands}'

    def as_dict(self):
        return {'method': self.method, 'low': list(self.low) if self.low else None,
                'high': list(self.high) if self.high else None}


# ---------------------------------------------------------------------------------- the pair

@dataclass
class ScenePair:
    """Two rasters on A's grid. Picklable: datasets are opened per process on first use."""
    a_path: str
    b_path: str
    a_bands: tuple
    b_bands: tuple
    height: int
    width: int
    align: bool = False                    # read B through a warped view onto A's grid
    a_stretch: Stretch = field(default_factory=Stretch)
    b_stretch: Stretch = field(default_factory=Stretch)
    grid_note: str = 'same grid'           # how B came onto A's grid (stored in the outputs)
    _opened: tuple = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_opened'] = None            # open files never travel to another process
        return state

    def itemsize(self):
        """Bytes per band value of the wider of the two images."""
        a, b = self.datasets()
        return max(np.dtype(a.dtypes[self.a_bands[0] - 1]).itemsize,
                   np.dtype(b.dtypes[self.b_bands[0] - 1]).itemsize)

    def datasets(self):
        """(A, B-on-A's-grid) of this process."""
        if self._opened is None or self._opened[0] != os.getpid():
            a = open_raster(self.a_path, 'A')
            b = open_raster(self.b_path, 'B')
            b_view = b
            if self.align:
                # The alpha band marks A's pixels outside B's footprint as invalid, also when B
                # has no nodata value.
                b_view = WarpedVRT(b, crs=a.crs, transform=a.transform, width=a.width,
                                   height=a.height, resampling=Resampling.bilinear, add_alpha=True)
            self._opened = (os.getpid(), a, b, b_view)
        return self._opened[1], self._opened[3]

    def close(self):
        if self._opened is not None and self._opened[0] == os.getpid():
            for ds in reversed(self._opened[1:]):
                ds.close()
        self._opened = None

    def read_raw(self, window=None, out_shape=None):
        """Raw band values of A and B (3, h, w) and the pixels valid in both (h, w) bool."""
        a_ds, b_ds = self.datasets()
        shape = None if out_shape is None else (3,) + tuple(out_shape)
        images, valid = [], None
        for ds, bands, role, path in ((a_ds, self.a_bands, 'A', self.a_path),
                                      (b_ds, self.b_bands, 'B', self.b_path)):
            try:
                values = ds.read(bands, window=window, out_shape=shape)
                masks = ds.read_masks(bands, window=window, out_shape=shape)
            except RasterioError as err:
                where = '' if window is None else (f' (rows {int(window.row_off)}-'
                                                   f'{int(window.row_off + window.height)})')
                raise SceneError(f'{role} {path}: read failed{where}: {gdal_message(err)}') from None
            ok = masks.any(axis=0)
            if values.dtype.kind == 'f':
                ok &= np.isfinite(values).all(axis=0)
            images.append(values)
            valid = ok if valid is None else valid & ok
        return images[0], images[1], valid

    def read(self, window):
        """RGB uint8 (3, h, w) of A and B with the stretch applied, and the valid pixels."""
        a, b, valid = self.read_raw(window)
        return self.a_stretch.apply(a), self.b_stretch.apply(b), valid


def grid_differences(a, b):
    """What differs between the pixel grids of datasets a and b (empty list: the same grid)."""
    diffs = []
    if a.crs != b.crs:
        diffs.append(f'CRS {crs_name(a.crs)} vs {crs_name(b.crs)}')
    if (a.width, a.height) != (b.width, b.height):
        diffs.append(f'size {a.width}x{a.height} vs {b.width}x{b.height}')
    ta, tb = a.transform, b.transform
    pixel = max(abs(ta.a), abs(ta.e), abs(ta.b), abs(ta.d))
    if not ta.almost_equals(tb, precision=1e-6 * pixel):
        if (ta.a, ta.b, ta.d, ta.e) != (tb.a, tb.b, tb.d, tb.e):
            diffs.append(f'pixel size {abs(ta.a):g}x{abs(ta.e):g} vs {abs(tb.a):g}x{abs(tb.e):g}'
                         if (ta.b, ta.d, tb.b, tb.d) == (0, 0, 0, 0) else 'pixel size/rotation')
        if (ta.c, ta.f) != (tb.c, tb.f):
            diffs.append(f'origin ({ta.c:.6g}, {ta.f:.6g}) vs ({tb.c:.6g}, {tb.f:.6g})')
    return diffs


def crs_name(crs):
    if crs is None:
        return 'none'
    epsg = crs.to_epsg()
    return f'EPSG:{epsg}' if epsg else (crs.to_string()[:60] or 'unnamed')


def footprints_overlap(a, b):
    """Whether B's bounds (taken into A's CRS) intersect A's bounds."""
    if a.crs is None or b.crs is None:
        return True                    # nothing to compare; the grid check decides
    try:
        left, bottom, right, top = transform_bounds(b.crs, a.crs, *b.bounds)
    except RasterioError:
        return False
    al, ab, ar, at = a.bounds
    return left < ar and right > al and bottom < at and top > ab


def open_pair(a_path, b_path, bands=None, align=False, stretch=StretchSpec(), log=print):
    """Check two rasters and describe them as a ScenePair (stretch computed and printed)."""
    a_path, b_path = str(a_path), str(b_path)
    a, b = open_raster(a_path, 'A'), open_raster(b_path, 'B')
    try:
        a_bands = pick_bands(a, a_path, 'A', bands)
        b_bands = pick_bands(b, b_path, 'B', bands)
        if not footprints_overlap(a, b):
            raise SceneError(f'A {a_path} and B {b_path} do not overlap: A covers {fmt_bounds(a.bounds)}, '
                             f'B {fmt_bounds(transform_bounds(b.crs, a.crs, *b.bounds))} (in A\'s CRS '
                             f'{crs_name(a.crs)})')
        diffs = grid_differences(a, b)
        if diffs and not align:
            raise SceneError(f'A {a_path} and B {b_path} are on different grids ({"; ".join(diffs)}); '
                             'give --align to resample B onto A\'s grid')
        if diffs and (a.crs is None or b.crs is None):
            which = 'A' if a.crs is None else 'B'
            raise SceneError(f'--align: {which} {a_path if which == "A" else b_path} has no CRS, '
                             'so B cannot be placed on A\'s grid')
        dtypes = (np.dtype(a.dtypes[a_bands[0] - 1]), np.dtype(b.dtypes[b_bands[0] - 1]))
        height, width = a.height, a.width
    finally:
        a.close()
        b.close()
    note = f'B resampled bilinearly onto A\'s grid ({"; ".join(diffs)})' if diffs else 'same grid'
    pair = ScenePair(a_path, b_path, a_bands, b_bands, height, width, align=bool(diffs), grid_note=note)
    pair.a_stretch, pair.b_stretch = choose_stretch(pair, stretch, dtypes)
    for role, s in (('A', pair.a_stretch), ('B', pair.b_stretch)):
        log(f'stretch {role}: {s.describe()}')
    return pair


def fmt_bounds(bounds):
    left, bottom, right, top = bounds
    return f'x {left:.6g}..{right:.6g}, y {bottom:.6g}..{top:.6g}'


# ------------------------------------------------------------------------ stretch from samples

def choose_stretch(pair, spec, dtypes):
    """(stretch of A, stretch of B) for --stretch `spec` and the images' data types."""
    if spec.method == 'none':
        return Stretch(), Stretch()
    if spec.method == 'fixed':
        fixed = Stretch((spec.low,) * 3, (spec.high,) * 3, 'fixed')
        return fixed, fixed
    if spec.method in ('percentile', 'minmax'):
        joint = sample_stretch(pair, spec.method, (True, True))
        return joint, joint
    # auto: 8-bit images as they are; wider ones by percentiles, jointly when both are wide
    wide = tuple(dt != np.uint8 for dt in dtypes)
    if not any(wide):
        return Stretch(), Stretch()
    if all(wide):
        joint = sample_stretch(pair, 'percentile', (True, True))
        return joint, joint
    own = sample_stretch(pair, 'percentile', wide)
    return (own if wide[0] else Stretch()), (own if wide[1] else Stretch())


def sample_windows(height, width):
    """An evenly spread grid of windows for the stretch sample."""
    side = STRETCH_WINDOW
    rows = np.linspace(0, max(height - side, 0), STRETCH_WINDOWS).round().astype(int)
    cols = np.linspace(0, max(width - side, 0), STRETCH_WINDOWS).round().astype(int)
    return [Window(int(c), int(r), min(side, width), min(side, height))
            for r in np.unique(rows) for c in np.unique(cols)]


def _has_overviews(pair):
    a, b = pair.datasets()
    return all(ds.overviews(band) for ds, bands in ((a, pair.a_bands), (b, pair.b_bands))
               for band in bands[:1])


def sample_stretch(pair, method, use):
    """Per-band low/high over the valid pixels of the images flagged in `use` (A, B)."""
    if pair.height * pair.width <= STRETCH_SAMPLE_WHOLE:
        reads, source = [None], 'all pixels'
    elif _has_overviews(pair):
        scale = STRETCH_OVERVIEW_SIDE / max(pair.height, pair.width)
        reads = [('overview', (max(1, round(pair.height * scale)), max(1, round(pair.width * scale))))]
        source = f'overviews ({reads[0][1][1]}x{reads[0][1][0]})'
    else:
        reads = sample_windows(pair.height, pair.width)
        source = f'{len(reads)} windows of {STRETCH_WINDOW}x{STRETCH_WINDOW}'
    per_band = [[] for _ in range(3)]
    for item in reads:
        if isinstance(item, tuple):
            a, b, valid = pair.read_raw(out_shape=item[1])
        else:
            a, b, valid = pair.read_raw(item)
        for img, flag in zip((a, b), use):
            if flag:
                for k in range(3):
                    per_band[k].append(img[k][valid])          # native type: 2 B/px for uint16
    values = [np.concatenate(v) for v in per_band]
    if not values[0].size:
        raise SceneError(f'A {pair.a_path} and B {pair.b_path}: no pixel valid in both images in the '
                         f'stretch sample ({source}); give --stretch LOW,HIGH')
    q = DEFAULT_PERCENTILES if method == 'percentile' else (0.0, 100.0)
    lows, highs = zip(*(np.percentile(v, q) for v in values))
    name = f'percentile {q[0]:g}-{q[1]:g} % of {source}' if method == 'percentile' \
        else f'minmax of {source}'
    return Stretch(tuple(float(v) for v in lows), tuple(float(v) for v in highs), name)
