"""Model size, FLOPs and a forward-time benchmark of the reference path vs the inference module."""
import copy
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .cpu_kernels import flop_formulas
from .inference import for_inference


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs):
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


# FlopCounterMode has no formula for the CPU flash-attention kernel that SDPA dispatches to
# (counted like the two batched matmuls of plain attention, as the original's bmm), for the
# in-place addmm_ (counted as addmm), nor for the fused CPU kernels of the inference module
# (counted as the linear / conv they are).
_CUSTOM_FLOPS = dict(flop_formulas())
_CUSTOM_FLOPS[torch.ops.aten.addmm_] = _addmm_flop
if hasattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu'):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def reference_path(model):
    """A copy of ``model`` computing in the original's order (no decoder fold)."""
    ref = copy.deepcopy(model)
    ref.decoder.fold = False
    return ref


def count_flops(module, size=(256, 256), batch=1):
    """Eval-forward FLOPs (2 per multiply-add, matmul/conv ops only, as FlopCounterMode counts)
    of ``module`` for ``batch`` image pairs of ``size``."""
    device = next(module.buffers(), None)
    device = device.device if device is not None else next(module.parameters()).device
    x = torch.zeros(batch, 6, *size, device=device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
            module(x)
    finally:
        module.train(was_training)
    return counter.get_total_flops()


def model_cost(model, size=(256, 256), batch=1):
    """{'params', 'flops_reference' (the original's order), 'flops_folded' (training forward
    with the decoder fold), 'flops_inference' (``for_inference``), 'size', 'batch'}."""
    return {'params': count_params(model),
            'flops_reference': count_flops(reference_path(model), size, batch),
            'flops_folded': count_flops(copy.deepcopy(model), size, batch),
            'flops_inference': count_flops(for_inference(model), size, batch),
            'size': tuple(size), 'batch': batch}


def benchmark_forward(model, batch_sizes=(1, 8), size=(256, 256), runs=10, warmup=3,
                      threads=2, seed=0):
    """Median eval-forward seconds of the reference path and the inference module, run
    alternately. Returns a list of dicts {batch, reference_s, inference_s, speedup}."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    paths = {'reference': reference_path(model).eval(), 'inference': for_inference(model)}
    results = []
    try:
        g = torch.Generator().manual_seed(seed)
        for batch in batch_sizes:
            x = torch.randn(batch, 6, *size, generator=g)
            times = {name: [] for name in paths}
            with torch.no_grad():
                for i in range(warmup + runs):
                    for name, net in paths.items():   # alternate so load changes hit both alike
                        t0 = time.perf_counter()
                        net(x)
                        if i >= warmup:
                            times[name].append(time.perf_counter() - t0)
            ref, inf = (statistics.median(times[k]) for k in ('reference', 'inference'))
            results.append({'batch': batch, 'reference_s': ref, 'inference_s': inf,
                            'speedup': ref / inf})
    finally:
        torch.set_num_threads(prev_threads)
    return results


def format_benchmark(results, size=(256, 256), threads=2):
    lines = [f'eval forward, {size[0]}x{size[1]}, {threads} threads, median seconds',
             f'{"batch":>5}  {"reference":>10}  {"inference":>10}  {"speedup":>8}']
    for r in results:
        lines.append(f'{r["batch"]:>5}  {r["reference_s"]:>10.3f}  {r["inference_s"]:>10.3f}  '
                     f'{r["speedup"]:>7.2f}x')
    return '\n'.join(lines)
