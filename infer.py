"""Change maps for image pairs without labels, any size; whole georeferenced scenes too.

    python infer.py --checkpoint model_ckpt/levir.pth --a t1.png --b t2.png --out change.png [--prob] [--overlay]
    python infer.py --checkpoint model_ckpt/levir.pth --input-dir pairs/ --output-dir out/ [--prob] [--overlay]
    python infer.py --checkpoint model_ckpt/levir.pth --a 2019.tif --b 2023.tif --out change.tif [--prob]
                    [--vector changes.geojson] [--min-area 20] [--bands 1,2,3] [--stretch percentile] [--align]

Images run at their native resolution (the released models were trained on 256x256 tiles
at the datasets' native ground resolution). An image larger than `--tile` is processed
by overlapping tiles whose logits are blended with a window that fades towards the tile
borders, so there are no seams; other sizes are zero-padded to a multiple of 32 and the
result cropped back.

PNG / JPEG / BMP pairs are read whole with OpenCV. Outputs (all PNG, written atomically):
  mask          0/255 change map (--out, or <output-dir>/<name>.png)
  --prob        8-bit change probability (OUT_prob.png, or <output-dir>/prob/<name>.png)
  --overlay     changes tinted red on image B (OUT_overlay.png, or <output-dir>/overlay/<name>.png)

Any other raster (GeoTIFF, VRT, JP2, ...) is a scene: read through rasterio/GDAL in windows and
written as it finishes, in memory that does not grow with the scene; the logits equal the PNG
path's on the same pixels. A and B must share CRS, transform and size (or give --align).
Pixels that are nodata (or masked by an alpha/mask band) in A or B are nodata in every output
and reach the network as the mean colour. Outputs (GeoTIFF with A's CRS and transform, tiled,
DEFLATE, overviews; written under a temporary name and renamed when complete):
  mask          uint8 0 = no change, 1 = change, 255 = nodata (OUT.tif)
  --prob        uint8 round(254 x probability), 255 = nodata, band scale 1/254 (OUT_prob.tif)
  --vector F    GeoJSON polygons of the changed regions in A's CRS with area (CRS units^2,
                m^2 for projected CRSs), mean_prob and pixels
  OUT.json      a summary (sizes, stretch, changed area, polygons, timing)
uint8 bands are used as they are; other types are stretched to 8 bit (default: 2-98 %
percentiles of A and B together, printed and stored in the outputs' tags).
With --input-dir, pairs are the files with the same name in DIR/A and DIR/B; scene pairs
give <output-dir>/<name>.tif (+ prob/<name>.tif, <name>.json).
"""
import argparse
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from utils.inference import resolve_device, sliding_window_logits
from utils.runtime import keep_freed_memory
from utils.visualize import imwrite_atomic, mask_to_png, overlay

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
PLAIN_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')    # read whole with OpenCV; the rest are scenes
SCENE_OUT_SUFFIXES = ('.tif', '.tiff')
VECTOR_SUFFIXES = ('.geojson', '.json')


class InferError(Exception):
    """A user-facing problem (bad argument, missing or mismatched input); printed as one line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', help='model weights (original FHD release or this project)')
    p.add_argument('--onnx', metavar='FILE', help='run an exported model (tools/export.py) in ONNX '
                   'Runtime on the CPU instead of --checkpoint (the fastest CPU path measured)')
    p.add_argument('--backbone', default='mit_b2', help='MiT variant the checkpoint was trained with')
    p.add_argument('--a', help='first-date image')
    p.add_argument('--b', help='second-date image')
    p.add_argument('--out', help='output mask for --a/--b: PNG (0/255), for scenes a GeoTIFF .tif '
                   '(0/1, 255 nodata)')
    p.add_argument('--input-dir', help='folder with A/ and B/ holding pairs of equal names')
    p.add_argument('--output-dir', help='output folder for --input-dir')
    p.add_argument('--tile', type=int, default=256, help='sliding-window tile size (multiple of 32)')
    p.add_argument('--overlap', type=int, default=64, help='overlap of neighbouring tiles in pixels')
    p.add_argument('--prob', action='store_true',
                   help='also write the change probability: 8-bit PNG round(255 p); for scenes a uint8 '
                   'GeoTIFF round(254 p), 255 nodata')
    p.add_argument('--overlay', action='store_true', help='also write the changes overlaid on image B')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    p.add_argument('--batch-size', type=int, default=4, help='tiles per forward pass')
    p.add_argument('--amp', default='none', choices=('none', 'fp16', 'bf16'))
    scene = p.add_argument_group('scenes (GeoTIFF and other GDAL rasters)')
    scene.add_argument('--bands', help='1-based bands used as R,G,B, e.g. 3,2,1 (default: the bands '
                       'labelled red/green/blue, else the first three)')
    scene.add_argument('--stretch', default=None, metavar='none|percentile|minmax|LOW,HIGH',
                       help='mapping to 8 bit (default: uint8 as it is, other types percentile '
                       '2-98 %% of A and B together)')
    scene.add_argument('--align', action='store_true',
                       help="read B resampled (bilinear) onto A's grid when the grids differ")
    scene.add_argument('--vector', metavar='FILE.geojson',
                       help="also write the changed regions as polygons (GeoJSON, A's CRS)")
    scene.add_argument('--min-area', type=float, default=0.0, metavar='AREA',
                       help="drop changed regions smaller than AREA (A's CRS units squared, m^2 "
                       'for projected CRSs) from the polygons and set them to 0 in the mask')
    scene.add_argument('--num-workers', type=int, default=None,
                       help='processes reading windows ahead of the network (default: 1 on CPU, '
                       '4 on CUDA; 0 = read in the main process)')
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.onnx is None):
        p.error('give exactly one of --checkpoint (PyTorch) or --onnx (an exported model)')
    single = (args.a, args.b, args.out)
    if args.input_dir or args.output_dir:
        if any(single) or not (args.input_dir and args.output_dir):
            p.error('use either --a/--b/--out or --input-dir/--output-dir')
    elif not all(single):
        p.error('give --a, --b and --out (or --input-dir and --output-dir)')
    if args.batch_size < 1:
        p.error('--batch-size must be >= 1')
    if args.vector and args.input_dir:
        p.error('--vector takes one pair (--a/--b/--out)')
    if args.min_area < 0:
        p.error('--min-area must be >= 0')
    if args.num_workers is not None and args.num_workers < 0:
        p.error('--num-workers must be >= 0')
    return args


def side_paths(out):
    """Probability and overlay file names next to a single --out mask."""
    stem = os.path.splitext(out)[0]
    return stem + '_prob.png', stem + '_overlay.png'


def find_pairs(input_dir, output_dir):
    """[(a_path, b_path, mask_out, prob_out, overlay_out)] for DIR/A/* with a partner in DIR/B."""
    a_dir, b_dir = Path(input_dir) / 'A', Path(input_dir) / 'B'
    for folder in (a_dir, b_dir):
        if not folder.is_dir():
            raise InferError(f'--input-dir needs the sub-folders A/ and B/; missing {folder}')
    names = sorted(p.relative_to(a_dir) for p in a_dir.rglob('*')
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith('.'))
    if not names:
        raise InferError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {a_dir}')
    missing = [str(n) for n in names if not (b_dir / n).is_file()]
    if missing:
        raise InferError(f'{len(missing)} image(s) of {a_dir} have no partner in {b_dir}: '
                         f'{", ".join(missing[:5])}')
    out = Path(output_dir)
    return [(a_dir / n, b_dir / n, out / n.with_suffix('.png'), out / 'prob' / n.with_suffix('.png'),
             out / 'overlay' / n.with_suffix('.png')) for n in names]


def is_scene(path):
    """Rasters other than PNG/JPEG/BMP go through the scene path (rasterio)."""
    return Path(path).suffix.lower() not in PLAIN_IMAGE_SUFFIXES


def scene_outputs(args, job):
    """Output paths of a scene job: OUT.tif, OUT_prob.tif, OUT.json (with --input-dir:
    <name>.tif, prob/<name>.tif, <name>.json); fails now if a folder cannot take them."""
    from utils.scene import SceneOutputs, check_writable
    _, _, mask_out, prob_out, _ = job
    mask_out = Path(mask_out).with_suffix('.tif') if args.input_dir else Path(mask_out)
    stem = os.path.splitext(str(mask_out))[0]
    prob = None
    if args.prob:
        prob = str(prob_out.with_suffix('.tif')) if args.input_dir else stem + '_prob.tif'
    outputs = SceneOutputs(mask=str(mask_out), prob=prob, vector=args.vector, summary=stem + '.json')
    named = [(option, path) for option, path in (('--out', outputs.mask), ('--prob', outputs.prob),
                                                 ('--vector', outputs.vector), ('summary', outputs.summary))
             if path]
    taken = {os.path.abspath(job[0]): '--a', os.path.abspath(job[1]): '--b'}
    for option, path in named:
        other = taken.setdefault(os.path.abspath(path), option)
        if other != option:
            raise InferError(f'{option} {path} is also {other}: give the outputs names of their own')
    for option, path in named:
        check_writable(path, option)
    return outputs


def check_scene_args(args, jobs):
    """Options that only make sense for one kind of input; the scene output names."""
    scenes = [job for job in jobs if is_scene(job[0]) or is_scene(job[1])]
    scene_only = [opt for opt, given in (('--bands', args.bands), ('--stretch', args.stretch),
                                         ('--align', args.align), ('--vector', args.vector),
                                         ('--min-area', args.min_area)) if given]
    if scene_only and not scenes:
        raise InferError(f'{scene_only[0]} is for scenes (GeoTIFF and other GDAL rasters); '
                         'the inputs are PNG/JPEG images')
    if scenes and args.overlay:
        raise InferError('--overlay is for PNG/JPEG pairs; a scene mask is a GeoTIFF: show it over '
                         'the imagery in a GIS')
    if scenes and not args.input_dir and Path(args.out).suffix.lower() not in SCENE_OUT_SUFFIXES:
        raise InferError(f'--out {args.out}: the change map of a scene is a GeoTIFF; name it .tif')
    if args.vector and Path(args.vector).suffix.lower() not in VECTOR_SUFFIXES:
        raise InferError(f'--vector {args.vector}: polygons are written as GeoJSON; name it .geojson')
    return scenes


def open_scenes(args, scenes):
    """{a_path: ScenePair} for the scene jobs, checked (bands, grids, stretch) before any work."""
    from datasets.raster import limit_gdal_cache, open_pair, parse_bands, parse_stretch
    limit_gdal_cache()
    bands, stretch = parse_bands(args.bands), parse_stretch(args.stretch)
    return {job[0]: open_pair(job[0], job[1], bands=bands, align=args.align, stretch=stretch)
            for job in scenes}


def build_model(args, device):
    """The network as an opaque callable: normalized (B,6,H,W) float -> (B,2,H,W) logits."""
    if args.onnx:
        from models.onnx_model import OnnxFHD
        return OnnxFHD(args.onnx)
    from models import build_fhd, for_inference, load_checkpoint
    model = build_fhd(backbone=args.backbone)
    load_checkpoint(model, args.checkpoint)
    return for_inference(model, device=device)


def run_scene_job(model, pair, outputs, args, device):
    from utils.scene import SceneOptions, run_scene
    workers = args.num_workers if args.num_workers is not None else (4 if device.type == 'cuda' else 1)
    options = SceneOptions(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                           amp=args.amp, num_workers=workers, min_area=args.min_area)
    tags = {'FHD_CHECKPOINT': os.path.abspath(args.onnx or args.checkpoint),
            'FHD_BACKBONE': args.backbone}
    with c_stderr_to_devnull():
        summary = run_scene(model, pair, outputs, options, device, tags=tags)
    share = 100 * summary['changed_pixels'] / max(summary['valid_pixels'], 1)
    line = (f'{outputs.mask}: {summary["changed_pixels"]} changed pixels ({share:.2f} % of the '
            f'{summary["valid_pixels"]} valid), area {summary["changed_area"]:.6g}')
    if outputs.vector:
        line += f'; {summary["polygons"]} polygon(s) in {outputs.vector}'
    if summary.get('removed_regions'):
        line += f'; {summary["removed_regions"]} region(s) under --min-area removed'
    print(line + f' ({summary["tiles_per_second"]:.2f} tiles/s)')
    return summary


def pair_logits(model, a_bgr, b_bgr, device, tile, overlap, batch_size, amp='none'):
    """(2,H,W) float32 logits for one pair of BGR uint8 images of equal size."""
    from datasets import normalize_pair
    img = normalize_pair(a_bgr, b_bgr)[None].to(device)
    logits = sliding_window_logits(model, img, tile=tile, overlap=overlap, batch_size=batch_size, amp=amp)
    return logits[0].cpu()


def run(args):
    keep_freed_memory(resolve_device(args.device))
    from datasets import read_pair

    if args.tile % 32 or args.tile <= 0:
        raise InferError(f'--tile must be a positive multiple of 32, got {args.tile}')
    if not 0 <= args.overlap < args.tile:
        raise InferError(f'--overlap must be in [0, --tile), got {args.overlap}')
    if args.input_dir:
        jobs = find_pairs(args.input_dir, args.output_dir)
    else:
        jobs = [(Path(args.a), Path(args.b), Path(args.out), *map(Path, side_paths(args.out)))]
    scenes = check_scene_args(args, jobs)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise InferError(f'checkpoint not found: {args.checkpoint} (the released FHD checkpoints are '
                         'linked from the README of github.com/ZSVOS/FHD; put them in model_ckpt/)')
    pairs = open_scenes(args, scenes) if scenes else {}
    scene_out = {job[0]: scene_outputs(args, job) for job in scenes}
    if args.onnx and (args.device == 'cuda' or args.amp != 'none'):
        raise InferError('--onnx runs in fp32 on the CPU: drop --device cuda / --amp')
    device = resolve_device('cpu' if args.onnx else args.device)
    model = build_model(args, device)

    for a_path, b_path, mask_out, prob_out, overlay_out in tqdm(jobs, desc='infer', unit='pair',
                                                                 disable=len(jobs) == 1):
        if a_path in pairs:
            run_scene_job(model, pairs[a_path], scene_out[a_path], args, device)
            continue
        a, b = read_pair(a_path, b_path)       # DatasetError when unreadable or sizes differ
        logits = pair_logits(model, a, b, device, args.tile, args.overlap, args.batch_size, args.amp)
        mask = logits.argmax(dim=0)
        imwrite_atomic(str(mask_out), mask_to_png(mask))
        if args.prob:
            prob = logits.softmax(dim=0)[1]
            imwrite_atomic(str(prob_out), (prob * 255).round().to(torch.uint8).numpy())
        if args.overlay:
            imwrite_atomic(str(overlay_out), overlay(b, mask))
    print(f'wrote {len(jobs)} change map(s) to {args.output_dir or args.out}')


def user_errors():
    """Exception types reported as one `error:` line (GDAL's own, when rasterio is there)."""
    from datasets import DatasetError
    from models import CheckpointError
    errors = (InferError, DatasetError, CheckpointError, ValueError, OSError)
    try:
        from rasterio.errors import RasterioError
    except ImportError:
        return errors
    return errors + (RasterioError,)


@contextmanager
def c_stderr_to_devnull():
    """libtiff prints some errors ('_tiffWriteProc: File too large.') straight to file descriptor
    2, besides the GDAL error that reaches us as an exception: for the duration, fd 2 goes to
    /dev/null and Python's sys.stderr writes to a copy of the real one. Only when sys.stderr is
    the process's own stream (not a test's capture)."""
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), 'w', buffering=1, encoding=python_stderr.encoding,
                           errors=python_stderr.errors)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        sys.stderr.close()
        sys.stderr = python_stderr
        os.close(saved)
        os.close(devnull)


def quiet_gdal_log():
    """GDAL's warnings would print through Python's last-resort log handler; its errors reach
    the user as exceptions (one line) anyway."""
    logging.getLogger('rasterio').addHandler(logging.NullHandler())


def main(argv=None):
    args = parse_args(argv)
    quiet_gdal_log()
    try:
        run(args)
    except user_errors() as err:
        print('error: ' + ' '.join(str(err).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
