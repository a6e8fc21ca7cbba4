"""The original's recorded reference cases on any device (used by tools/gpu_check.sh and the tests).

    python tools/reference_check.py [--device cuda] [--skip-train-step]

1. Eval case (`fhd_public_case.npz`): fill-rule weights on the original key names, converted
   with the checkpoint converter, fp32 forward; head and final logits against the original's
   (acceptance: max |new - ref| / max |ref| < 1e-4).
2. Training-step case (`fhd_train_step_public.npz`, TRAIN_STEP_CASE.md): two AdamW steps at
   iterations 2000 and 2001 through train.py's own functions (build_param_groups,
   build_optimizer, set_lr, train_step) with drop-path and dropout 0, in float64 (the tight
   tolerances) and float32 (the coarse ones); every recorded quantity is compared.
Exit status 1 on any mismatch.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from models import build_fhd, original_key_map  # noqa: E402
from models.checkpoint import convert_state_dict  # noqa: E402
from models.reference_case import filled_original_state_dict, load_manifest  # noqa: E402

FIXTURES = ROOT / 'tests' / 'fixtures'
MANIFEST = FIXTURES / 'fhd_mit_b2_state_dict.json'
EVAL_CASE = FIXTURES / 'fhd_public_case.npz'
TRAIN_STEP_CASE = FIXTURES / 'fhd_train_step_public.npz'
NULL_GRAD = 1e-10          # |float64 grad| below this = an exactly-zero true gradient (the case's rule)
ABSENT_ORIGINAL = ('decode_head.conv_seg.',)   # unused in the original's forward, not in this model


def filled_model(seed, drop_path_rate=0.1):
    """mit_b2 FHD with fill-rule weights (filled on the ORIGINAL names, then converted)."""
    model = build_fhd('mit_b2', drop_path_rate=drop_path_rate)
    converted, _, _, _ = convert_state_dict(
        filled_original_state_dict(load_manifest(MANIFEST), seed), model)
    model.load_state_dict(converted, strict=True)
    return model


def rel_max(new, ref):
    """max |new - ref| / max |ref| (the cases' measure for maps and BN statistics)."""
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(new - ref).max() / np.abs(ref).max())


# ------------------------------------------------------------------------------------ eval case

def eval_case(device):
    """[(name, rel err, ok)] of the recorded eval-mode case."""
    case = np.load(EVAL_CASE)
    model = filled_model(seed=1).eval().to(device)
    x = torch.from_numpy(case['input']).to(device)
    with torch.no_grad():
        head, logits = model.forward_head(x).cpu(), model(x).cpu()
    out = []
    for name, value in (('head_logits', head), ('logits', logits)):
        err = rel_max(value.numpy(), case[name])
        out.append((name, err, err < 1e-4))
    return out


# ------------------------------------------------------------------------- training-step case

def parse_slice(text):
    """'[:, 0:64]' -> (slice(None), slice(0, 64)); None -> the whole tensor."""
    if text is None:
        return ()
    parts = []
    for item in text.strip('[]').split(','):
        lo, _, hi = item.strip().partition(':')
        parts.append(slice(int(lo) if lo else None, int(hi) if hi else None))
    return tuple(parts)


def npz_key(name):
    return name.replace('.', '__')


def load_train_step_case(path=TRAIN_STEP_CASE):
    d = np.load(path)
    case = {k: d[k] for k in d.files}
    case['meta'] = json.loads(str(d['meta_json']))
    case['groups'] = json.loads(str(d['groups_json']))
    return case


def run_train_step_case(case, dtype=torch.float64, device='cpu'):
    """Two training steps exactly as train.py takes them; returns what the case recorded.

    Names in the result are the ORIGINAL ones (through the converter's key map)."""
    import train
    from utils.schedule import build_optimizer, build_param_groups, set_lr

    device = torch.device(device)
    meta = case['meta']
    opt_cfg, lr_cfg = meta['config']['optimizer'], meta['config']['lr_config']
    model = filled_model(meta['seed'], drop_path_rate=0.0)
    model.decoder.dropout.p = 0.0          # as the recording (identity, like drop-path 0)
    model.to(device=device, dtype=dtype).train()
    key_map = original_key_map(model)
    base_lr, max_iters = opt_cfg['lr'], meta['max_iters']
    optimizer = build_optimizer(build_param_groups(model, base_lr, opt_cfg['weight_decay'], key_map),
                                base_lr, opt_cfg['weight_decay'], tuple(opt_cfg['betas']))
    params = dict(model.named_parameters())
    filled = {n: p.detach().to(torch.float64).cpu().clone() for n, p in params.items()}
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}

    seen = {}
    hooks = [model.register_forward_hook(lambda m, i, o: seen.__setitem__('logits', o.detach())),
             model.decoder.register_forward_hook(      # the classifier's output
                 lambda m, i, o: seen.__setitem__('head_out', o.detach()))]
    img = torch.from_numpy(case['input']).to(device=device, dtype=dtype)
    label = torch.from_numpy(case['label']).to(device)
    rec = dict(weight_decay={key_map[n]: group_of[id(p)]['weight_decay'] for n, p in params.items()},
               with_grad={}, grads={}, grad_norms={}, delta_norms={}, lr={}, loss={}, acc={},
               logits={}, bn={})
    try:
        for step, it in enumerate(meta['iterations'], start=1):
            set_lr(optimizer, it, base_lr, max_iters, warmup_iters=lr_cfg['warmup_iters'],
                   warmup_ratio=lr_cfg['warmup_ratio'], power=lr_cfg['power'],
                   min_lr=lr_cfg['min_lr'])
            rec['lr'][step] = {key_map[n]: group_of[id(p)]['lr'] for n, p in params.items()}
            loss = train.train_step(model, optimizer, None, img, label, device, 'none')
            rec['loss'][step] = loss.item()
            logits = seen['logits'].to(torch.float64).cpu()
            rec['logits'][step] = logits.numpy()
            rec['acc'][step] = 100.0 * (logits.argmax(1) == label.cpu()).double().mean().item()
            if step == 1:
                rec['head_out'] = seen['head_out'].to(torch.float64).cpu().numpy()
            grads = {key_map[n]: p.grad.detach().to('cpu', torch.float64, copy=True)
                     for n, p in params.items() if p.grad is not None}
            rec['with_grad'][step] = set(grads)
            rec['grad_norms'][step] = {k: g.norm().item() for k, g in grads.items()}
            if step == 1:
                rec['grads'] = {k: g.numpy() for k, g in grads.items()}
            deltas = {key_map[n]: p.detach().to(torch.float64).cpu() - filled[n]
                      for n, p in params.items()}
            rec['delta_norms'][step] = {k: d.norm().item() for k, d in deltas.items()}
            # copies: the next forward updates the buffers in place
            rec['bn'][step] = {key_map[k]: v.detach().to('cpu', torch.float64 if v.is_floating_point()
                                                          else v.dtype, copy=True).numpy()
                               for k, v in model.named_buffers()}
        rec['delta2'] = {k: d.numpy() for k, d in deltas.items()}
    finally:
        for h in hooks:
            h.remove()
    return rec


@dataclass
class Check:
    name: str
    value: float
    tolerance: float
    ok: bool
    note: str = ''

    def line(self):
        verdict = 'ok' if self.ok else 'FAIL'
        return f'{self.name:<34} {self.value:>11.3e}  (tolerance {self.tolerance:.3g}) {verdict} {self.note}'


def _null_params(case, step):
    """Original names whose true gradient is zero at `step` (or at any step up to it)."""
    null = case['meta']['null_gradient_params']
    return set().union(*(null[f'step{s}'] for s in range(1, step + 1)))


def _norm_errors(ours, ref, exclude):
    """Relative errors of per-parameter norms, over the reference's names minus `exclude`."""
    names = [k for k in ref if k not in exclude and not k.startswith(ABSENT_ORIGINAL)]
    missing = [k for k in names if k not in ours]
    if missing:
        raise AssertionError(f'no value for {len(missing)} recorded parameters, e.g. {missing[:3]}')
    return np.array([abs(ours[k] - ref[k]) / ref[k] for k in names])


def _config_checks(rec, case):
    lr_err, wd_wrong, n = 0.0, [], 0
    for g in case['groups']:
        for name in g['params']:
            if name.startswith(ABSENT_ORIGINAL):
                continue
            n += 1
            for step in (1, 2):
                ref = g[f'lr_step{step}']
                lr_err = max(lr_err, abs(rec['lr'][step][name] - ref) / ref)
            if rec['weight_decay'][name] != g['weight_decay']:
                wd_wrong.append(name)
    extra = set(rec['weight_decay']) - {p for g in case['groups'] for p in g['params']}
    return [Check('config: lr per parameter', lr_err, 1e-12, lr_err <= 1e-12 and not extra,
                  f'{n} parameters' + (f', {len(extra)} unknown' if extra else '')),
            Check('config: weight decay mismatches', len(wd_wrong), 0, not wd_wrong,
                  ', '.join(wd_wrong[:3]))]


def _selected(case, prefix):
    """(name, slice, reference array, null-element mask or None) of the selected tensors."""
    out = []
    for s in case['meta']['selected']:
        if s['name'].startswith(ABSENT_ORIGINAL):
            continue
        ref = case[prefix + npz_key(s['name'])]
        g64 = case.get('f64__grad1__' + npz_key(s['name']))
        null = np.abs(g64) < NULL_GRAD if g64 is not None else None
        out.append((s['name'], parse_slice(s['slice']), ref, null))
    return out


def compare_f64(rec, case):
    """The tight checks (TRAIN_STEP_CASE.md, mode f64) of a float64 run."""
    c = case
    checks = _config_checks(rec, c)
    loss = max(abs(rec['loss'][s] - float(c[f'f64__loss_step{s}'])) / abs(float(c[f'f64__loss_step{s}']))
               for s in (1, 2))
    checks.append(Check('loss, both steps', loss, 1e-8, loss <= 1e-8))
    logits = max(rel_max(rec['logits'][s], c[f'f64__train_logits_step{s}']) for s in (1, 2))
    logits = max(logits, rel_max(rec['head_out'], c['f64__head_out_step1']))
    checks.append(Check('logits (and head output), both steps', logits, 1e-7, logits <= 1e-7))
    acc = max(abs(rec['acc'][s] - float(c[f'f64__acc_seg_step{s}'])) for s in (1, 2))
    one_pixel = 100.0 / c['label'].size
    checks.append(Check('acc_seg (%), both steps', acc, one_pixel, acc <= one_pixel + 1e-9))
    for step, key in ((1, 'f64__grad_norms_json'), (2, 'f64__grad_norms_step2_json')):
        ref = json.loads(str(c[key]))
        expected = {k for k in ref if not k.startswith(ABSENT_ORIGINAL)}
        err = _norm_errors(rec['grad_norms'][step], ref,
                           set(c['meta']['null_gradient_params'][f'step{step}']))
        same_set = rec['with_grad'][step] == expected
        checks.append(Check(f'grad norms step {step} (max rel)', err.max(), 1e-5,
                            err.max() <= 1e-5 and same_set,
                            '' if same_set else 'different set of parameters with a gradient'))
    for step, key in ((1, 'f64__delta1_norms_json'), (2, 'f64__delta_norms_json')):
        ref = json.loads(str(c[key]))
        err = _norm_errors(rec['delta_norms'][step], ref, _null_params(c, step) | {
            k for k, v in ref.items() if v == 0.0})
        checks.append(Check(f'delta norms step {step} (max rel)', err.max(), 1e-5, err.max() <= 1e-5))
    l2, frac = [], []
    for name, sl, ref, null in _selected(c, 'f64__delta2__'):
        ours, ref = rec['delta2'][name][sl], ref.astype(np.float64)
        l2.append(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
        keep = ~null if null is not None else np.ones(ref.shape, bool)
        if keep.any():
            close = np.abs(ours - ref) <= 1e-4 * np.abs(ref) + 1e-6 * np.abs(ref).max()
            frac.append(close[keep].mean())
    checks.append(Check('selected deltas (rel L2, max)', max(l2), 1e-5, max(l2) <= 1e-5))
    checks.append(Check('selected deltas elementwise (min)', min(frac), 0.999, min(frac) >= 0.999,
                        'fraction within 1e-4|ref| + 1e-6 max|ref|'))
    g_l2 = []
    for name, sl, ref, null in _selected(c, 'f64__grad1__'):
        ref = ref.astype(np.float64)
        if null.all():          # an exactly-zero gradient: only rounding noise to compare
            continue
        g_l2.append(np.linalg.norm(rec['grads'][name][sl] - ref) / np.linalg.norm(ref))
    checks.append(Check('selected step-1 grads (rel L2, max)', max(g_l2), 1e-5, max(g_l2) <= 1e-5))
    checks += _bn_checks(rec, c, 'f64__', (1e-5, 1e-5))
    return checks


def _bn_checks(rec, case, prefix, tolerances):
    checks, nbt_ok = [], True
    for step, tol in zip((1, 2), tolerances):
        err = 0.0
        for layer in case['meta']['bn_layers']:
            for buf in ('running_mean', 'running_var'):
                ref = case[f'{prefix}bn_after{step}__{npz_key(layer)}__{buf}']
                err = max(err, rel_max(rec['bn'][step][f'{layer}.{buf}'], ref))
            nbt = case[f'{prefix}bn_after{step}__{npz_key(layer)}__num_batches_tracked']
            nbt_ok &= int(rec['bn'][step][f'{layer}.num_batches_tracked']) == int(nbt)
        checks.append(Check(f'BN running stats after step {step}', err, tol, err <= tol,
                            f"{len(case['meta']['bn_layers'])} layers"))
    checks.append(Check('num_batches_tracked mismatches', 0 if nbt_ok else 1, 0, nbt_ok))
    return checks


def compare_f32(rec, case):
    """The coarse checks (TRAIN_STEP_CASE.md, mode f32) of a float32 run; null-gradient
    parameters and elements are left out (in float32 they move by rounding noise)."""
    c = case
    checks = _config_checks(rec, c)
    for step, tol in ((1, 1e-4), (2, 1e-2)):
        ref = float(c[f'loss_step{step}'])
        err = abs(rec['loss'][step] - ref) / abs(ref)
        checks.append(Check(f'loss step {step}', err, tol, err <= tol))
    for step, tol in ((1, 2e-2), (2, 0.15)):
        err = rel_max(rec['logits'][step], c[f'train_logits_step{step}'])
        checks.append(Check(f'logits step {step}', err, tol, err <= tol))
    d1 = _norm_errors(rec['delta_norms'][1], json.loads(str(c['delta1_norms_json'])),
                      _null_params(c, 1) | _zero_refs(c, 'delta1_norms_json'))
    checks.append(Check('delta1 norms, median rel', np.median(d1), 1e-4, np.median(d1) <= 1e-4))
    q90 = np.quantile(d1, 0.9)
    checks.append(Check('delta1 norms, 90% quantile rel', q90, 3e-3, q90 <= 3e-3))
    g1 = _norm_errors(rec['grad_norms'][1], json.loads(str(c['grad_norms_json'])),
                      set(c['meta']['null_gradient_params']['step1']))
    checks.append(Check('grad1 norms, median rel', np.median(g1), 0.06, np.median(g1) <= 0.06))
    d2 = _norm_errors(rec['delta_norms'][2], json.loads(str(c['delta_norms_json'])),
                      _null_params(c, 2) | _zero_refs(c, 'delta_norms_json'))
    checks.append(Check('delta2 norms, median rel', np.median(d2), 0.08, np.median(d2) <= 0.08))
    checks.append(Check('delta2 norms, max rel', d2.max(), 0.9, d2.max() <= 0.9))
    sign = []
    filled = filled_original_state_dict(load_manifest(MANIFEST), c['meta']['seed'])
    for name, sl, after2, null in _selected(c, 'after2__'):
        ref = after2.astype(np.float64) - filled[name].double().numpy()[sl]
        keep = ~null          # grad1 is stored with the same slice
        if keep.any():
            sign.append((np.sign(rec['delta2'][name][sl]) == np.sign(ref))[keep].mean())
    checks.append(Check('selected delta2 sign agreement', min(sign), 0.9, min(sign) >= 0.9,
                        'min over tensors'))
    checks += _bn_checks(rec, c, '', (2e-3, 0.15))
    return checks


def _zero_refs(case, key):
    return {k for k, v in json.loads(str(case[key])).items() if v == 0.0}


def train_step_case(device, dtypes=(torch.float64, torch.float32)):
    """{dtype name: [Check]} of the recorded training-step case."""
    case = load_train_step_case()
    out = {}
    for dtype in dtypes:
        rec = run_train_step_case(case, dtype, device)
        out[str(dtype).replace('torch.', '')] = (compare_f64 if dtype == torch.float64
                                                 else compare_f32)(rec, case)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--skip-train-step', action='store_true', help='only the eval-mode case')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    # TF32 would change the numbers by ~1e-3: the check is about fp32 / fp64 equality
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ok = True
    for name, err, good in eval_case(device):
        ok &= good
        print(f"eval case on {device}: {name} rel err {err:.2e} {'ok' if good else 'FAIL'}")
    if not args.skip_train_step:
        for dtype, checks in train_step_case(device).items():
            print(f'training-step case on {device}, {dtype}:')
            for check in checks:
                ok &= check.ok
                print('  ' + check.line())
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
