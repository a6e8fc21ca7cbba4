"""Atomic file writes: every output appears under its final name only when complete."""
import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_path(path, suffix='.tmp'):
    """Yield a fresh temp path beside `path`; rename it over `path` when the block succeeds,
    delete it when the block fails. The temp lives in the same folder so the rename stays on one
    filesystem (atomic); its name is `.<basename>.<random><suffix>` (some writers, e.g.
    cv2.imwrite, need a particular suffix)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())       # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
