"""Training checkpoints: atomic writes, `latest.pth`, resume discovery, random states."""
from __future__ import annotations

import os
import random
import re
import shutil

import numpy as np
import torch

from utils.fileio import atomic_path

_ITER_NAME = re.compile(r'^iter_(\d+)\.pth$')


def save_atomic(obj, path: str) -> str:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`.

    A reader (or a resumed run after SIGKILL) therefore sees either the old file or the
    complete new one, never a partial file.
    """
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def link_atomic(src: str, dst: str) -> str:
    """Make `dst` a complete copy of `src` (hard link, or a file copy where links fail).

    Unlike the original's symlink, `latest.pth` never dangles and is swapped in one rename.
    """
    with atomic_path(dst) as tmp:
        os.remove(tmp)              # os.link needs a free name
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def remove_stale_temps(work_dir: str) -> None:
    """Delete temp files left behind by a killed writer (they are never complete)."""
    if not os.path.isdir(work_dir):
        return
    for name in os.listdir(work_dir):
        if name.startswith('.') and name.endswith('.tmp') and '.pth.' in name:
            try:
                os.remove(os.path.join(work_dir, name))
            except OSError:
                pass


def find_resume_checkpoint(work_dir: str) -> str | None:
    """Newest complete checkpoint in `work_dir`: the highest iter_<N>.pth, else latest.pth.

    Every file with a final name is complete because it only appears through os.replace.
    """
    if not os.path.isdir(work_dir):
        return None
    iters = []
    for name in os.listdir(work_dir):
        m = _ITER_NAME.match(name)
        if m:
            iters.append((int(m.group(1)), name))
    if iters:
        return os.path.join(work_dir, max(iters)[1])
    latest = os.path.join(work_dir, 'latest.pth')
    return latest if os.path.isfile(latest) else None


def get_rng_state() -> dict:
    """Every random state, stored with plain types/tensors so `torch.load(weights_only=True)` works."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(),
                 numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                            has_gauss=int(has_gauss), gauss=float(gauss)),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    if 'python' in state:
        version, internal, gauss = state['python']
        random.setstate((version, tuple(internal), gauss))
    if 'numpy' in state:
        n = state['numpy']
        np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'],
                             n['has_gauss'], n['gauss']))
    if 'torch' in state:
        torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda_states = state['cuda']
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# What makes a resumed run the same run: a checkpoint continued with another dataset, batch,
# lr, process count or crop would silently train something else than either run asked for.
RUN_FIELDS = ('dataset', 'data_root', 'crop', 'scale', 'batch_size', 'lr', 'world_size',
              'backbone')


def run_mismatches(meta: dict, current: dict) -> list:
    """[(field, value in the checkpoint, value now)] for the RUN_FIELDS that differ.

    Fields the checkpoint does not have (files of older versions) are not compared."""
    return [(k, meta[k], current[k]) for k in RUN_FIELDS
            if k in meta and k in current and meta[k] != current[k]]


def read_meta(path: str) -> dict | None:
    """The `meta` dict of a train.py / mmcv checkpoint, or None (no meta, unreadable file).

    Memory-mapped where the file format allows it, so only the small meta is actually read."""
    for mmap in (True, False):
        try:
            obj = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
        except Exception:   # noqa: BLE001 - the loader proper reports unreadable files
            continue
        meta = obj.get('meta') if isinstance(obj, dict) else None
        return meta if isinstance(meta, dict) else None
    return None


def with_training_geometry(preset, path: str):
    """`preset` with the resize scale and crop the checkpoint was trained at (train.py stores
    them in its meta), or unchanged for files without them (release checkpoints)."""
    import dataclasses
    meta = read_meta(path) or {}
    if not all(isinstance(meta.get(k), int) and meta[k] > 0 for k in ('scale', 'crop')):
        return preset
    return dataclasses.replace(preset, scale=meta['scale'], crop=meta['crop'])
