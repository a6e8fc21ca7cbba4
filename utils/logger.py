"""Training logs: a human-readable text log and a JSON-lines log in the work dir.

Both files are appended to, so a resumed run continues the same logs; every record
carries its iteration, so a reader can keep the last record per iteration.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch


def memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA allocator peak on GPU, process peak RSS on CPU."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2 ** 20 if sys.platform == 'darwin' else 2 ** 10)


class TrainLogger:
    """Writes `train.log` (text) and `train.jsonl` (one JSON object per record).

    `enabled=False` (non-zero ranks) turns every call into a no-op.
    """

    def __init__(self, work_dir: str, enabled: bool = True, echo=None):
        self.enabled = enabled
        self.echo = echo  # e.g. tqdm.write, so messages don't break the progress bar
        self.text_path = os.path.join(work_dir, 'train.log')
        self.json_path = os.path.join(work_dir, 'train.jsonl')
        self._text = self._json = None
        if enabled:
            os.makedirs(work_dir, exist_ok=True)
            self._text = open(self.text_path, 'a', buffering=1)
            self._json = open(self.json_path, 'a', buffering=1)

    def info(self, msg: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        stamp = time.strftime('%Y-%m-%d %H:%M:%S')
        self._text.write(f'{stamp} {msg}\n')
        if echo:
            (self.echo or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    def record(self, **values) -> None:
        """One JSON line, e.g. mode='train', iter=..., loss=..., lr=..., time=..., memory=..."""
        if not self.enabled:
            return
        self._json.write(json.dumps(values, sort_keys=False) + '\n')

    def close(self) -> None:
        for f in (self._text, self._json):
            if f is not None:
                f.close()
        self._text = self._json = None
