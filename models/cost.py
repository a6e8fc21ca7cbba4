"""Model size, FLOPs and a forward-time benchmark of the reference vs the fast path."""
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs):
    rows = 1
    for d in x_shape[:-1]:
        rows *= d
    return 2 * rows * w_shape[0] * w_shape[1]


def _onednn_conv_flop(x_shape, w_shape, *args, out_shape=None, **kwargs):
    return conv_flop_count(x_shape, w_shape, out_shape)


# FlopCounterMode has no formula for the CPU flash-attention kernel that SDPA dispatches to
# (counted like the two batched matmuls of plain attention, as the original's bmm), nor for the
# fused oneDNN kernels the fast path runs in CPU inference (counted as the linear / conv they are).
_CUSTOM_FLOPS = {}
if hasattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu'):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop
if hasattr(torch.ops.mkldnn, '_linear_pointwise'):
    _CUSTOM_FLOPS[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flop
if hasattr(torch.ops.mkldnn, '_convolution_pointwise'):
    _CUSTOM_FLOPS[torch.ops.mkldnn._convolution_pointwise] = _onednn_conv_flop


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_flops(model, size=(256, 256), batch=1):
    """Eval-forward FLOPs (2 per multiply-add, matmul/conv ops only, as FlopCounterMode counts)
    for ``batch`` image pairs of ``size``, on the model's current path."""
    device = next(model.parameters()).device
    x = torch.zeros(batch, 6, *size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if getattr(model, 'fast', False):
                model.decoder._eval_fold_weights()   # one-off fold, cached between calls
            with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
                model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def model_cost(model, size=(256, 256), batch=1):
    """{'params', 'flops' (current path), 'flops_reference', 'flops_fast', 'size', 'batch'}."""
    fast = model.fast
    try:
        model.fast = False
        flops_ref = count_flops(model, size, batch)
        model.fast = True
        flops_fast = count_flops(model, size, batch)
    finally:
        model.fast = fast
    return {'params': count_params(model), 'flops': flops_fast if fast else flops_ref,
            'flops_reference': flops_ref, 'flops_fast': flops_fast,
            'size': tuple(size), 'batch': batch}


def benchmark_forward(model, batch_sizes=(1, 8), size=(256, 256), runs=10, warmup=3,
                      threads=2, seed=0):
    """Median eval-forward seconds of the reference and fast paths, run alternately.

    Returns a list of dicts {batch, reference_s, fast_s, speedup}."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    fast = model.fast
    was_training = model.training
    model.eval()
    results = []
    try:
        g = torch.Generator().manual_seed(seed)
        for batch in batch_sizes:
            x = torch.randn(batch, 6, *size, generator=g)
            times = {False: [], True: []}
            with torch.no_grad():
                for i in range(warmup + runs):
                    for path in (False, True):   # alternate so load changes hit both alike
                        model.fast = path
                        t0 = time.perf_counter()
                        model(x)
                        dt = time.perf_counter() - t0
                        if i >= warmup:
                            times[path].append(dt)
            ref, fst = statistics.median(times[False]), statistics.median(times[True])
            results.append({'batch': batch, 'reference_s': ref, 'fast_s': fst,
                            'speedup': ref / fst})
    finally:
        model.fast = fast
        model.train(was_training)
        torch.set_num_threads(prev_threads)
    return results


def format_benchmark(results, size=(256, 256), threads=2):
    lines = [f'eval forward, {size[0]}x{size[1]}, {threads} threads, median seconds',
             f'{"batch":>5}  {"reference":>10}  {"fast":>10}  {"speedup":>8}']
    for r in results:
        lines.append(f'{r["batch"]:>5}  {r["reference_s"]:>10.3f}  {r["fast_s"]:>10.3f}  '
                     f'{r["speedup"]:>7.2f}x')
    return '\n'.join(lines)
