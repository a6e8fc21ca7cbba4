"""The deterministic weights of the recorded reference cases ("fill rule v1").

The values are defined per ORIGINAL key name (sorted order, one fresh RandomState per key), so a
filled dict is keyed by the original names and goes through the normal checkpoint converter.
"""
import json

import numpy as np
import torch


def fill_value(key, shape, seed, index):
    n = np.random.RandomState(seed * 100000 + index).standard_normal(tuple(shape))
    if key.endswith('num_batches_tracked'):
        return np.zeros(tuple(shape), dtype=np.int64)
    if key.endswith('running_var'):
        v = 1.0 + 0.5 * np.abs(n)
    elif key.endswith('running_mean') or key.endswith('.bias'):
        v = 0.1 * n
    elif key.endswith('.weight') and len(shape) == 1:
        v = 1.0 + 0.1 * n
    elif key.endswith('.weight'):
        v = n / np.sqrt(float(np.prod(shape[1:])))
    else:
        raise ValueError(f'fill rule: no rule for key {key!r}')
    return np.asarray(v, dtype=np.float32)


def load_manifest(path):
    """{original key: shape} from fhd_mit_b2_state_dict.json (in the original's order)."""
    with open(path) as f:
        return {e['key']: tuple(e['shape']) for e in json.load(f)['entries']}


def filled_original_state_dict(shapes, seed):
    """Fill rule v1 over ``shapes`` ({original key: shape}); returns original key -> tensor."""
    return {k: torch.from_numpy(fill_value(k, shapes[k], seed, i))
            for i, k in enumerate(sorted(shapes))}


def case_input(seed, batch, height, width):
    x = np.random.RandomState(seed + 7).standard_normal((batch, 6, height, width))
    return torch.from_numpy(x.astype(np.float32))
