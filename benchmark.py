"""Speed, memory and correctness benchmark of FHD in one process.

    python benchmark.py                      # CPU: 2 threads, the README's table
    python benchmark.py --device cuda        # GPU: adds bf16 / channels_last / compile variants
    python benchmark.py --quick              # smaller, for a smoke run

Variants are run alternately (round robin), so that clock drift and other load hit all of them
alike; the median of the repeats is reported. Every variant's output is compared with the fp32
reference path on the same weights and input, so a speed-up never silently costs correctness.
Results are printed as a table and written as JSON (--json, default work_dirs/benchmark.json).
"""
import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from models import build_fhd, for_inference, model_cost
from utils.metrics import save_json_atomic
from utils.runtime import keep_freed_memory
from utils.schedule import build_optimizer

PAPER_ITERS, PAPER_BATCH = 80_000, 16


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--eval-batches', type=int, nargs='+', default=[1, 8, 32])
    p.add_argument('--train-batch', type=int, default=None, help='default 8 on CPU, 16 on GPU')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--workers', type=int, nargs='+', default=[2])
    p.add_argument('--no-memory', action='store_true', help='skip the per-variant peak-memory runs')
    p.add_argument('--no-data', action='store_true', help='skip the data-pipeline measurement')
    p.add_argument('--no-train', action='store_true', help='skip the training-step measurement')
    p.add_argument('--quick', action='store_true', help='batch 1/8 eval, 3 repeats')
    p.add_argument('--default-malloc', action='store_true',
                   help="keep glibc's default of returning large blocks to the kernel (the "
                        'programs keep freed memory for reuse, see utils/runtime.py)')
    p.add_argument('--json', default='work_dirs/benchmark.json')
    p.add_argument('--_memory-probe', dest='memory_probe', default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def pick_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        sys.exit('error: --device cuda: no CUDA device is available')
    return torch.device(name)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def rel_err(x, ref):
    x, ref = x.float(), ref.float()
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def round_robin(fns, device, repeats, warmup):
    """Run each named callable `warmup` times, then `repeats` rounds alternating; median seconds."""
    times = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            dt, _ = timed(fn, device)
            if r >= warmup:
                times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_ceiling(device, dtype):
    """Practical FLOP/s ceiling of this machine: a large square matrix product."""
    n = 4096 if device.type == 'cpu' else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    runs = 3 if device.type == 'cpu' else 20
    t = round_robin({'mm': lambda: a @ b}, device, runs, 1)['mm']
    return 2 * n ** 3 / t


def make_model(device, fold=True, train=False, seed=0):
    """mit_b2 FHD; in training without drop-path and dropout, so that the variants' outputs can
    be compared (compiled code draws other random masks; both cost next to nothing)."""
    torch.manual_seed(seed)
    model = build_fhd('mit_b2', fold_decoder=fold, drop_path_rate=0.0 if train else 0.1)
    if train:
        model.decoder.dropout.p = 0.0
    return model.to(device).train(train)


def training_variants(device):
    """name -> (decoder fold, autocast dtype, torch.compile) of the training forward."""
    out = {'reference fp32': (False, None, False), 'folded fp32': (True, None, False)}
    if device.type == 'cuda':
        out['folded bf16'] = (True, torch.bfloat16, False)
        out['folded bf16+compile'] = (True, torch.bfloat16, True)
    return out


def eval_variants(device):
    """name -> builder(base_state, device, size) of an eval callable x -> logits."""
    out = {'reference fp32': eval_reference, 'inference fp32': eval_inference}
    if device.type == 'cpu' and onnxruntime_available():
        out['onnxruntime fp32'] = eval_onnxruntime
    if device.type == 'cuda':
        out['inference bf16'] = functools.partial(eval_inference, amp=torch.bfloat16)
        out['inference bf16+compile'] = functools.partial(eval_inference, amp=torch.bfloat16,
                                                          compile_=True)
    return out


def loaded(base_state, device, fold=True, train=False):
    model = make_model(device, fold, train=train)
    model.load_state_dict(base_state)
    return model


def no_grad_call(net, amp=None, device=None):
    def run(x):
        with torch.inference_mode(), autocast(device or x.device, amp):
            return net(x)
    return run


def eval_reference(base_state, device, size):
    return no_grad_call(loaded(base_state, device, fold=False).eval(), device=device)


def eval_inference(base_state, device, size, amp=None, compile_=False):
    net = for_inference(loaded(base_state, device), device=device)
    return no_grad_call(torch.compile(net) if compile_ else net, amp, device)


def onnxruntime_available():
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def eval_onnxruntime(base_state, device, size, threads=None):
    """The exported inference model (tools/export.py's graph) in ONNX Runtime's CPU provider."""
    import os
    import tempfile
    import onnxruntime as ort
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tools'))
    import export as export_tool
    sys.path.pop(0)
    net = for_inference(loaded(base_state, device), device='cpu', kernels='plain',
                        fold_attention=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'fhd.onnx')
        export_tool.export_onnx(net, torch.zeros(1, 6, size, size), path, opset=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])

    def run(x):
        return torch.from_numpy(session.run(None, {'pair': x.numpy()})[0])
    return run


def autocast(device, dtype):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def bench_eval(args, device, base_state, flops):
    rows = []
    builders = eval_variants(device)
    runners = {name: build(base_state, device, args.size) for name, build in builders.items()}
    for batch in args.eval_batches:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 6, args.size, args.size, generator=g).to(device)
        ref_out = runners['reference fp32'](x)
        errs = {name: rel_err(run(x), ref_out) for name, run in runners.items()}
        med = round_robin({name: functools.partial(run, x) for name, run in runners.items()},
                          device, args.repeats, args.warmup)
        for name in runners:
            f = (flops['reference'] if name.startswith('reference') else flops['inference']) * batch
            rows.append(dict(kind='eval', variant=name, batch=batch, median_s=med[name],
                             pairs_per_s=batch / med[name], achieved_flops=f / med[name],
                             rel_err_vs_ref=errs[name]))
    return rows


def train_step_fn(model, net, x, y, amp, device):
    opt = build_optimizer(list(model.parameters()), lr=6e-5)

    def step():
        with autocast(device, amp):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bench_train(args, device, base_state, flops):
    batch = args.train_batch or (8 if device.type == 'cpu' else 16)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(batch, 6, args.size, args.size, generator=g).to(device)
    y = (torch.rand(batch, args.size, args.size, generator=g) > 0.8).long().to(device)
    fns, errs, ref_out = {}, {}, None
    for name, (fold, amp, compile_) in training_variants(device).items():
        model = loaded(base_state, device, fold, train=True)
        net = torch.compile(model) if compile_ else model
        with autocast(device, amp):
            out = net(x).detach()
        ref_out = out if ref_out is None else ref_out
        errs[name] = rel_err(out, ref_out)
        fns[name] = train_step_fn(model, net, x, y, amp, device)
    med = round_robin(fns, device, args.repeats, args.warmup)
    rows = []
    for name in fns:
        # training step ~ 3x the forward FLOPs (forward + two backward matmuls)
        f = 3 * (flops['reference'] if name.startswith('reference') else flops['folded']) * batch
        pps = batch / med[name]
        rows.append(dict(kind='train', variant=name, batch=batch, median_s=med[name], pairs_per_s=pps,
                         achieved_flops=f / med[name], rel_err_vs_ref=errs[name],
                         projected_full_schedule_h=PAPER_ITERS * PAPER_BATCH / pps / 3600))
    return rows


def bench_data(args):
    """The training data pipeline alone (datasets.bench): 256 px PNG tiles and DSIFN's 512 px
    JPEGs cropped to 384; per-stage profile and pairs/s with 1 worker and with --workers."""
    from datasets.bench import print_case, run_case
    rows = []
    for case in ('levir', 'dsifn'):
        r = run_case(case, sorted({1, *args.workers}), n_batches=5 if args.quick else 20,
                     batch_size=16, profile_pairs=50 if args.quick else 200)
        print_case(r)
        for f in r['loaders']:
            rows.append(dict(kind='data', variant=f"{r['size']}->{r['crop']}px {r['img_suffix'][1:]}",
                             stages_ms=r['stages_ms'], **f))
    return rows


def peak_rss_mib():
    """Peak resident set of this process. VmHWM belongs to the address space, so it starts afresh
    in an exec'd child; ru_maxrss would carry over the parent's peak on Linux."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss_mib():
    """Start the peak over from the current resident set (Linux: clear_refs 5 resets VmHWM), so
    that a run's peak is not hidden below the peak of building the model; returns the new
    baseline. Where the reset is not possible, the old peak stays the baseline (an underestimate
    of the run's growth)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass
    return peak_rss_mib()


def memory_probe(args, device, spec):
    """Run in a child process: one variant, report its peak memory (MiB)."""
    kind, name, batch = spec.split('|')
    batch = int(batch)
    base_state = make_model(device).state_dict()
    x = torch.randn(batch, 6, args.size, args.size, device=device)
    if kind == 'eval':
        run = eval_variants(device)[name](base_state, device, args.size)
    else:
        fold, amp, compile_ = training_variants(device)[name]
        model = loaded(base_state, device, fold, train=True)
        net = torch.compile(model) if compile_ else model
        y = torch.zeros(batch, args.size, args.size, dtype=torch.long, device=device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    base_rss = reset_peak_rss_mib()
    if kind == 'eval':
        run(x)
    else:
        with autocast(device, amp):
            F.cross_entropy(net(x), y).backward()
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:  # growth of the resident set over the model+input baseline
        peak = peak_rss_mib() - base_rss
    print(json.dumps({'peak_mib': peak}))


def measure_memory(args, rows):
    for row in rows:
        if row['kind'] not in ('eval', 'train'):
            continue
        spec = f"{row['kind']}|{row['variant']}|{row['batch']}"
        cmd = [sys.executable, __file__, '--device', args.device, '--threads', str(args.threads),
               '--size', str(args.size), '--_memory-probe', spec]
        if args.default_malloc:
            cmd.append('--default-malloc')
        out = subprocess.run(cmd, capture_output=True, text=True)
        try:
            row['peak_mib'] = json.loads(out.stdout.strip().splitlines()[-1])['peak_mib']
        except (IndexError, ValueError, KeyError):
            row['peak_mib'] = None


def print_table(rows, ceiling, device, kept):
    malloc = 'freed memory kept for reuse' if kept else 'default malloc'
    print(f'\nFHD benchmark on {device_name(device)}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, {malloc}; '
          f'matmul ceiling {ceiling / 1e9:.1f} GFLOP/s')
    hdr = f"{'kind':6} {'variant':24} {'batch':>5} {'median s':>9} {'pairs/s':>9} {'GFLOP/s':>8} " \
          f"{'%ceil':>6} {'rel err':>9} {'peak MiB':>9}"
    print(hdr)
    print('-' * len(hdr))
    for r in rows:
        if r['kind'] == 'data':
            print(f"{'data':6} {r['variant']:24} {'w=' + str(r['workers']):>5} {'':>9} {r['pairs_per_s']:9.1f}")
            continue
        mem = f"{r['peak_mib']:9.0f}" if r.get('peak_mib') is not None else f"{'-':>9}"
        print(f"{r['kind']:6} {r['variant']:24} {r['batch']:5d} {r['median_s']:9.4f} {r['pairs_per_s']:9.2f} "
              f"{r['achieved_flops'] / 1e9:8.1f} {100 * r['achieved_flops'] / ceiling:6.1f} "
              f"{r['rel_err_vs_ref']:9.2e} {mem}")
    for kind in ('eval', 'train'):
        by = {}
        for r in rows:
            if r['kind'] == kind:
                by.setdefault(r['batch'], {})[r['variant']] = r['median_s']
        for b, v in by.items():
            ref = v.get('reference fp32')
            for name, t in v.items():
                if ref and name != 'reference fp32':
                    print(f"{kind} batch {b}: {name} is {ref / t:.2f}x the reference path")
    for r in rows:
        if r['kind'] == 'train':
            print(f"projected paper schedule ({PAPER_ITERS} x {PAPER_BATCH} pairs) with {r['variant']}: "
                  f"{r['projected_full_schedule_h']:.1f} h")


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return 'cpu'


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    kept = False if args.default_malloc else keep_freed_memory(device)
    if args.memory_probe:
        return memory_probe(args, device, args.memory_probe)
    if args.quick:
        args.eval_batches, args.repeats, args.warmup = [1, 8], 3, 1
    base_state = make_model(device).state_dict()
    cost = model_cost(build_fhd('mit_b2'), size=(args.size, args.size))   # counts every path
    flops = {k: cost[f'flops_{k}'] for k in ('reference', 'folded', 'inference')}
    ceiling = matmul_ceiling(device, torch.float32 if device.type == 'cpu' else torch.bfloat16)
    rows = bench_eval(args, device, base_state, flops)
    if not args.no_train:
        rows += bench_train(args, device, base_state, flops)
    if not args.no_data:
        rows += bench_data(args)
    if not args.no_memory:
        measure_memory(args, rows)
    print_table(rows, ceiling, device, kept)
    result = dict(device=device_name(device), torch=torch.__version__, threads=torch.get_num_threads(),
                  size=args.size, keep_freed_memory=kept, matmul_ceiling_flops=ceiling,
                  params=cost['params'],
                  flops_per_pair=flops, rows=rows)
    save_json_atomic(result, args.json)
    print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
