"""Atomic file writes: a temporary file in the target's folder, flushed, fsync'ed and renamed over
the target, so a crash at any moment leaves the previous file or the new one, never a torn one."""
import os
import tempfile

import torch


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path):
    """torch.save(obj) to `path` atomically: temporary file, flush, fsync, rename.

    On any failure the temporary file is removed and the error re-raised; `path` keeps its
    previous content (or stays absent).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
