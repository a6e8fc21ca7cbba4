"""Train FHD with the paper's recipe (FHD_REFERENCE.md §3), in plain PyTorch.

    python train.py --dataset levir                       # 1 GPU / CPU, 80k iters, batch 16
    torchrun --nproc_per_node 4 train.py --dataset levir  # DDP + SyncBN, batch 16 per GPU
    python train.py --dataset levir --resume auto         # continue from the newest checkpoint

Recipe: AdamW (lr 6e-5, betas 0.9/0.999, wd 0.01) with the original's parameter rules
(backbone norms: no decay; decode_head: lr x10), poly lr with linear warmup, pixel-mean
cross-entropy, checkpoints `iter_<N>.pth` every 8000 iterations plus `latest.pth`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import random
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from utils import dist as distu
from utils.checkpoint import (find_resume_checkpoint, get_rng_state, link_atomic,
                              remove_stale_temps, run_mismatches, save_atomic, set_rng_state)
from utils.logger import TrainLogger, memory_mb
from utils.metrics import save_json_atomic
from utils.runtime import keep_freed_memory
from utils.schedule import build_optimizer, build_param_groups, set_lr

IGNORE_INDEX = 255
# The paper's schedule (§3.3, §3.4); presets may shorten it (the demo must run on a laptop CPU).
PAPER_SCHEDULE = dict(max_iters=80000, batch_size=16, lr=6e-5, warmup_iters=1500,
                      checkpoint_interval=8000, eval_interval=0, log_interval=50)
PRESET_SCHEDULES = {
    # `bash train_eval.sh demo` in under 8 minutes on 2 idle CPU cores (0.35 s per iteration on
    # the preset's 64 px crops of its 128 px tiles on the Intel Xeon it was measured on, 0.5-0.8 s
    # on an older AMD EPYC). From scratch (no ImageNet weights offline) the paper's 6e-5 is far too
    # slow; with 3e-4 for 600 iterations some runs had not yet learnt to compare the dates when the
    # lr ran out (test F1 89.7 / 85.7 / 85.0 for seeds 1208 / 1 / 2); 4.5e-4 for 700 iterations
    # gave 92.6 / 92.6 / 93.0 (docs/demo.md). Two checkpoints only: each is 350 MB with the AdamW
    # state.
    # From scratch on purpose (`--pretrained PATH` still loads weights): its lr was tuned from
    # scratch, and the same command must give the same result with or without model_ckpt/.
    'demo': dict(max_iters=700, batch_size=8, lr=4.5e-4, warmup_iters=70, checkpoint_interval=350,
                 eval_interval=0, log_interval=10, pretrained='none'),
}
EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
# fp16 + GradScaler: a non-finite loss makes the scaler skip that step, which is harmless once;
# this many in a row means the run is broken (the scaler cannot fix an overflowing forward).
NONFINITE_PATIENCE = 10


class TrainError(RuntimeError):
    """A one-line, user-facing problem (bad argument, incompatible checkpoint, ...)."""


class NonFiniteLoss(RuntimeError):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--dataset', required=True, help='preset: levir, levir+, s2looking, dsifn, demo, custom')
    p.add_argument('--data-root', help='dataset folder (default: the preset\'s data/<NAME>)')
    p.add_argument('--work-dir', help='default: work_dirs/fhd.<dataset>')
    p.add_argument('--backbone', default='mit_b2', help='mit_b0 .. mit_b5 (the paper: mit_b2)')
    p.add_argument('--max-iters', type=int, help='default: 80000 (demo: shorter)')
    p.add_argument('--batch-size', type=int, help='per process; default 16 (demo: 8)')
    p.add_argument('--lr', type=float, help='base lr of the backbone groups; default 6e-5')
    p.add_argument('--warmup-iters', type=int, help='default 1500 (demo: shorter)')
    p.add_argument('--checkpoint-interval', type=int, help='default 8000')
    p.add_argument('--eval-interval', type=int, help='validate every N iterations, keep best.pth '
                   'by F1; 0 = off (the original never validated); default 0')
    p.add_argument('--log-interval', type=int, help='default 50 (demo: 10)')
    p.add_argument('--pretrained', default=None,
                   help="ImageNet backbone weights (mit_b*.pth, or Hugging Face nvidia/mit-b* "
                        "model.safetensors / pytorch_model.bin); default model_ckpt/<backbone>.pth "
                        "(demo: none); 'none' = from scratch")
    p.add_argument('--resume', nargs='?', const='auto', default=None, metavar='PATH|auto',
                   help='continue from a checkpoint; auto = newest complete one in the work dir')
    p.add_argument('--seed', type=int, default=1208)
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic algorithms (bit-identical reruns on CPU)')
    p.add_argument('--amp', choices=('none', 'bf16', 'fp16'), default='none',
                   help='mixed precision (fp16: CUDA only, with a GradScaler)')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile the model (one process; refused with DDP + SyncBatchNorm)')
    p.add_argument('--no-tf32', action='store_true',
                   help='CUDA: full fp32 matmuls and convolutions (default: TF32 on Ampere and '
                        'newer GPUs, 10-bit mantissa inputs, fp32 accumulation)')
    p.add_argument('--num-workers', type=int, help='data workers per process (default: CPU 0, CUDA 8)')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--drop-path-rate', type=float, default=0.1)
    p.add_argument('--crop-size', type=int, help="training crop K (default: the preset's, e.g. "
                   "256; demo 64); the resize scale follows by the same factor")
    return p.parse_args(argv)


def resolve_defaults(args):
    """Fill unset schedule options from the preset's schedule, else the paper's."""
    schedule = dict(PAPER_SCHEDULE, **PRESET_SCHEDULES.get(args.dataset, {}))
    for key, value in schedule.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.work_dir is None:
        args.work_dir = os.path.join('work_dirs', f'fhd.{args.dataset}')
    if args.pretrained is None:
        args.pretrained = os.path.join('model_ckpt', f'{args.backbone}.pth')
    for key in ('max_iters', 'batch_size', 'checkpoint_interval', 'log_interval'):
        if getattr(args, key) <= 0:
            raise TrainError(f'--{key.replace("_", "-")} must be positive, got {getattr(args, key)}')
    if args.warmup_iters < 0 or args.eval_interval < 0:
        raise TrainError('--warmup-iters and --eval-interval must be >= 0')
    if args.lr <= 0:
        raise TrainError(f'--lr must be positive, got {args.lr}')
    return args


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise TrainError('--device cuda was asked for, but no CUDA device is available')
        return torch.device('cuda', local_rank)
    return torch.device('cpu')


def check_gpu_options(args, device, info) -> None:
    """Refuse option combinations that would misbehave instead of failing late or silently."""
    if args.amp == 'fp16' and device.type != 'cuda':
        raise TrainError('--amp fp16 needs CUDA; use --amp bf16 on CPU')
    if args.compile and info.enabled and device.type == 'cuda':
        # Several CUDA processes mean DDP + SyncBatchNorm: dynamo cannot trace SyncBN's
        # collectives and breaks the graph at each of the decoder's 73 BatchNorms.
        raise TrainError(f'--compile with {info.world_size} processes: torch.compile cannot '
                         f'trace SyncBatchNorm under DDP (a graph break at each of the 73 '
                         f'BatchNorm layers); train multi-GPU without --compile, or compile '
                         f'on one GPU')


def configure_tf32(device, enabled: bool) -> bool:
    """TF32 for fp32 matmuls and convolutions on CUDA (PyTorch enables it for cuDNN
    convolutions only by default). Returns whether it is in effect: Ampere (sm_80) or newer."""
    if device.type != 'cuda':
        return False
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled and torch.cuda.get_device_capability(device)[0] >= 8


def make_scaler(args, device):
    """GradScaler for fp16 autocast (CUDA), else None."""
    if device.type != 'cuda' or args.amp != 'fp16':
        return None
    return torch.amp.GradScaler('cuda')


def configure_determinism(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        # warn_only: CUDA bilinear-upsample backward has no deterministic kernel (§3.4).
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    """Seed of torch's RNG for one training iteration.

    Why reseed every iteration: drop-path and Dropout2d draw from torch's global RNG, and
    so do things whose timing differs between a fresh and a resumed run (DataLoader
    iterator creation, prefetching, validation). Restoring a saved RNG state is therefore
    fragile; making each step's randomness a pure function of (seed, iteration, rank)
    guarantees that a resumed run draws exactly the masks of an uninterrupted one.
    """
    return (seed * 1_000_003 + iteration * 9_973 + rank * 7_919_993) % (2 ** 63 - 1)


def compute_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Pixel cross-entropy, mean over *all* pixels (ignored ones count 0), as the original.

    Computed in the logits' own dtype; only autocast's half-precision logits are cast up to
    float32 (a float64 run must stay float64 for the recorded training-step case)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode='bilinear', align_corners=False)
    return F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX, reduction='none').mean()


def scaled_preset(preset, crop_size):
    """The preset with crop K and resize scale S multiplied by crop_size / K (for small runs)."""
    if not crop_size or crop_size == preset.crop:
        return preset
    if crop_size % 32:
        raise TrainError(f'--crop-size must be a multiple of 32, got {crop_size}')
    scale = max(32, round(preset.scale * crop_size / preset.crop))
    return dataclasses.replace(preset, crop=crop_size, scale=scale)


def check_pretrained(args):
    """A missing backbone file is an error (the original stops too): 80,000 iterations from
    scratch are not what anyone asking for the paper's recipe wants. `none` is deliberate."""
    if args.pretrained.lower() == 'none' or os.path.isfile(args.pretrained):
        return
    raise TrainError(f'--pretrained {args.pretrained}: file not found; download the ImageNet '
                     f'{args.backbone} weights (see model_ckpt/README.md) or pass --pretrained '
                     f'none to train from scratch')


def build_model(args, device, info, log, resuming):
    from models import build_fhd, load_checkpoint, original_key_map
    model = build_fhd(backbone=args.backbone, drop_path_rate=args.drop_path_rate)
    key_map = original_key_map(model)
    if resuming:
        pass  # weights come from the checkpoint
    elif args.pretrained.lower() == 'none':
        log.info('training from scratch (--pretrained none)')
    else:
        load_checkpoint(model, args.pretrained)
        log.info(f'loaded pretrained weights from {args.pretrained}')
    model.to(device)
    if info.enabled and device.type == 'cuda':
        # As the original: SyncBN across GPUs. On CPU/gloo SyncBN is unsupported -> plain BN.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, key_map


def wrap_model(model, args, device, info):
    """DDP (when several processes) and torch.compile around the raw model."""
    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == 'cuda' else None,
            broadcast_buffers=False)  # as the original's MMDistributedDataParallel
    if args.compile:
        net = torch.compile(net)
    return net


def build_train_loader(preset, args, info, start_iter, device):
    """Batches of uint8 pairs (normalised on the device in the loop: a quarter of the bytes)."""
    from datasets import ChangeDetectionDataset, TrainSampler, train_loader
    ds = ChangeDetectionDataset(preset, split='train', train=True, seed=args.seed, raw=True)
    sampler = TrainSampler(len(ds), batch_size=args.batch_size, seed=args.seed, rank=info.rank,
                           world_size=info.world_size, start_iter=start_iter)
    loader = train_loader(ds, sampler, args.batch_size, args.num_workers,
                          pin_memory=device.type == 'cuda')
    return ds, loader


def build_val_dataset(preset, log):
    from datasets import ChangeDetectionDataset, DatasetError
    try:
        return ChangeDetectionDataset(preset, split='val', train=False)
    except DatasetError as e:
        log.info(f'warning: validation disabled: {e}')
        return None


@torch.no_grad()
def evaluate(model, dataset, device, amp='none', num_workers=0):
    """Whole-split metrics of the change class from one int64 confusion matrix."""
    from models import for_inference
    from utils.metrics import ConfusionMatrix
    model = for_inference(model, device=device)   # built from the weights as they are now
    cm = ConfusionMatrix()
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)
    for sample in loader:  # one image at a time: test images keep their own size
        img = sample['img'].unsqueeze(0).to(device)
        label = sample['label']
        with autocast(device, amp):
            logits = model(img)
        logits = F.interpolate(logits.float(), size=tuple(label.shape[-2:]), mode='bilinear',
                               align_corners=False)
        cm.update(logits.argmax(1)[0].cpu(), label)
    return cm.compute()


def autocast(device, amp):
    if amp == 'none':
        return nullcontext()
    dtype = torch.bfloat16 if amp == 'bf16' else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_identity(args, preset, world_size) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint (RUN_FIELDS);
    stored in every checkpoint's meta (eval.py also reads scale/crop from it)."""
    return dict(dataset=args.dataset, data_root=os.path.realpath(preset.root), crop=preset.crop,
                scale=preset.scale, batch_size=args.batch_size, lr=args.lr,
                world_size=world_size, backbone=args.backbone)


def checkpoint_dict(model, optimizer, scaler, done, args, extra_meta, identity=None):
    meta = dict(iter=done, backbone=args.backbone, dataset=args.dataset, seed=args.seed,
                max_iters=args.max_iters, batch_size=args.batch_size, lr=args.lr,
                time=time.strftime('%Y-%m-%d %H:%M:%S'), torch_version=str(torch.__version__),
                CLASSES=('background', 'change'), PALETTE=[[0, 0, 0], [255, 255, 255]])
    meta.update(identity or {}, **extra_meta)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = dict(meta=meta, state_dict=state_dict, optimizer=optimizer.state_dict(),
                rng=get_rng_state())
    if scaler is not None and scaler.is_enabled():
        ckpt['scaler'] = scaler.state_dict()
    return ckpt


def save_training_checkpoint(ckpt, work_dir, done):
    path = save_atomic(ckpt, os.path.join(work_dir, f'iter_{done}.pth'))
    link_atomic(path, os.path.join(work_dir, 'latest.pth'))
    return path


def resolve_resume(args):
    """The checkpoint to continue from, or None (`auto` in an empty work dir: a fresh start)."""
    if not args.resume:
        return None
    if args.resume == 'auto':
        return find_resume_checkpoint(args.work_dir)
    if not os.path.isfile(args.resume):
        raise TrainError(f'--resume {args.resume}: file not found')
    return args.resume


def check_same_run(path, meta, identity) -> None:
    mismatches = run_mismatches(meta, identity)
    if mismatches:
        what = '; '.join(f'{k} was {old!r}, now {new!r}' for k, old, new in mismatches)
        raise TrainError(f'--resume {path}: not the same run ({what}); resume with the same '
                         f'settings, or start a new --work-dir')


def load_resume(path, args, model, optimizer, scaler, log, identity):
    if not os.path.isfile(path):
        raise TrainError(f'--resume {path}: file not found')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise TrainError(f'--resume {path}: cannot read checkpoint ({type(e).__name__}: {e})') from None
    if not isinstance(ckpt, dict) or 'optimizer' not in ckpt or 'meta' not in ckpt:
        raise TrainError(f'--resume {path}: not a training checkpoint of train.py '
                         f'(no optimizer state); use --pretrained for weights only')
    meta = ckpt['meta']
    check_same_run(path, meta, identity)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    optimizer.load_state_dict(ckpt['optimizer'])
    if scaler is not None and 'scaler' in ckpt:
        scaler.load_state_dict(ckpt['scaler'])
    set_rng_state(ckpt.get('rng'))
    log.info(f"resumed from {path} at iteration {meta['iter']}")
    return int(meta['iter']), meta


def train_step(net, optimizer, scaler, img, label, device, amp):
    """One update: forward (optionally autocast), pixel CE, backward, AdamW step."""
    with autocast(device, amp):
        logits = net(img)
    loss = compute_loss(logits, label)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():  # fp16: scaled loss, skip steps with inf grads
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


def validate(model, val_ds, device, args, log, done, best, make_checkpoint):
    """Evaluate the val split, log it, and write best.pth when F1 improves."""
    metrics = dict(evaluate(model, val_ds, device, args.amp), iter=done)
    log.record(mode='val', **metrics)
    log.info(f"val iter {done}: F1 {metrics['f1']:.4f} IoU {metrics['iou']:.4f} "
             f"P {metrics['precision']:.4f} R {metrics['recall']:.4f}")
    if metrics['f1'] > best['f1']:
        best = dict(f1=metrics['f1'], iter=done)
        save_atomic(make_checkpoint(dict(val_metrics=metrics, best_f1=best['f1'], best_iter=done)),
                    os.path.join(args.work_dir, 'best.pth'))
        log.info(f"new best F1 {best['f1']:.4f} at iteration {done} -> best.pth")
    return metrics, best


class LossMonitor:
    """Loss statistics of the current log window, kept on the device (no host sync per step).

    Without a GradScaler any non-finite loss stops the run. With one (fp16) a non-finite loss
    only makes the scaler skip that step: the run stops only after `patience` non-finite
    losses in a row, or when the forward has left non-finite BatchNorm statistics behind
    (which a skipped step does not undo). The logged mean is over the finite losses."""

    def __init__(self, device, patience: int = 0):
        self.patience = patience
        zero = functools.partial(torch.zeros, (), device=device)
        self.raw, self.finite_sum, self.n_finite, self.n = zero(), zero(), zero(), zero()
        self.run, self.max_run = zero(), zero()

    def add(self, loss):
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        self.raw += loss
        self.finite_sum += torch.where(finite, loss, torch.zeros_like(loss))
        self.n_finite += finite
        self.n += 1
        self.run = torch.where(finite, torch.zeros_like(self.run), self.run + 1)
        self.max_run = torch.maximum(self.max_run, self.run)

    def reset(self):
        for t in (self.raw, self.finite_sum, self.n_finite, self.n, self.max_run):
            t.zero_()      # `run` carries over: a streak may span two windows

    def check(self, done: int, last_ckpt, model):
        """(mean finite loss, non-finite count) over all processes; NonFiniteLoss to stop."""
        raw, finite_sum, n_finite, n = distu.all_reduce_sum(
            torch.stack([self.raw, self.finite_sum, self.n_finite, self.n])).tolist()
        streak = int(distu.all_reduce_max(self.max_run).item())
        bad = int(n - n_finite)
        where = f'last good checkpoint: {last_ckpt}' if last_ckpt else 'no checkpoint was written yet'
        if bad and not self.patience:
            raise NonFiniteLoss(f'loss is {raw / n} at iteration {done}; stopping ({where})')
        if self.patience and streak >= self.patience:
            raise NonFiniteLoss(f'loss non-finite in {streak} consecutive iterations up to '
                                f'iteration {done} (GradScaler skipped those steps); stopping ({where})')
        if bad and not buffers_finite(model):
            raise NonFiniteLoss(f'BatchNorm running statistics became non-finite by iteration '
                                f'{done} (a forward overflowed); stopping ({where})')
        return (finite_sum / n_finite if n_finite else raw / n), bad


def buffers_finite(model) -> bool:
    flags = [torch.isfinite(b).all() for b in model.buffers() if b.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def train(args):
    info = distu.init_distributed('cuda' if args.device == 'cuda' or (
        args.device == 'auto' and torch.cuda.is_available()) else 'cpu')
    device = resolve_device(args.device, info.local_rank)
    check_gpu_options(args, device, info)
    keep_freed_memory(device)
    tf32 = configure_tf32(device, not args.no_tf32)
    if args.num_workers is None:
        args.num_workers = min(8, os.cpu_count() or 1) if device.type == 'cuda' else 0

    configure_determinism(args.seed, args.deterministic)

    from datasets import ensure_demo, get_preset
    preset = scaled_preset(get_preset(args.dataset, args.data_root), args.crop_size)
    if args.dataset == 'demo':
        ensure_demo(preset.root)  # race-safe; every rank waits below until the set exists
    distu.barrier()
    if preset.root is None or not os.path.isdir(preset.root):
        raise TrainError(f'--dataset {args.dataset}: folder {preset.root} not found '
                         f'(see README, Datasets; or pass --data-root)')
    identity = run_identity(args, preset, info.world_size)
    resume_path = resolve_resume(args)     # checked before anything is written
    if resume_path is None:
        check_pretrained(args)
    from tqdm import tqdm
    log = TrainLogger(args.work_dir, enabled=info.is_main, echo=tqdm.write)
    if info.is_main:
        remove_stale_temps(args.work_dir)
        log.info(f'train {args.dataset} ({preset.root}) on {device} x{info.world_size}, '
                 f'TF32 {"on" if tf32 else "off"}: '
                 + ' '.join(f'{k}={v}' for k, v in vars(args).items()), echo=False)

    if args.resume == 'auto' and resume_path is None:
        log.info(f'--resume auto: no checkpoint in {args.work_dir}, starting at iteration 0')
    model, key_map = build_model(args, device, info, log, resuming=resume_path is not None)
    optimizer = build_optimizer(build_param_groups(model, args.lr, 0.01, key_map), args.lr)
    scaler = make_scaler(args, device)

    start_iter, meta = (load_resume(resume_path, args, model, optimizer, scaler, log, identity)
                        if resume_path else (0, {}))
    best = dict(f1=meta.get('best_f1', -1.0), iter=meta.get('best_iter'))
    last_ckpt = resume_path if start_iter else None
    if start_iter >= args.max_iters:
        log.info(f'nothing to do: checkpoint is at iteration {start_iter} >= --max-iters {args.max_iters}')
        log.close()
        return dict(iter=start_iter)

    train_ds, loader = build_train_loader(preset, args, info, start_iter, device)
    val_ds = build_val_dataset(preset, log) if args.eval_interval and info.is_main else None
    net = wrap_model(model, args, device, info)
    if info.is_main:
        save_json_atomic(dict(vars(args), world_size=info.world_size, train_samples=len(train_ds)),
                         os.path.join(args.work_dir, 'config.json'))

    schedule = dict(warmup_iters=args.warmup_iters)
    # GPU: read the loss back only every log interval (a .item() is a host sync).
    sync_every = args.log_interval if device.type == 'cuda' else 1
    bar = tqdm(total=args.max_iters, initial=start_iter, disable=not info.is_main, unit='it',
               dynamic_ncols=True, smoothing=0.05, mininterval=0.5 if sys.stderr.isatty() else 30)
    monitor = LossMonitor(device, patience=NONFINITE_PATIENCE if scaler is not None else 0)
    n_sum, t_last, last_val, last_loss = 0, time.time(), None, None
    t_start = time.time()
    net.train()
    from datasets import normalize_batch
    data_iter = iter(loader)
    data_time = 0.0     # seconds spent waiting for batches in this log window
    try:
        for it in range(start_iter, args.max_iters):
            torch.manual_seed(iteration_seed(args.seed, it, info.rank))
            t_wait = time.perf_counter()
            batch = next(data_iter)
            data_time += time.perf_counter() - t_wait
            img = normalize_batch(batch['img'], device, batch['valid_hw'])
            label = batch['label'].to(device, non_blocking=True).long()
            lr = set_lr(optimizer, it, args.lr, args.max_iters, **schedule)
            loss = train_step(net, optimizer, scaler, img, label, device, args.amp)
            monitor.add(loss)
            n_sum += 1
            done = it + 1
            bar.update(1)

            save_now = done % args.checkpoint_interval == 0 or done == args.max_iters
            eval_now = bool(args.eval_interval) and (done % args.eval_interval == 0 or done == args.max_iters)
            log_now = done % args.log_interval == 0 or done == args.max_iters
            if log_now or save_now or eval_now or done % sync_every == 0:
                mean_loss, nonfinite = monitor.check(done, last_ckpt, model)
            if log_now:
                now = time.time()
                last_loss = mean_loss
                rec = dict(mode='train', iter=done, loss=round(mean_loss, 6), lr=lr,
                           time=round((now - t_last) / n_sum, 4), data_time=round(data_time / n_sum, 4),
                           memory=round(memory_mb(device), 1))
                if nonfinite:       # steps the GradScaler skipped in this window
                    rec['nonfinite_losses'] = nonfinite
                log.record(**rec)
                log.info(f"iter {done}/{args.max_iters} loss {mean_loss:.4f} lr {lr:.3e} "
                         f"time {rec['time']:.3f}s/it mem {rec['memory']:.0f}MiB", echo=False)
                bar.set_postfix(loss=f'{mean_loss:.4f}', lr=f'{lr:.2e}', refresh=False)
                monitor.reset()
                n_sum, t_last, data_time = 0, now, 0.0
            if eval_now:
                if info.is_main and val_ds is not None:
                    make_ckpt = functools.partial(checkpoint_dict, model, optimizer, scaler, done,
                                                  args, identity=identity)
                    last_val, best = validate(model, val_ds, device, args, log, done, best, make_ckpt)
                distu.barrier()
            if save_now:
                if info.is_main:
                    extra = dict(best_f1=best['f1'], best_iter=best['iter'])
                    last_ckpt = save_training_checkpoint(
                        checkpoint_dict(model, optimizer, scaler, done, args, extra, identity),
                        args.work_dir, done)
                    log.info(f'saved {last_ckpt}', echo=False)
                distu.barrier()
    except NonFiniteLoss as e:
        log.info(f'error: {e}', echo=False)
        raise
    finally:
        bar.close()

    elapsed = time.time() - t_start
    summary = dict(dataset=args.dataset, backbone=args.backbone, iters=args.max_iters,
                   trained_iters=args.max_iters - start_iter, final_loss=last_loss,
                   train_time_s=round(elapsed, 1),
                   s_per_iter=round(elapsed / max(1, args.max_iters - start_iter), 4),
                   world_size=info.world_size, checkpoint=os.path.join(args.work_dir, 'latest.pth'))
    if last_val is not None:
        summary.update(val=last_val, best=best)
    if info.is_main:
        save_json_atomic(summary, os.path.join(args.work_dir, 'final_metrics.json'))
        log.info(f"done: {args.max_iters} iterations, final loss {last_loss:.4f}, "
                 f"{summary['s_per_iter']:.3f} s/it; checkpoint {summary['checkpoint']}")
    log.close()
    return summary


def user_errors():
    """Exception classes that mean bad input: printed as one line, exit status 2."""
    errors = [TrainError]
    try:
        from datasets import DatasetError
        errors.append(DatasetError)
    except ImportError:
        pass
    try:
        from models import CheckpointError
        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv=None):
    try:
        args = resolve_defaults(parse_args(argv))
        train(args)
    except NonFiniteLoss as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        print('interrupted; resume with --resume auto', file=sys.stderr)
        return 130
    except user_errors() as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    finally:
        distu.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
