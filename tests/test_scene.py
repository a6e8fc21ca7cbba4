"""Whole scenes (utils.scene, datasets.raster, utils.regions) and infer.py's GeoTIFF mode."""
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

rasterio = pytest.importorskip('rasterio')
from rasterio.transform import from_origin  # noqa: E402

from datasets import normalize_pair  # noqa: E402
from datasets.raster import ScenePair, Stretch, StretchSpec, open_pair  # noqa: E402
from utils.inference import sliding_window_logits  # noqa: E402
from utils.regions import (BOTTOM, LEFT, PIXELS, PROB_SUM, RIGHT, SEED_COL, SEED_ROW,  # noqa: E402
                           TOP, RegionTracker)
from utils.scene import (Block, SceneOptions, SceneOutputs, TilePlan, block_outputs,  # noqa: E402
                         run_scene, stream_logits, tile_loader)

REPO = Path(__file__).resolve().parents[1]
CRS = 'EPSG:32633'                                   # UTM 33N: metres
ORIGIN = (500000.0, 4000000.0)
PIXEL = 0.5


def write_tif(path, data, transform=None, crs=CRS, nodata=None, **extra):
    """(bands, H, W) array -> tiled GeoTIFF."""
    data = np.asarray(data)
    profile = dict(driver='GTiff', width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype, crs=crs, transform=transform or from_origin(*ORIGIN, PIXEL, PIXEL),
                   tiled=True, blockxsize=64, blockysize=64, compress='deflate', nodata=nodata, **extra)
    with rasterio.open(path, 'w', **profile) as ds:
        ds.write(data)
    return str(path)


def textured_pair(height, width, seed=0, border=0):
    """Smooth random RGB uint8 A, and B = A with a few rectangles changed; `border` columns of
    0 on the left of A (nodata 0)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(30, 226, (height // 8 + 2, width // 8 + 2, 3), np.uint8),
                      (width, height), interpolation=cv2.INTER_CUBIC)
    a = np.clip(base.astype(int) + rng.integers(-8, 9, base.shape), 1, 255).astype(np.uint8)
    b = a.copy()
    for _ in range(4):
        y, x = rng.integers(0, height - 30), rng.integers(0, width - 40)
        b[y:y + 24, x:x + 36] = rng.integers(1, 256, 3)
    a = a.transpose(2, 0, 1).copy()
    b = b.transpose(2, 0, 1).copy()
    if border:
        a[:, :, :border] = 0
    return a, b


class DifferenceModel(nn.Module):
    """Stand-in: change exactly where A and B differ (pointwise, so any tiling gives the same)."""

    def forward(self, x):
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0, x.shape
        diff = (x[:, :3] - x[:, 3:]).abs().sum(1, keepdim=True)
        return torch.cat([torch.full_like(diff, 0.01), diff], 1)


class RecordingModel(DifferenceModel):
    """Keeps every input batch it sees."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return super().forward(x)


@pytest.fixture(scope='module')
def fhd_b0():
    from models import build_fhd, for_inference
    torch.manual_seed(0)
    return for_inference(build_fhd(backbone='mit_b0'), device='cpu')


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    from models import build_fhd
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'fhd_b0.pth'
    torch.save({'meta': {'backbone': 'mit_b0'}, 'state_dict': build_fhd(backbone='mit_b0').state_dict()},
               path)
    return path


def streamed(model, pair, tile, overlap, batch_size, row_block=256, num_workers=0):
    """Logits (K, H, W) and valid (H, W) of the streaming path, blocks concatenated."""
    plan = TilePlan(pair.height, pair.width, tile, overlap)
    blocks = list(stream_logits(model, tile_loader(pair, plan, batch_size, num_workers), plan, 'cpu',
                                row_block=row_block))
    rows = [r for r, _, _ in blocks]
    assert rows == sorted(rows) and rows[0] == 0
    assert all(lg.shape[1] == row_block for _, lg, _ in blocks[:-1])
    return torch.cat([lg for _, lg, _ in blocks], 1), np.concatenate([v for _, _, v in blocks])


def in_memory(model, a_rgb, b_rgb, valid, tile, overlap, batch_size):
    """Today's path on the same pixels: normalize_pair, invalid pixels 0, sliding_window_logits."""
    img = normalize_pair(a_rgb.transpose(1, 2, 0)[..., ::-1], b_rgb.transpose(1, 2, 0)[..., ::-1])
    img[:, ~valid] = 0
    return sliding_window_logits(model, img[None], tile=tile, overlap=overlap, batch_size=batch_size)[0]


# ------------------------------------------------------------------ equality with the reference

def test_streaming_equals_in_memory_sliding_window(tmp_path, fhd_b0):
    # 150 x 230: padded to 160 x 256, 3 x 5 tiles of 64 (the last of each row / column aligned
    # to the end), batches of 4 that straddle tile rows, output blocks of 32 rows, nodata border;
    # read in the main process and by a worker
    a, b = textured_pair(150, 230, seed=1, border=7)
    pair = open_pair(write_tif(tmp_path / 'a.tif', a, nodata=0), write_tif(tmp_path / 'b.tif', b, nodata=0),
                     log=lambda *_: None)
    plan = TilePlan(150, 230, 64, 16)
    assert plan.ys == (0, 48, 96) and plan.xs == (0, 48, 96, 144, 192)
    got, valid = streamed(fhd_b0, pair, 64, 16, batch_size=4, row_block=32)
    assert valid[:, :7].sum() == 0 and valid[:, 7:].all()
    want = in_memory(fhd_b0, a, b, valid, 64, 16, batch_size=4)
    assert got.shape == want.shape == (2, 150, 230)
    assert (got - want).abs().max().item() <= 1e-6
    assert torch.equal(got.argmax(0), want.argmax(0))
    from_worker, _ = streamed(fhd_b0, pair, 64, 16, batch_size=4, row_block=32, num_workers=1)
    assert torch.equal(from_worker, got)


def test_single_tile_scene_equals_whole_image_inference(tmp_path, fhd_b0):
    a, b = textured_pair(50, 70, seed=2)
    pair = open_pair(write_tif(tmp_path / 'a.tif', a), write_tif(tmp_path / 'b.tif', b), log=lambda *_: None)
    got, valid = streamed(fhd_b0, pair, 128, 32, batch_size=2)
    want = in_memory(fhd_b0, a, b, valid, 128, 32, batch_size=2)
    assert torch.equal(got, want)


def test_block_outputs_mask_prob_and_nodata():
    logits = torch.tensor([[[0.0, 2.0, 1.0]], [[1.0, 0.0, 1.0]]])       # change, none, tie -> none
    block = Block(0, logits * 2, torch.full((1, 3), 2.0), np.array([[True, True, False]]))
    mask, prob_u8, prob = block_outputs(block, keep_prob=True)
    assert mask.tolist() == [[1, 0, 255]]
    assert prob_u8[0, 0] == round(254 / (1 + np.exp(-1))) and prob_u8[0, 2] == 255
    assert abs(prob[0, 1] - 1 / (1 + np.exp(2))) < 1e-6


# --------------------------------------------------------------------------- validity and bands

def test_nodata_and_alpha_pixels_reach_the_network_as_zero(tmp_path):
    a, b = textured_pair(96, 128, seed=3, border=10)          # A: nodata 0 in columns 0-9
    alpha = np.full((1, 96, 128), 255, np.uint8)
    alpha[:, 50:60, 100:110] = 0                              # B: an alpha hole
    pair = open_pair(write_tif(tmp_path / 'a.tif', a, nodata=0), _rgba(tmp_path / 'b.tif', b, alpha),
                     log=lambda *_: None)
    model = RecordingModel()
    logits, valid = streamed(model, pair, 64, 16, batch_size=4)
    assert not valid[:, :10].any() and not valid[50:60, 100:110].any()
    assert valid.sum() == 96 * 128 - 96 * 10 - 100
    plan = TilePlan(96, 128, 64, 16)
    seen = torch.cat(model.inputs)
    for (y, x), tile in zip(plan.boxes, seen):
        invalid = torch.from_numpy(~valid[y:y + 64, x:x + 64])
        assert tile[:, invalid].abs().max() == 0      # neither A's nor B's values at those pixels


def _rgba(path, rgb, alpha):
    profile = dict(driver='GTiff', width=rgb.shape[2], height=rgb.shape[1], count=4, dtype='uint8',
                   crs=CRS, transform=from_origin(*ORIGIN, PIXEL, PIXEL), photometric='RGB',
                   alpha='YES')
    with rasterio.open(path, 'w', **profile) as ds:
        ds.write(np.concatenate([rgb, alpha]))
    return str(path)


def test_bands_default_to_the_colour_interpretation_and_can_be_chosen(tmp_path):
    rgb, _ = textured_pair(40, 48, seed=4)
    extra = np.full((1, 40, 48), 7, np.uint8)
    bgrn = np.concatenate([rgb[::-1], extra])                 # stored B, G, R, NIR
    path = str(tmp_path / 'bgrn.tif')
    profile = dict(driver='GTiff', width=48, height=40, count=4, dtype='uint8', crs=CRS,
                   transform=from_origin(*ORIGIN, PIXEL, PIXEL))
    with rasterio.open(path, 'w', **profile) as ds:
        ds.write(bgrn)
        ds.colorinterp = [rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.green,
                          rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.undefined]
    pair = open_pair(path, path, log=lambda *_: None)
    assert pair.a_bands == (3, 2, 1)
    a, _, _ = pair.read(rasterio.windows.Window(0, 0, 48, 40))
    assert np.array_equal(a, rgb)
    chosen = open_pair(path, path, bands=(4, 2, 1), log=lambda *_: None)
    a, _, _ = chosen.read(rasterio.windows.Window(0, 0, 48, 40))
    assert np.array_equal(a[0], extra[0]) and np.array_equal(a[2], rgb[2])


# ---------------------------------------------------------------------------------- bit depth

def test_uint16_percentile_stretch_is_shared_by_a_and_b(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.integers(100, 4000, (3, 120, 160)).astype(np.uint16)
    b = (a * 1.5).astype(np.uint16)                           # B brighter: must stay brighter
    a[:, :, :12] = 0                                          # nodata border
    logs = []
    pair = open_pair(write_tif(tmp_path / 'a.tif', a, nodata=0), write_tif(tmp_path / 'b.tif', b, nodata=0),
                     log=logs.append)
    assert pair.a_stretch == pair.b_stretch and pair.a_stretch.low is not None
    valid = np.ones((120, 160), bool)
    valid[:, :12] = False
    for k in range(3):
        pooled = np.concatenate([a[k][valid], b[k][valid]]).astype(np.float64)
        low, high = np.percentile(pooled, [2, 98])
        assert pair.a_stretch.low[k] == pytest.approx(low) and pair.a_stretch.high[k] == pytest.approx(high)
    ra, rb, v = pair.read(rasterio.windows.Window(0, 0, 160, 120))
    assert ra.dtype == np.uint8 and np.array_equal(v, valid)
    expected = np.clip(np.rint((a[0].astype(np.float64) - pair.a_stretch.low[0]) * 255
                               / (pair.a_stretch.high[0] - pair.a_stretch.low[0])), 0, 255)
    assert np.array_equal(ra[0][valid], expected[valid].astype(np.uint8))
    assert rb[:, valid].astype(int).mean() > ra[:, valid].astype(int).mean() + 20
    assert any('percentile 2-98' in line for line in logs)


def test_large_scene_stretch_is_sampled_from_windows_or_overviews(tmp_path):
    h, w = 1100, 1000                                  # above the whole-image sample limit
    rng = np.random.default_rng(18)
    smooth = cv2.resize(rng.random((12, 12)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    img = (np.stack([smooth, smooth ** 2, 1 - smooth]) * 3000 + 500).astype(np.uint16)
    path = write_tif(tmp_path / 'a.tif', img)
    exact = [np.percentile(img[k], [2, 98]) for k in range(3)]
    sampled = open_pair(path, path, log=lambda *_: None).a_stretch
    assert sampled.method.endswith('64 windows of 128x128')
    for k in range(3):                                 # close to the exact percentiles
        span = exact[k][1] - exact[k][0]
        assert abs(sampled.low[k] - exact[k][0]) < 0.05 * span
        assert abs(sampled.high[k] - exact[k][1]) < 0.05 * span
    with rasterio.open(path, 'r+') as ds:
        ds.build_overviews([2, 4], rasterio.enums.Resampling.nearest)
    from_overview = open_pair(path, path, log=lambda *_: None).a_stretch
    assert 'overviews' in from_overview.method
    assert abs(from_overview.high[0] - exact[0][1]) < 0.05 * (exact[0][1] - exact[0][0])


def test_stretch_options(tmp_path):
    a = np.random.default_rng(6).integers(0, 1000, (3, 40, 40)).astype(np.uint16)
    pa, pb = write_tif(tmp_path / 'a.tif', a), write_tif(tmp_path / 'b.tif', a)
    quiet = {'log': lambda *_: None}
    fixed = open_pair(pa, pb, stretch=StretchSpec('fixed', 0, 1000), **quiet)
    assert fixed.a_stretch.low == (0, 0, 0) and fixed.b_stretch.high == (1000, 1000, 1000)
    minmax = open_pair(pa, pb, stretch=StretchSpec('minmax'), **quiet)
    assert minmax.a_stretch.low == tuple(float(a[k].min()) for k in range(3))
    none = open_pair(pa, pb, stretch=StretchSpec('none'), **quiet)
    got, _, _ = none.read(rasterio.windows.Window(0, 0, 40, 40))
    assert np.array_equal(got, np.clip(a, 0, 255).astype(np.uint8))
    rgb8 = np.random.default_rng(7).integers(0, 256, (3, 40, 40)).astype(np.uint8)
    p8 = write_tif(tmp_path / 'c.tif', rgb8)
    assert open_pair(p8, p8, **quiet).a_stretch == Stretch()          # uint8: unchanged


# ------------------------------------------------------------------------------------- grids

def test_align_reads_b_on_a_grid(tmp_path, checkpoint):
    a, _ = textured_pair(80, 100, seed=8)
    # B: the same ground on a grid shifted 6 px east and 4 px south (covering A's right/bottom)
    shifted = from_origin(ORIGIN[0] + 6 * PIXEL, ORIGIN[1] - 4 * PIXEL, PIXEL, PIXEL)
    b = np.zeros_like(a)
    b[:, :76, :94] = a[:, 4:, 6:]
    pa, pb = write_tif(tmp_path / 'a.tif', a), write_tif(tmp_path / 'b.tif', b, transform=shifted)
    with pytest.raises(ValueError, match='different grids.*origin.*--align'):
        open_pair(pa, pb, log=lambda *_: None)
    pair = open_pair(pa, pb, align=True, log=lambda *_: None)
    assert pair.align and 'resampled' in pair.grid_note
    ra, rb, valid = pair.read(rasterio.windows.Window(0, 0, 100, 80))
    assert not valid[:4].any() and not valid[:, :6].any()      # outside B's footprint
    inner = valid.copy()
    assert inner[4:, 6:].all()
    assert np.array_equal(ra[:, valid], rb[:, valid])          # whole-pixel shift: bilinear is exact
    out = tmp_path / 'm.tif'
    assert infer_main(['--checkpoint', checkpoint, '--backbone', 'mit_b0', '--device', 'cpu', '--a', pa,
                       '--b', pb, '--out', out, '--align', '--num-workers', '0']) == 0
    with rasterio.open(out) as ds:
        assert 'resampled bilinearly' in ds.tags()['FHD_GRID'] and ds.transform == from_origin(*ORIGIN, PIXEL, PIXEL)
        mask = ds.read(1)
    assert (mask[:4] == 255).all() and (mask[:, :6] == 255).all() and mask[4:, 6:].max() <= 1


def test_grid_mismatch_messages_say_what_differs(tmp_path):
    a, _ = textured_pair(40, 48, seed=9)
    pa = write_tif(tmp_path / 'a.tif', a)
    other_crs = write_tif(tmp_path / 'crs.tif', a, crs='EPSG:32634')
    other_size = write_tif(tmp_path / 'size.tif', a[:, :32])
    far = write_tif(tmp_path / 'far.tif', a, transform=from_origin(ORIGIN[0] + 1e4, ORIGIN[1], PIXEL, PIXEL))
    quiet = {'log': lambda *_: None}
    with pytest.raises(ValueError, match='size 48x40 vs 48x32'):
        open_pair(pa, other_size, **quiet)
    with pytest.raises(ValueError, match='do not overlap'):
        open_pair(pa, far, align=True, **quiet)
    with pytest.raises(ValueError, match='do not overlap'):
        open_pair(pa, other_crs, align=True, **quiet)            # 33N vs 34N at this place: far apart


# ---------------------------------------------------------------------------------- regions

def test_region_tracker_equals_whole_mask_labelling():
    rng = np.random.default_rng(10)
    for _ in range(20):
        h, w = rng.integers(5, 150, 2)
        noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), float(rng.uniform(0.5, 3)))
        mask = noise > np.quantile(noise, rng.uniform(0.3, 0.8))
        prob = rng.random((h, w)).astype(np.float32)
        tracker, row = RegionTracker(w), 0
        while row < h:                                     # bands of random heights
            n = int(min(rng.integers(1, 30), h - row))
            tracker.feed(row, mask[row:row + n], prob[row:row + n])
            row += n
        regions = tracker.close()
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
        assert len(regions) == count - 1
        seeds = labels[regions[:, SEED_ROW].astype(int), regions[:, SEED_COL].astype(int)]
        assert sorted(seeds.tolist()) == list(range(1, count))
        for rec, label in zip(regions, seeds):
            s = stats[label]
            assert (rec[LEFT], rec[TOP], rec[RIGHT] - rec[LEFT], rec[BOTTOM] - rec[TOP], rec[PIXELS]) == tuple(s)
            assert rec[PROB_SUM] == pytest.approx(prob[labels == label].sum(dtype=np.float64), abs=1e-6)


def squares_pair(tmp_path):
    """320 x 200 scene, B = A but for: a 40 x 40 square across output block border 256, a 3 x 3
    speck, a 30 x 30 ring with a 10 x 10 hole. Nodata column 0-3 in A."""
    a, _ = textured_pair(320, 200, seed=11)
    b = a.copy()
    for (y0, y1, x0, x1) in ((240, 280, 50, 90), (20, 23, 20, 23), (100, 130, 120, 150)):
        b[:, y0:y1, x0:x1] = 255 - b[:, y0:y1, x0:x1] // 2
    b[:, 110:120, 130:140] = a[:, 110:120, 130:140]                       # the ring's hole
    a[:, :, :4] = 0
    return (write_tif(tmp_path / 'a.tif', a, nodata=0), write_tif(tmp_path / 'b.tif', b, nodata=0))


def test_polygons_one_per_region_with_exact_areas(tmp_path):
    pair = open_pair(*squares_pair(tmp_path), log=lambda *_: None)
    out = SceneOutputs(mask=str(tmp_path / 'o' / 'm.tif'), vector=str(tmp_path / 'o' / 'c.geojson'),
                       summary=str(tmp_path / 'o' / 'm.json'))
    summary = run_scene(DifferenceModel(), pair, out, SceneOptions(tile=96, overlap=32), 'cpu',
                        log=lambda *_: None)
    collection = json.loads(Path(out.vector).read_text())
    assert collection['crs']['properties']['name'] == 'urn:ogc:def:crs:EPSG::32633'
    areas = sorted(f['properties']['area'] for f in collection['features'])
    assert areas == [9 * 0.25, 800 * 0.25, 1600 * 0.25]                 # m^2, exact
    assert summary['polygons'] == 3 and summary['changed_pixels'] == 9 + 800 + 1600
    square = next(f for f in collection['features'] if f['properties']['area'] == 400.0)
    ring = next(f for f in collection['features'] if f['properties']['area'] == 200.0)
    xs, ys = zip(*square['geometry']['coordinates'][0])
    assert (min(xs), max(xs)) == (ORIGIN[0] + 50 * PIXEL, ORIGIN[0] + 90 * PIXEL)
    assert (min(ys), max(ys)) == (ORIGIN[1] - 280 * PIXEL, ORIGIN[1] - 240 * PIXEL)
    assert len(ring['geometry']['coordinates']) == 2                    # outer ring + the hole
    assert 0.9 < square['properties']['mean_prob'] <= 1 and square['properties']['pixels'] == 1600


def test_min_area_drops_small_regions_from_polygons_and_mask(tmp_path):
    pair = open_pair(*squares_pair(tmp_path), log=lambda *_: None)
    out = SceneOutputs(mask=str(tmp_path / 'm.tif'), vector=str(tmp_path / 'c.geojson'))
    summary = run_scene(DifferenceModel(), pair, out, SceneOptions(tile=96, overlap=32, min_area=5.0),
                        'cpu', log=lambda *_: None)
    features = json.loads(Path(out.vector).read_text())['features']
    assert sorted(f['properties']['area'] for f in features) == [200.0, 400.0]
    with rasterio.open(out.mask) as ds:
        mask = ds.read(1)
        assert ds.crs.to_epsg() == 32633 and ds.nodata == 255
    assert mask[20:23, 20:23].max() == 0 and (mask == 1).sum() == 2400 == summary['changed_pixels']
    assert (mask[:, :4] == 255).all() and summary['removed_regions'] == 1
    assert sorted(os.listdir(tmp_path)) == ['a.tif', 'b.tif', 'c.geojson', 'm.tif']   # no temp files


# -------------------------------------------------------------------------------- command line

def infer_main(args):
    import infer
    return infer.main([str(a) for a in args])


def run_cli(args, cwd, **kwargs):
    cmd = [sys.executable, str(REPO / 'infer.py')] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs)


def test_cli_geotiff_outputs_are_georeferenced_and_equal_the_png_path(tmp_path, checkpoint):
    a, b = textured_pair(130, 170, seed=12)
    pa, pb = write_tif(tmp_path / 'a.tif', a), write_tif(tmp_path / 'b.tif', b)
    a_border = a.copy()
    a_border[:, :, :9] = 0
    pn = write_tif(tmp_path / 'an.tif', a_border, nodata=0)
    pngs = tmp_path / 'png'
    for sub, img in (('A', a), ('B', b)):
        (pngs / sub).mkdir(parents=True)
        cv2.imwrite(str(pngs / sub / 'p.png'), img.transpose(1, 2, 0)[..., ::-1])
    common = ['--checkpoint', checkpoint, '--backbone', 'mit_b0', '--tile', '96', '--overlap', '32',
              '--device', 'cpu']
    assert infer_main(common + ['--a', pa, '--b', pb, '--out', tmp_path / 'out' / 'change.tif',
                                '--prob', '--num-workers', '0']) == 0
    assert infer_main(common + ['--a', pn, '--b', pb, '--out', tmp_path / 'out' / 'nd.tif', '--prob',
                                '--vector', tmp_path / 'out' / 'nd.geojson']) == 0
    assert infer_main(common + ['--input-dir', pngs, '--output-dir', tmp_path / 'pngout', '--prob']) == 0

    png_mask = cv2.imread(str(tmp_path / 'pngout' / 'p.png'), cv2.IMREAD_UNCHANGED)
    png_prob = cv2.imread(str(tmp_path / 'pngout' / 'prob' / 'p.png'), cv2.IMREAD_UNCHANGED)
    with rasterio.open(pa) as src:
        crs, transform = src.crs, src.transform
    for name in ('change.tif', 'change_prob.tif', 'nd.tif', 'nd_prob.tif'):
        with rasterio.open(tmp_path / 'out' / name) as ds:
            assert ds.crs == crs and ds.transform == transform and ds.nodata == 255
            assert ds.dtypes == ('uint8',) and ds.compression.name == 'deflate'
            assert ds.block_shapes == [(256, 256)] and ds.is_tiled
            assert 'FHD_STRETCH' in ds.tags() and ds.tags()['FHD_GRID'] == 'same grid'
    with rasterio.open(tmp_path / 'out' / 'change.tif') as ds:
        mask = ds.read(1)
    with rasterio.open(tmp_path / 'out' / 'change_prob.tif') as ds:
        prob = ds.read(1)
        assert ds.scales[0] == pytest.approx(1 / 254)
    assert set(np.unique(mask)) <= {0, 1} and np.array_equal(mask * 255, png_mask)   # same pixels
    assert prob.max() <= 254 and np.abs(prob / 254 - png_prob / 255).max() <= 1 / 254 + 1e-9
    with rasterio.open(tmp_path / 'out' / 'nd.tif') as ds:
        nd_mask = ds.read(1)
    with rasterio.open(tmp_path / 'out' / 'nd_prob.tif') as ds:
        nd_prob = ds.read(1)
    assert (nd_mask[:, :9] == 255).all() and (nd_prob[:, :9] == 255).all()
    assert set(np.unique(nd_mask[:, 9:])) <= {0, 1} and nd_prob[:, 9:].max() <= 254
    summary = json.loads((tmp_path / 'out' / 'nd.json').read_text())
    assert summary['valid_pixels'] == 130 * (170 - 9) and summary['crs'] == 'EPSG:32633'
    polygons = json.loads((tmp_path / 'out' / 'nd.geojson').read_text())['features']
    assert sum(f['properties']['pixels'] for f in polygons) == (nd_mask == 1).sum()
    leftovers = [p.name for p in (tmp_path / 'out').iterdir() if p.name.startswith('.')]
    assert not leftovers


def test_cli_uint16_scene_records_the_stretch(tmp_path, checkpoint, capsys):
    a = (textured_pair(64, 96, seed=13)[0].astype(np.uint16) * 40)
    pa, pb = write_tif(tmp_path / 'a.tif', a), write_tif(tmp_path / 'b.tif', a)
    assert infer_main(['--checkpoint', checkpoint, '--backbone', 'mit_b0', '--device', 'cpu', '--a', pa,
                       '--b', pb, '--out', tmp_path / 'm.tif', '--num-workers', '0']) == 0
    assert 'stretch A: percentile 2-98' in capsys.readouterr().out
    with rasterio.open(tmp_path / 'm.tif') as ds:
        stretch = json.loads(ds.tags()['FHD_STRETCH'])
    assert stretch['A'] == stretch['B'] and len(stretch['A']['low']) == 3
    assert all(1000 < lo < hi for lo, hi in zip(stretch['A']['low'], stretch['A']['high']))


def test_cli_input_dir_mixes_png_pairs_and_scenes(tmp_path, checkpoint):
    a, b = textured_pair(48, 64, seed=17)
    pairs = tmp_path / 'pairs'
    for sub, img in (('A', a), ('B', b)):
        (pairs / sub).mkdir(parents=True)
        write_tif(pairs / sub / 'scene.tif', img)
        cv2.imwrite(str(pairs / sub / 'tile.png'), img.transpose(1, 2, 0)[..., ::-1])
    out = tmp_path / 'out'
    assert infer_main(['--checkpoint', checkpoint, '--backbone', 'mit_b0', '--device', 'cpu',
                       '--input-dir', pairs, '--output-dir', out, '--prob', '--num-workers', '0']) == 0
    with rasterio.open(out / 'scene.tif') as ds:
        assert ds.crs.to_epsg() == 32633 and ds.read(1).max() <= 1
    assert (out / 'prob' / 'scene.tif').is_file() and (out / 'scene.json').is_file()
    png = cv2.imread(str(out / 'tile.png'), cv2.IMREAD_UNCHANGED)
    with rasterio.open(out / 'scene.tif') as ds:
        assert np.array_equal(ds.read(1) * 255, png)                    # same pixels, same map


def test_scene_options_with_png_pairs_are_an_error(tmp_path, checkpoint, capsys):
    a = tmp_path / 'a.png'
    cv2.imwrite(str(a), np.zeros((32, 32, 3), np.uint8))
    assert infer_main(['--checkpoint', checkpoint, '--a', a, '--b', a, '--out', tmp_path / 'o.png',
                       '--vector', tmp_path / 'v.geojson']) == 2
    assert '--vector is for scenes' in one_error_line(capsys)


# --------------------------------------------------------------------------------- bad input

def one_error_line(capsys):
    """The error line; stderr holds nothing else but, when work had begun, the progress bar."""
    lines = capsys.readouterr().err.rstrip('\n').split('\n')
    assert lines and lines[-1].startswith('error: '), lines
    assert all('\r' in line or 'tile/s' in line for line in lines[:-1]), lines
    return lines[-1]


@pytest.fixture()
def scene_files(tmp_path):
    a, b = textured_pair(64, 80, seed=14)
    return {'a': write_tif(tmp_path / 'a.tif', a), 'b': write_tif(tmp_path / 'b.tif', b),
            'shifted': write_tif(tmp_path / 'shifted.tif', b,
                                 transform=from_origin(ORIGIN[0] + 3, ORIGIN[1], PIXEL, PIXEL)),
            'far': write_tif(tmp_path / 'far.tif', b,
                             transform=from_origin(ORIGIN[0] + 1e5, ORIGIN[1], PIXEL, PIXEL)),
            'gray': write_tif(tmp_path / 'gray.tif', a[:1]),
            'garbage': _garbage(tmp_path / 'garbage.tif')}


def _garbage(path):
    path.write_bytes(b'II*\x00' + bytes(range(256)) * 4)
    return str(path)


@pytest.mark.parametrize('case, extra, message', [
    ('garbage', [], 'not a readable raster'),
    ('gray', [], '1 band(s); an RGB image needs at least 3'),
    ('bands', ['--bands', '1,2,4'], 'band 4 is out of range'),
    ('shifted', [], 'different grids (origin'),
    ('far', ['--align'], 'do not overlap'),
    ('png_out', [], 'name it .tif'),
    ('overlay', ['--overlay'], '--overlay is for PNG/JPEG pairs'),
    ('vector_name', ['--vector', 'x.shp'], 'GeoJSON'),
    ('not_writable', [], 'is not writable'),
    ('vector_is_summary', [], '--vector'),
    ('out_is_input', [], 'is also --a'),
])
def test_cli_bad_scene_input_is_one_line(tmp_path, checkpoint, scene_files, capsys, case, extra, message):
    import infer
    a, b, out = scene_files['a'], scene_files['b'], tmp_path / 'out' / 'm.tif'
    if case in ('garbage', 'gray'):
        b = scene_files[case]
    elif case in ('shifted', 'far'):
        b = scene_files[case]
    elif case == 'png_out':
        out = tmp_path / 'm.png'
    elif case == 'not_writable':
        (tmp_path / 'file').write_text('x')
        out = tmp_path / 'file' / 'm.tif'                   # its folder is a file
    elif case == 'vector_is_summary':
        extra = ['--vector', str(out.with_suffix('.json'))]
    elif case == 'out_is_input':
        out = Path(a)
    before = Path(a).read_bytes()
    rc = infer.main(['--checkpoint', str(checkpoint), '--backbone', 'mit_b0', '--device', 'cpu',
                     '--a', a, '--b', b, '--out', str(out), '--num-workers', '0'] + extra)
    err = one_error_line(capsys)
    assert rc == 2 and message in err
    assert Path(a).read_bytes() == before
    assert case == 'out_is_input' or not out.exists()


def test_cli_truncated_raster_leaves_nothing_behind(tmp_path, checkpoint, capsys):
    import infer
    a, b = textured_pair(300, 200, seed=15)
    pa = write_tif(tmp_path / 'a.tif', a)
    pb = write_tif(tmp_path / 'b.tif', b)
    data = Path(pb).read_bytes()
    Path(pb).write_bytes(data[:len(data) * 2 // 3])         # header intact, last blocks missing
    out = tmp_path / 'out'
    rc = infer.main(['--checkpoint', str(checkpoint), '--backbone', 'mit_b0', '--device', 'cpu',
                     '--a', pa, '--b', pb, '--out', str(out / 'm.tif'), '--prob', '--tile', '128',
                     '--num-workers', '1'])
    err = one_error_line(capsys)
    assert rc == 2 and 'b.tif' in err and 'read failed' in err
    assert not out.exists() or not list(out.iterdir())       # no mask, no temporary file


def test_cli_disk_full_midway_leaves_no_partial_file(tmp_path, checkpoint):
    a, b = textured_pair(384, 256, seed=16)          # its probability map: ~47 kB
    pa, pb = write_tif(tmp_path / 'a.tif', a), write_tif(tmp_path / 'b.tif', b)
    out = tmp_path / 'out'
    out.mkdir()

    def small_disk():                       # writes past 20 kB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    res = run_cli(['--checkpoint', checkpoint, '--backbone', 'mit_b0', '--device', 'cpu', '--a', pa,
                   '--b', pb, '--out', out / 'm.tif', '--prob', '--num-workers', '0'], tmp_path,
                  preexec_fn=small_disk, env=dict(os.environ, PYTHONDONTWRITEBYTECODE='1'))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().split('\n')
    assert lines[-1].startswith('error: writing') and 'failed' in lines[-1] and 'disk full' in lines[-1]
    assert all('tile' in line for line in lines[:-1]), lines      # nothing else but the progress bar
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------ memory

MEMORY_PROBE = r'''
import resource, sys, torch
torch.set_num_threads(2)
sys.path.insert(0, sys.argv[1])
from datasets.raster import open_pair
from utils.scene import SceneOptions, SceneOutputs, run_scene
torch.manual_seed(0)
model = torch.nn.Conv2d(6, 2, 1).eval()         # cheap: the sweep is about the streaming engine
pair = open_pair(sys.argv[2], sys.argv[3], log=lambda *_: None)
run_scene(model, pair, SceneOutputs(mask=sys.argv[4], prob=sys.argv[4] + '.p.tif'),
          SceneOptions(tile=128, overlap=32, batch_size=8), 'cpu', log=lambda *_: None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
'''


def test_streaming_memory_does_not_grow_with_the_scene(tmp_path):
    # 512 wide, 2048 vs 8192 rows: in memory the taller scene needs 36 B per extra pixel (image,
    # logits, weights: +113 MB); streamed, the buffers are the same and GDAL's block cache is
    # capped, so the peaks differ by allocator noise only (~10 MB measured).
    peaks = {}
    for rows in (2048, 8192):
        rng = np.random.default_rng(rows)
        img = rng.integers(0, 256, (3, rows, 512), np.uint8)
        pa = write_tif(tmp_path / f'a{rows}.tif', img)
        pb = write_tif(tmp_path / f'b{rows}.tif', img[:, ::-1].copy())
        res = subprocess.run([sys.executable, '-c', MEMORY_PROBE, str(REPO), pa, pb,
                              str(tmp_path / f'm{rows}.tif')], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        peaks[rows] = int(res.stdout.split()[-1]) / 1024               # MiB
    assert peaks[8192] - peaks[2048] < 30, peaks


# ------------------------------------------------------------------------- tools/make_scene.py

def test_make_scene_writes_a_georeferenced_pair_with_truth(tmp_path):
    sys.path.insert(0, str(REPO))
    from tools.make_scene import scores, write_scene
    a, b, label = write_scene(str(tmp_path), 256, dtype='uint16', log=lambda *_: None)
    with rasterio.open(a) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.dtypes == ('uint16',) * 3 and ds.nodata == 0
        img = ds.read()
    assert (img[:, 0, 0] == 0).all() and (img[:, 128, 128] > 0).all()     # nodata corner, data inside
    with rasterio.open(label) as ds:
        truth = ds.read(1)
    assert 0 < truth.mean() < 0.5
    assert scores(label, label) == (100.0, 100.0, 100.0)
