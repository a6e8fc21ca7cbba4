"""Scene mode figures: peak memory against scene size, scene vs batch-eval throughput, and
the streaming path's equality with the in-memory sliding window.

    python tools/scene_bench.py                         # 2048^2 and 8192^2, mit_b0, CPU, 2 threads
    python tools/scene_bench.py --sizes 1024 2048 --backbone mit_b2 --device cuda

For each size a synthetic scene pair (tools/make_scene.py, cached under --work-dir) goes
through `infer.py` (run in a fresh child process, random weights of --backbone, --prob on)
and the child reports its peak resident set (getrusage: the main process, and separately the
DataLoader worker(s)) and the summary's throughput. Batch-eval throughput is the model's
forward alone on random (batch, 6, tile, tile) inputs in another child, measured before and
after the scene runs (the mean of the two is the reference; the machine's speed drifts); the
scene's rate is taken after its first batch (start-up: workers, the model's first call). The
equality run streams a --equality-size scene and compares it with
utils.inference.sliding_window_logits on the whole scene in memory. Prints a table and writes
JSON (default work_dirs/scene_bench.json).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', type=int, nargs='+', default=[2048, 8192])
    p.add_argument('--backbone', default='mit_b0')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--tile', type=int, default=256)
    p.add_argument('--num-workers', type=int, default=None, help="infer.py's default when not given")
    p.add_argument('--eval-batches', type=int, default=20, help='batches per batch-eval measurement')
    p.add_argument('--equality-size', type=int, default=2048,
                   help='scene side for the streaming vs in-memory comparison (0: skip)')
    p.add_argument('--work-dir', default='work_dirs/scene_bench')
    p.add_argument('--json', default='work_dirs/scene_bench.json')
    p.add_argument('--_child', nargs='+', help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------- child processes

def child_scene(args, a, b, out, checkpoint):
    """Run infer.py in this process; print peak RSS of self and of the (waited-for) workers."""
    import torch
    torch.set_num_threads(args.threads)
    import infer
    cmd = ['--checkpoint', checkpoint, '--backbone', args.backbone, '--a', a, '--b', b, '--out', out,
           '--prob', '--device', args.device, '--batch-size', str(args.batch_size), '--tile', str(args.tile)]
    if args.num_workers is not None:
        cmd += ['--num-workers', str(args.num_workers)]
    rc = infer.main(cmd)
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cuda_peak = torch.cuda.max_memory_allocated() / 2 ** 20 if args.device == 'cuda' else None
    print(json.dumps({'rc': rc, 'rss_main_mib': self_peak, 'rss_workers_mib': workers_peak,
                      'cuda_peak_mib': cuda_peak}))


def child_eval(args, checkpoint):
    """Forward passes alone on random tiles, as the scene runs them: tiles per second."""
    import torch
    torch.set_num_threads(args.threads)
    import infer
    from utils.inference import autocast_context, resolve_device
    from utils.runtime import keep_freed_memory
    keep_freed_memory()
    device = resolve_device(args.device)
    model = infer.build_model(argparse.Namespace(backbone=args.backbone, checkpoint=checkpoint), device)
    x = torch.randn(args.batch_size, 6, args.tile, args.tile, device=device)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    with torch.inference_mode(), autocast_context(device, 'none'):
        for _ in range(2):
            model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.eval_batches):
            model(x).float()
        sync()
        seconds = time.perf_counter() - t0
    print(json.dumps({'tiles_per_second': args.eval_batches * args.batch_size / seconds}))


def child_equality(args, a, b, checkpoint):
    """Streaming logits vs utils.inference.sliding_window_logits on the same (whole) scene."""
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    import infer
    from datasets import normalize_pair
    from datasets.raster import open_pair
    from utils.inference import resolve_device, sliding_window_logits
    from utils.runtime import keep_freed_memory
    from utils.scene import TilePlan, stream_logits, tile_loader
    keep_freed_memory()
    device = resolve_device(args.device)
    model = infer.build_model(argparse.Namespace(backbone=args.backbone, checkpoint=checkpoint), device)
    pair = open_pair(a, b, log=lambda *_: None)
    plan = TilePlan(pair.height, pair.width, args.tile, 64)
    workers = args.num_workers if args.num_workers is not None else 1
    blocks = [(lg.cpu(), v) for _, lg, v in stream_logits(
        model, tile_loader(pair, plan, args.batch_size, workers), plan, device)]
    streamed = torch.cat([lg for lg, _ in blocks], 1)
    valid = np.concatenate([v for _, v in blocks])
    a_rgb, b_rgb, _ = pair.read(None)
    img = normalize_pair(a_rgb.transpose(1, 2, 0)[..., ::-1], b_rgb.transpose(1, 2, 0)[..., ::-1])
    img[:, ~valid] = 0
    del a_rgb, b_rgb
    reference = sliding_window_logits(model, img[None].to(device), tile=args.tile, overlap=64,
                                      batch_size=args.batch_size)[0].cpu()
    diff = (streamed - reference).abs()
    differing = int((streamed.argmax(0) != reference.argmax(0)).sum())
    print(json.dumps({'pixels': int(valid.size), 'tiles': len(plan.boxes),
                      'max_abs_logit_diff': float(diff.max()), 'differing_mask_pixels': differing,
                      'identical_logits': bool(torch.equal(streamed, reference))}))


def run_child(args, *child_args):
    cmd = [sys.executable, os.path.abspath(__file__), '--_child', *map(str, child_args)]
    for name in ('backbone', 'device', 'threads', 'batch_size', 'tile', 'num_workers', 'eval_batches'):
        value = getattr(args, name)
        if value is not None:
            cmd += ['--' + name.replace('_', '-'), str(value)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f'error: child {child_args[0]} failed: {res.stderr.strip().splitlines()[-1:]}')
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stdout


# ---------------------------------------------------------------------------------- driver

def random_checkpoint(args):
    import torch
    from models import build_fhd
    path = os.path.join(args.work_dir, f'fhd_{args.backbone}_random.pth')
    if not os.path.isfile(path):
        torch.manual_seed(0)
        os.makedirs(args.work_dir, exist_ok=True)
        torch.save({'meta': {'backbone': args.backbone},
                    'state_dict': build_fhd(backbone=args.backbone).state_dict()}, path)
    return path


def scene(args, size):
    from tools.make_scene import write_scene
    folder = os.path.join(args.work_dir, f'scene_{size}')
    a, b = os.path.join(folder, 'A.tif'), os.path.join(folder, 'B.tif')
    if not (os.path.isfile(a) and os.path.isfile(b)):
        write_scene(folder, size)
    return a, b


def main(argv=None):
    args = parse_args(argv)
    if args._child:
        kind = args._child[0]
        if kind == 'scene':
            child_scene(args, *args._child[1:])
        elif kind == 'equality':
            child_equality(args, *args._child[1:])
        else:
            child_eval(args, args._child[1])
        return 0
    checkpoint = random_checkpoint(args)
    scenes = {size: scene(args, size) for size in args.sizes}
    results = {'backbone': args.backbone, 'device': args.device, 'threads': args.threads,
               'batch_size': args.batch_size, 'tile': args.tile, 'num_workers': args.num_workers,
               'scenes': []}
    eval_before, _ = run_child(args, 'eval', checkpoint)
    for size, (a, b) in scenes.items():
        out = os.path.join(args.work_dir, f'out_{size}', 'change.tif')
        t0 = time.perf_counter()
        memory, _ = run_child(args, 'scene', a, b, out, checkpoint)
        wall = time.perf_counter() - t0
        with open(os.path.splitext(out)[0] + '.json') as f:
            summary = json.load(f)
        results['scenes'].append({'size': size, 'tiles': summary['tiles'], **memory,
                                  'scene_tiles_per_second': summary['tiles_per_second'],
                                  'scene_steady_tiles_per_second': summary['steady_tiles_per_second'],
                                  'first_batch_seconds': summary['first_batch_seconds'],
                                  'inference_seconds': summary['inference_seconds'],
                                  'wall_seconds': round(wall, 1)})
        print(f'{size}^2: {summary["tiles"]} tiles, {summary["tiles_per_second"]:.2f} tiles/s, '
              f'peak RSS main {memory["rss_main_mib"]:.0f} MiB, workers {memory["rss_workers_mib"]:.0f} MiB',
              flush=True)
    eval_after, _ = run_child(args, 'eval', checkpoint)
    if args.equality_size:
        a, b = scene(args, args.equality_size)
        equality, _ = run_child(args, 'equality', a, b, checkpoint)
        results['equality'] = {'size': args.equality_size, **equality}
    batch_tps = (eval_before['tiles_per_second'] + eval_after['tiles_per_second']) / 2
    results['batch_eval_tiles_per_second'] = {'before': eval_before['tiles_per_second'],
                                              'after': eval_after['tiles_per_second'], 'mean': batch_tps}
    print()
    print(f'{args.backbone}, {args.device}, {args.threads} threads, batch {args.batch_size}, tile {args.tile}')
    print(f'batch eval (forward only): {batch_tps:.2f} tiles/s (before {eval_before["tiles_per_second"]:.2f}, '
          f'after {eval_after["tiles_per_second"]:.2f})')
    print('| scene | tiles | scene tiles/s (all) | after the 1st batch | vs batch eval | start-up | '
          'peak RSS main | peak RSS worker |')
    print('|---|---|---|---|---|---|---|---|')
    for r in results['scenes']:
        steady = r['scene_steady_tiles_per_second'] or r['scene_tiles_per_second']
        r['vs_batch_eval'] = steady / batch_tps
        print(f'| {r["size"]}^2 | {r["tiles"]} | {r["scene_tiles_per_second"]:.2f} | {steady:.2f} | '
              f'{100 * r["vs_batch_eval"]:.1f} % | {r["first_batch_seconds"]:.1f} s | '
              f'{r["rss_main_mib"]:.0f} MiB | {r["rss_workers_mib"]:.0f} MiB |')
    if 'equality' in results:
        e = results['equality']
        print(f'streaming vs in-memory sliding window at {e["size"]}^2 ({e["tiles"]} tiles): max |logit '
              f'difference| {e["max_abs_logit_diff"]:.3g}, differing mask pixels {e["differing_mask_pixels"]} '
              f'of {e["pixels"]}, logits identical: {e["identical_logits"]}')
    if len(results['scenes']) > 1:
        first, last = results['scenes'][0], results['scenes'][-1]
        ratio = last['rss_main_mib'] / first['rss_main_mib']
        results['rss_ratio_last_first'] = ratio
        print(f'peak RSS ratio {last["size"]}^2 / {first["size"]}^2 (main process): {ratio:.3f}')
    from utils.fileio import atomic_path
    with atomic_path(args.json, '.json') as tmp, open(tmp, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
