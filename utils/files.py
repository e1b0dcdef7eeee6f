"""Output files: checks that a location can be written before any work, and atomic writes (a temporary
file in the target's folder, flushed, fsync'ed and renamed over the target, so a crash at any moment
leaves the previous file or the new one, never a torn one) with the permissions a plain open() gives."""
import contextlib
import os
import tempfile

import torch


class UnwritableError(ValueError):
    """An output location that cannot be written; the message names it and says why."""


def _existing_ancestor(folder):
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return folder


def check_writable(path, folder=False):
    """Raise UnwritableError (its message says why, for the caller to put after the path) unless `path` can be written: a file (its folder may not exist yet) or, with
    `folder`, a folder to write files in. Creates nothing that stays (a probe file is created and removed
    in the nearest existing folder, so read-only file systems and permissions are caught as they are)."""
    target = os.path.abspath(path if folder else os.path.dirname(os.path.abspath(path)))
    if not folder and os.path.isdir(path):
        raise UnwritableError("it is a folder; give a file name")
    existing = _existing_ancestor(target)
    if not os.path.isdir(existing):
        raise UnwritableError(f"cannot write there, {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UnwritableError(f"cannot write in {existing} ({err.strerror or err})") from None


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


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path):
    """A binary file object whose content replaces `path` atomically when the block ends without an
    error; on any failure the temporary file is removed and `path` keeps its previous content (or stays
    absent). The file gets the permissions open() would give it under the user's umask (not mkstemp's
    owner-only 0600), so colleagues on a shared server can read checkpoints as they read logs."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_save(obj, path):
    """torch.save(obj) to `path` atomically (atomic_write)."""
    with atomic_write(path) as f:
        torch.save(obj, f)
