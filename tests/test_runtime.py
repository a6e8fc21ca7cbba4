"""utils.runtime.keep_freed_memory: large freed blocks are reused instead of page-faulted anew
(a process-wide setting, so it is checked in child processes)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r'''
import resource, sys
sys.path.insert(0, {root!r})
from utils.runtime import keep_freed_memory
applied = False
if sys.argv[1] == 'keep':
    applied = keep_freed_memory()
    assert keep_freed_memory() == applied      # idempotent
elif sys.argv[1] == 'cuda':
    applied = keep_freed_memory('cuda:0')      # a GPU run: left as glibc's default
import torch
def touch():
    t = torch.empty(25_000_000)     # 100 MB, above glibc's largest mmap threshold
    t.fill_(1.0)
    del t
for _ in range(10):      # reach the steady state (glibc's aligned blocks need a few rounds)
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def page_faults(mode):
    out = subprocess.run([sys.executable, '-c', PROBE.format(root=str(ROOT)), mode],
                         capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == 'True', int(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning')
def test_freed_memory_is_reused():
    applied, kept_faults = page_faults('keep')
    if not applied:
        pytest.skip('libc without mallopt (not glibc)')
    _, default_faults = page_faults('default')
    pages = 100e6 / 4096
    assert default_faults > 0.5 * pages       # glibc default: a fresh mmap, faulted page by page
    assert kept_faults < 0.05 * pages         # kept: the same heap block, already resident


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning')
def test_only_applied_for_cpu_runs():
    """On a GPU run the setting would only raise host memory: it is not applied there."""
    import torch
    applied, faults = page_faults('cuda')
    assert not applied and faults > 0.5 * 100e6 / 4096     # freed blocks went back to the kernel
    from utils import runtime
    saved = runtime._applied
    try:
        runtime._applied = None
        assert runtime.keep_freed_memory(torch.device('cuda', 0)) is False
        assert runtime.keep_freed_memory('cuda:1') is False
        assert runtime._applied is None            # nothing was changed in this process
    finally:
        runtime._applied = saved
    assert runtime.torch_device_type(torch.device('cpu')) == 'cpu'
    assert runtime.torch_device_type('cuda:3') == 'cuda'
