"""Scene mode figures: peak memory against scene size, scene vs batch-eval throughput, and
the streaming path's equality with the in-memory sliding window.

    python tools/scene_bench.py                         # 2048^2 and 8192^2, mit_b0, CPU, 2 threads
    python tools/scene_bench.py --sizes 1024 2048 --backbone mit_b2 --device cuda

Three measurements, each in a fresh child process, random weights of --backbone:

- memory: for each --sizes, a synthetic scene pair (tools/make_scene.py, cached under
  --work-dir) through `infer.py --prob`; the child reports its peak resident set (getrusage:
  the main process, and separately the DataLoader worker, whose figure includes the pages it
  shares with the main process it was forked from);
- throughput: in one process with one model, alternately the forward pass alone on random
  (batch, 6, tile, tile) inputs ("batch eval") and the --throughput-size scene (run_scene, as
  infer.py runs it, with 1 reading worker and with none), --rounds times; each scene run is
  compared with the mean of the batch-eval runs just before and after it (the machine's speed
  drifts) and is timed after its first batch (start-up: workers, the model's first call);
  then "paired" runs: before each of the scene's forward calls an extra forward on random
  input of the same shape is timed, so batch eval and the scene are measured batch by batch
  under the same load (the scene's time is its total minus the extra forwards; on a shared
  machine this is the fairer figure);
- equality: a --equality-size scene streamed, against utils.inference.sliding_window_logits on
  the whole scene in memory (same pixels, invalid ones zeroed).

Prints tables and writes JSON (default work_dirs/scene_bench.json).
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
    p.add_argument('--rounds', type=int, default=3, help='alternating rounds of the throughput run')
    p.add_argument('--throughput-size', type=int, default=2048,
                   help='scene side for the scene vs batch-eval comparison (0: skip)')
    p.add_argument('--skip-memory', action='store_true', help='no per-size memory runs')
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
    model = infer.build_model(argparse.Namespace(backbone=args.backbone, checkpoint=checkpoint, onnx=None), device)
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
    model = infer.build_model(argparse.Namespace(backbone=args.backbone, checkpoint=checkpoint, onnx=None), device)
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


def child_throughput(args, a, b, checkpoint):
    """Alternate, in one process and with one model: batch eval, the scene with 1 reading
    worker, batch eval, the scene read in the main process; so that each scene run has a
    batch-eval figure from just before and just after it (the machine's speed drifts)."""
    import torch
    torch.set_num_threads(args.threads)
    import infer
    from datasets.raster import limit_gdal_cache, open_pair
    from utils.inference import resolve_device
    from utils.runtime import keep_freed_memory
    from utils.scene import SceneOptions, SceneOutputs, run_scene
    keep_freed_memory()
    limit_gdal_cache()
    device = resolve_device(args.device)
    model = infer.build_model(argparse.Namespace(backbone=args.backbone, checkpoint=checkpoint, onnx=None), device)
    x = torch.randn(args.batch_size, 6, args.tile, args.tile, device=device)
    out = os.path.join(args.work_dir, 'out_throughput', 'change.tif')
    log = []
    eval_rate(model, x, device, 2)                     # warm-up
    for _ in range(args.rounds):
        for workers in (1, 0):
            log.append(('eval', eval_rate(model, x, device, args.eval_batches)))
            pair = open_pair(a, b, log=lambda *_: None)
            options = SceneOptions(tile=args.tile, batch_size=args.batch_size, num_workers=workers)
            summary = run_scene(model, pair, SceneOutputs(mask=out, prob=out[:-4] + '_prob.tif'), options,
                                device, log=lambda *_: None)
            log.append((f'scene_w{workers}', summary['steady_tiles_per_second']))
    log.append(('eval', eval_rate(model, x, device, args.eval_batches)))
    paired = []
    for workers in (1, 0):
        twin = PairedModel(model, x)
        pair = open_pair(a, b, log=lambda *_: None)
        options = SceneOptions(tile=args.tile, batch_size=args.batch_size, num_workers=workers)
        summary = run_scene(twin, pair, SceneOutputs(mask=out, prob=out[:-4] + '_prob.tif'), options,
                            device, log=lambda *_: None)
        scene_seconds = summary['inference_seconds'] - twin.eval_seconds
        paired.append({'workers': workers, 'tiles': summary['tiles'],
                       'scene_tiles_per_second': summary['tiles'] / scene_seconds,
                       'batch_eval_tiles_per_second': summary['tiles'] / twin.eval_seconds})
    print(json.dumps({'log': log, 'paired': paired}))


class PairedModel:
    """The model, plus before each call an extra forward of the same shape on random input,
    timed: batch eval measured interleaved with the scene, batch by batch, under the same load
    (the scene's own time is its total minus these)."""

    def __init__(self, model, example):
        self.model, self.example, self.eval_seconds = model, example, 0.0

    def __call__(self, x):
        import torch
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.model(self.example[:x.shape[0]]).float()
            if x.device.type == 'cuda':
                torch.cuda.synchronize()
        self.eval_seconds += time.perf_counter() - t0
        return self.model(x)


def eval_rate(model, x, device, batches):
    """Tiles per second of the forward pass alone."""
    import torch
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x).float()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return batches * x.shape[0] / (time.perf_counter() - t0)


def run_child(args, *child_args):
    cmd = [sys.executable, os.path.abspath(__file__), '--_child', *map(str, child_args)]
    for name in ('backbone', 'device', 'threads', 'batch_size', 'tile', 'num_workers', 'eval_batches',
                 'rounds', 'work_dir'):
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


def memory_runs(args, checkpoint):
    """One fresh infer.py process per scene size: peak RSS and tiles/s."""
    rows = []
    for size in args.sizes:
        a, b = scene(args, size)
        out = os.path.join(args.work_dir, f'out_{size}', 'change.tif')
        memory, _ = run_child(args, 'scene', a, b, out, checkpoint)
        with open(os.path.splitext(out)[0] + '.json') as f:
            summary = json.load(f)
        rows.append({'size': size, 'tiles': summary['tiles'], **memory,
                     'tiles_per_second': summary['tiles_per_second'],
                     'steady_tiles_per_second': summary['steady_tiles_per_second'],
                     'first_batch_seconds': summary['first_batch_seconds']})
        print(f'{size}^2: {summary["tiles"]} tiles, peak RSS main {memory["rss_main_mib"]:.0f} MiB, '
              f'worker {memory["rss_workers_mib"]:.0f} MiB', flush=True)
    return rows


def throughput_run(args, checkpoint):
    """Scene tiles/s against the batch-eval runs just before and after each scene run."""
    a, b = scene(args, args.throughput_size)
    measured, _ = run_child(args, 'throughput', a, b, checkpoint)
    log = measured['log']
    rounds = []
    for i, (name, rate) in enumerate(log):
        if name.startswith('scene'):
            reference = (log[i - 1][1] + log[i + 1][1]) / 2
            rounds.append({'variant': name, 'scene_tiles_per_second': rate,
                           'batch_eval_tiles_per_second': reference, 'ratio': rate / reference})
    return {'size': args.throughput_size, 'log': log, 'rounds': rounds, 'paired': measured['paired']}


def report(args, results):
    print(f'\n{args.backbone}, {args.device}, {args.threads} threads, batch {args.batch_size}, '
          f'tile {args.tile} (random weights)')
    if results.get('memory'):
        print('| scene | tiles | peak RSS main | peak RSS worker | tiles/s (after the 1st batch) |')
        print('|---|---|---|---|---|')
        for r in results['memory']:
            print(f'| {r["size"]}^2 | {r["tiles"]} | {r["rss_main_mib"]:.0f} MiB | '
                  f'{r["rss_workers_mib"]:.0f} MiB | {r["steady_tiles_per_second"] or r["tiles_per_second"]:.2f} |')
        if len(results['memory']) > 1:
            first, last = results['memory'][0], results['memory'][-1]
            results['rss_ratio'] = last['rss_main_mib'] / first['rss_main_mib']
            print(f'peak RSS ratio {last["size"]}^2 / {first["size"]}^2: main {results["rss_ratio"]:.3f}, '
                  f'worker {last["rss_workers_mib"] / first["rss_workers_mib"]:.3f}')
    if results.get('throughput'):
        t = results['throughput']
        print(f'\nscene {t["size"]}^2 vs batch eval (mean of the runs just before and after):')
        print('| run | scene tiles/s | batch-eval tiles/s | scene / batch eval |')
        print('|---|---|---|---|')
        for r in t['rounds']:
            print(f'| {r["variant"]} | {r["scene_tiles_per_second"]:.2f} | '
                  f'{r["batch_eval_tiles_per_second"]:.2f} | {100 * r["ratio"]:.1f} % |')
        for r in t['paired']:
            print(f'| paired, {r["workers"]} worker(s) | {r["scene_tiles_per_second"]:.2f} | '
                  f'{r["batch_eval_tiles_per_second"]:.2f} | '
                  f'{100 * r["scene_tiles_per_second"] / r["batch_eval_tiles_per_second"]:.1f} % |')
    if results.get('equality'):
        e = results['equality']
        print(f'\nstreaming vs in-memory sliding window at {e["size"]}^2 ({e["tiles"]} tiles): max |logit '
              f'difference| {e["max_abs_logit_diff"]:.3g}, differing mask pixels {e["differing_mask_pixels"]} '
              f'of {e["pixels"]}, logits identical: {e["identical_logits"]}')


def main(argv=None):
    args = parse_args(argv)
    if args._child:
        children = {'scene': child_scene, 'equality': child_equality, 'throughput': child_throughput,
                    'eval': child_eval}
        children[args._child[0]](args, *args._child[1:])
        return 0
    checkpoint = random_checkpoint(args)
    results = {'backbone': args.backbone, 'device': args.device, 'threads': args.threads,
               'batch_size': args.batch_size, 'tile': args.tile, 'num_workers': args.num_workers}
    if not args.skip_memory:
        results['memory'] = memory_runs(args, checkpoint)
    if args.throughput_size:
        results['throughput'] = throughput_run(args, checkpoint)
    if args.equality_size:
        a, b = scene(args, args.equality_size)
        equality, _ = run_child(args, 'equality', a, b, checkpoint)
        results['equality'] = {'size': args.equality_size, **equality}
    report(args, results)
    from utils.fileio import atomic_path
    with atomic_path(args.json, '.json') as tmp, open(tmp, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
