"""train.py's run state on disk: the file names, atomic writes, the resumable checkpoint, every random state.

Files next to `--save-path` (e.g. params/ema.pth):
- `params/ema.pth`: the averaged DBN with its variant, input size, dataset, args and metrics
  (network.make_checkpoint; its "state_dict" has the release's keys), written at the end.
- `params/ema_last.pth`: the resumable training checkpoint, rewritten after every epoch (and when
  a run is interrupted with Ctrl-C / SIGTERM): a dict of tensors, numbers, strings and lists only,
  so `torch.load(path, weights_only=True)` reads it (see `train.py` for its keys).
- `params/ema_log.jsonl`: one JSON line per epoch.

Writes go to a temporary file in the same folder which is flushed, fsync'ed and renamed over the
target, so a crash at any moment leaves either the previous file or the new one, never a torn one.
"""
import os
import random
import tempfile

import numpy as np
import torch

from network import CheckpointError, read_checkpoint

TRAINING_KEYS = ("model", "optimizer", "scheduler", "epoch", "args")


def last_checkpoint_path(save_path):
    """params/ema.pth -> params/ema_last.pth (the resumable checkpoint)."""
    stem, ext = os.path.splitext(save_path)
    return f"{stem}_last{ext or '.pth'}"


def log_path(save_path):
    """params/ema.pth -> params/ema_log.jsonl (one JSON line per epoch)."""
    return f"{os.path.splitext(save_path)[0]}_log.jsonl"


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


def load_training_checkpoint(path):
    """Read a checkpoint written by train.py for --resume (weights_only, on the CPU).

    Raises network.CheckpointError naming the path when it is missing, unreadable or not a
    training checkpoint (for instance the averaged weights written to --save-path).
    """
    checkpoint = read_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(
            f"--resume {path}: not a training checkpoint (missing {', '.join(missing)}); pass the "
            f"<save-path stem>_last.pth file that train.py rewrites after every epoch, e.g. "
            f"{last_checkpoint_path('params/ema.pth')} for --save-path params/ema.pth")
    return checkpoint


def rng_state():
    """Every random state of this process, as tensors and plain Python values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what `rng_state()` returned."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _to_lists(obj):
    return [_to_lists(o) for o in obj] if isinstance(obj, tuple) else obj


def _to_tuples(obj):
    return tuple(_to_tuples(o) for o in obj) if isinstance(obj, list) else obj
