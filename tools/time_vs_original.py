"""Time the ORIGINAL FHD code (ZSVOS/FHD @ f1f55a1, mmseg-0.11 fork + mmcv 1.3.8 pure Python)
side by side with this project's model. Needs a directory with the original and its shims,
assembled as docs/performance.md ("The original, rebuilt and timed here") describes.

    python tools/time_vs_original.py --original-root DIR               # eval + train, 7 repeats
    python tools/time_vs_original.py --original-root DIR --no-train    # eval only (or --no-eval)

One process, 2 threads, glibc 'keep freed memory' (utils.runtime.keep_freed_memory) for all
variants alike. Same weights everywhere: the original model's state_dict (random init, BN
affine/buffers perturbed so the BN folds are exercised), converted into ours with
models.checkpoint.convert_state_dict. Batch 8, 256x256, fixed seed. Variants alternate
round-robin: 2 warmup rounds, then --repeats rounds; medians and ratios vs the original.
Before timing, the outputs are compared with the original's (max|diff| / max|ref|).
"""
import argparse
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def original_root():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--original-root', default=os.environ.get('FHD_ORIGINAL_ROOT'))
    root = p.parse_known_args()[0].original_root
    if not root or not os.path.isfile(os.path.join(root, 'FHD/local_configs/FHD/fhd.levir.py')):
        sys.exit(f'error: --original-root {root}: expected a directory with FHD/ (the original '
                 'repository), mmcv_src/, site/ and shims/ (see docs/performance.md)')
    return root


ROOT = original_root()
sys.path.insert(0, os.path.join(REPO, 'tools'))
import original_env  # noqa: E402
original_env.setup(ROOT)
sys.path.insert(0, REPO)            # ours first: `models`, `utils`, `benchmark`

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.metrics import save_json_atomic  # noqa: E402
from utils.runtime import keep_freed_memory  # noqa: E402

KEPT = keep_freed_memory()
torch.set_num_threads(2)

from mmcv import Config  # noqa: E402
from mmcv.runner import build_optimizer as mmcv_build_optimizer  # noqa: E402
from mmseg.models import build_segmentor  # noqa: E402

import benchmark as our_bench  # noqa: E402  (benchmark.py: train_step_fn)
from models import build_fhd, for_inference  # noqa: E402
from models.checkpoint import convert_state_dict  # noqa: E402
from utils.schedule import build_optimizer as our_build_optimizer  # noqa: E402

CONFIG = os.path.join(ROOT, 'FHD/local_configs/FHD/fhd.levir.py')
SIZE, BATCH, SEED = 256, 8, 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--original-root', default=ROOT,
                   help='the original and its shims (or $FHD_ORIGINAL_ROOT)')
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--no-eval', action='store_true')
    p.add_argument('--no-train', action='store_true')
    p.add_argument('--no-orig-fused', action='store_true',
                   help="skip the extra 'original model + our fused AdamW' training variant")
    p.add_argument('--json', default=os.path.join(REPO, 'work_dirs/time_vs_original.json'))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- original side
CFG = Config.fromfile(CONFIG)
CFG.model.pretrained = None   # ./model_ckpt/mit_b2.pth is not in the repo; weights are random


def build_original(state=None, train=False):
    model = build_segmentor(CFG.model, train_cfg=CFG.get('train_cfg'), test_cfg=CFG.get('test_cfg'))
    model.init_weights()
    if state is not None:
        model.load_state_dict(state, strict=True)
    if train:   # TRAIN_STEP_CASE.md: drop-path off via the backbone's own method, Dropout2d p=0
        model.backbone.backbone.reset_drop_path(0.0)
        model.decode_head.dropout.p = 0.0
    return model.train(train)


def img_metas(batch):
    shape = (SIZE, SIZE, 3)
    return [dict(img_shape=shape, ori_shape=shape, pad_shape=shape, scale_factor=1.0, flip=False,
                 flip_direction=None) for _ in range(batch)]


def base_state():
    """The original's freshly initialised weights, with BN affine params and running stats
    perturbed (fixed seed) so that eval-mode BN is not the identity."""
    torch.manual_seed(SEED)
    model = build_original()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return {k: v.clone() for k, v in model.state_dict().items()}


def original_train_step(model, optimizer, x, gt, metas):
    """What mmcv's IterBasedRunner does per iteration, minus data loading, the LR hook and
    logging: model.train_step's forward_train + _parse_losses, then OptimizerHook (zero_grad,
    backward, step; no grad clipping in this config)."""
    def step():
        losses = model.forward_train(x, metas, gt)
        loss, _log_vars = model._parse_losses(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


# ----------------------------------------------------------------------------- our side
def build_ours(orig_state, fold, train=False):
    model = build_fhd('mit_b2', fold_decoder=fold, drop_path_rate=0.0 if train else 0.1)
    converted, kind, dropped, _ = convert_state_dict(orig_state, model, 'original state_dict')
    assert kind == 'original', kind
    model.load_state_dict(converted, strict=True)
    if train:
        model.decoder.dropout.p = 0.0
    return model.train(train)


# ----------------------------------------------------------------------------- helpers
def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def rel_l2(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def round_robin(fns, repeats, warmup, label):
    times = {k: [] for k in fns}
    for r in range(warmup + repeats):
        last = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            last[name] = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(last[name])
        tag = 'warmup' if r < warmup else f'repeat {r - warmup + 1}/{repeats}'
        print(f'  [{label}] round {r + 1} ({tag}): '
              + ', '.join(f'{k} {v:.2f}s' for k, v in last.items()), flush=True)
    return times


def summarize(kind, times, baseline):
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k, v in times.items():
        rows.append(dict(kind=kind, variant=k, batch=BATCH, median_s=med[k], min_s=min(v),
                         max_s=max(v), times_s=v, pairs_per_s=BATCH / med[k],
                         speedup_vs_original=med[baseline] / med[k]))
    return rows


# ----------------------------------------------------------------------------- sections
def bench_eval(args, state, x, equiv):
    orig = build_original(state).eval()
    metas = img_metas(BATCH)
    ref = build_ours(state, fold=False).eval()
    folded = build_ours(state, fold=True).eval()
    inf = for_inference(build_ours(state, fold=True))

    with torch.no_grad():
        out_o = orig.encode_decode(x, metas)
        for name, net in (('ours reference (fold_decoder=False)', ref),
                          ('ours folded (fold_decoder=True)', folded),
                          ('ours inference module', inf)):
            out = net(x)
            equiv[f'eval: {name} vs original'] = dict(max_rel=rel_err(out, out_o),
                                                      rel_l2=rel_l2(out, out_o))
    fns = {
        'original encode_decode': lambda: _no_grad(orig.encode_decode, x, metas),
        'ours reference': lambda: _no_grad(ref, x),
        'ours inference': lambda: _no_grad(inf, x),
    }
    times = round_robin(fns, args.repeats, args.warmup, 'eval')
    return summarize('eval', times, 'original encode_decode')


def _no_grad(fn, *a):
    with torch.no_grad():
        return fn(*a)


def bench_train(args, state, x, y, equiv):
    gt = y[:, None]
    metas = img_metas(BATCH)
    cpu = torch.device('cpu')
    fns = {}

    orig = build_original(state, train=True)
    opt = mmcv_build_optimizer(orig, CFG.optimizer)    # DefaultOptimizerConstructor, paramwise_cfg
    equiv['train: original optimizer'] = dict(type=type(opt).__name__, groups=len(opt.param_groups),
                                              defaults={k: opt.defaults[k] for k in
                                                        ('lr', 'betas', 'weight_decay', 'foreach',
                                                         'fused') if k in opt.defaults})
    with torch.no_grad():   # train-mode logits (batch-stat BN) for the equivalence record
        out_o = orig.encode_decode(x, metas)
    fns['original (mmcv AdamW groups)'] = original_train_step(orig, opt, x, gt, metas)

    if not args.no_orig_fused:
        orig2 = build_original(state, train=True)
        opt2 = our_build_optimizer(list(orig2.parameters()), lr=6e-5)
        fns['original + our fused AdamW'] = original_train_step(orig2, opt2, x, gt, metas)

    for name, fold in (('ours reference', False), ('ours folded', True)):
        model = build_ours(state, fold=fold, train=True)
        with torch.no_grad():
            out = model(x)
        equiv[f'train-mode forward: {name} vs original'] = dict(max_rel=rel_err(out, out_o),
                                                                rel_l2=rel_l2(out, out_o))
        fns[name] = our_bench.train_step_fn(model, model, x, y, None, cpu)

    times = round_robin(fns, args.repeats, args.warmup, 'train')
    return summarize('train', times, 'original (mmcv AdamW groups)')


def main(argv=None):
    args = parse_args(argv)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, keep_freed_memory={KEPT}, '
          f'batch {BATCH}, {SIZE}x{SIZE}, repeats {args.repeats}, warmup {args.warmup}', flush=True)
    t0 = time.perf_counter()
    state = base_state()
    g = torch.Generator().manual_seed(123)
    x = torch.randn(BATCH, 6, SIZE, SIZE, generator=g)
    y = (torch.rand(BATCH, SIZE, SIZE, generator=g) > 0.8).long()
    print(f'built weights in {time.perf_counter() - t0:.1f}s', flush=True)

    equiv, rows = {}, []
    if not args.no_eval:
        rows += bench_eval(args, state, x, equiv)
    if not args.no_train:
        rows += bench_train(args, state, x, y, equiv)

    print('\nEquivalence vs the original (max|diff|/max|ref|, rel L2):')
    for k, v in equiv.items():
        if 'max_rel' in v:
            print(f'  {k:55s} {v["max_rel"]:.2e}  {v["rel_l2"]:.2e}')
        else:
            print(f'  {k:55s} {v}')

    print(f'\nMedians over {args.repeats} repeats (batch {BATCH}, {SIZE}x{SIZE}, '
          f'{torch.get_num_threads()} threads):')
    hdr = f"{'kind':6} {'variant':32} {'median s':>9} {'min s':>8} {'max s':>8} {'pairs/s':>8} {'vs orig':>8}"
    print(hdr)
    print('-' * len(hdr))
    for r in rows:
        print(f"{r['kind']:6} {r['variant']:32} {r['median_s']:9.3f} {r['min_s']:8.3f} "
              f"{r['max_s']:8.3f} {r['pairs_per_s']:8.2f} {r['speedup_vs_original']:7.2f}x")

    out = dict(torch=torch.__version__, python=platform.python_version(),
               threads=torch.get_num_threads(), keep_freed_memory=KEPT, batch=BATCH, size=SIZE,
               repeats=args.repeats, warmup=args.warmup, equivalence=equiv, rows=rows,
               note='speedup_vs_original = original median / variant median (>1: faster)')
    save_json_atomic(out, args.json)
    print(f'\nwrote {args.json}')


if __name__ == '__main__':
    main()
