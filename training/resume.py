"""train.py's run state on disk: the file names, atomic writes, the resumable checkpoint, every random state.

Files next to `--save-path` (e.g. params/ema.pth):
- `params/ema.pth`: the averaged DBN with its variant, input size, dataset, args and metrics
  (network.make_checkpoint; its "state_dict" has the release's keys), written at the end.
- `params/ema_last.pth`: the resumable training checkpoint, rewritten after every epoch (and when
  a run is interrupted with Ctrl-C / SIGTERM): a dict of tensors, numbers, strings and lists only,
  so `torch.load(path, weights_only=True)` reads it (see `train.py` for its keys).
- `params/ema_log.jsonl`: one JSON line per epoch.
- `params/ema_best.pth` (with --eval-period): the evaluated weights with the best score
  (training/eval_period.py); `params/ema_curves.png`: the log's curves (training/curves.py).

Writes are atomic (utils/files.py).
"""
import os
import random

import numpy as np
import torch

from network import CheckpointError, read_checkpoint
from training.run_state import EpochTotals
from utils import distributed
from utils.files import atomic_save

TRAINING_KEYS = ("model", "optimizer", "scheduler", "epoch", "args")


def last_checkpoint_path(save_path):
    """params/ema.pth -> params/ema_last.pth (the resumable checkpoint)."""
    stem, ext = os.path.splitext(save_path)
    return f"{stem}_last{ext or '.pth'}"


def log_path(save_path):
    """params/ema.pth -> params/ema_log.jsonl (one JSON line per epoch)."""
    return f"{os.path.splitext(save_path)[0]}_log.jsonl"


def best_checkpoint_path(save_path):
    """params/ema.pth -> params/ema_best.pth (--eval-period: the evaluated weights with the best score)."""
    stem, ext = os.path.splitext(save_path)
    return f"{stem}_best{ext or '.pth'}"


def curves_path(save_path):
    """params/ema.pth -> params/ema_curves.png (the log's curves, redrawn after every epoch)."""
    return f"{os.path.splitext(save_path)[0]}_curves.png"


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
            f"{last_checkpoint_path(path)} for --save-path {path}")
    return checkpoint


def seed_everything(seed):
    """Seed Python's, numpy's and torch's generators (train.py: the same initial weights in every process)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def save_training_state(path, model, optimizer, scheduler, scaler, averaged, epoch, step, totals, args):
    """Gather every rank's random state, then rank 0 writes the checkpoint (all ranks must call);
    `averaged`: the run's AveragedModel, or None (pretrain.py without EMA)."""
    rngs = distributed.all_gather_object(rng_state())
    if not distributed.is_main():
        return
    atomic_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "averaged": averaged.state_dict() if averaged is not None else None,
        "n_averaged": int(averaged.n_averaged) if averaged is not None else 0, "epoch": epoch, "step": step, "meter": totals.state_dict(),
        "sampler": {"seed": args.seed, "epoch": epoch, "batches_done": step, "world_size": len(rngs)},
        "rng": rngs, "world_size": len(rngs), "args": vars(args),
    }, path)


def restore_training_state(checkpoint, optimizer, scheduler, scaler, averaged, *, lr=None, rank=0, world_size=1):
    """Load a checkpoint of save_training_state into the run's objects; `lr`: a new peak lr (a changed
    --lr on resume). Returns (epoch, step, EpochTotals, note): `note` says why the random states start
    afresh (a different number of processes), else None."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if lr is not None:
        set_base_lr(optimizer, scheduler, lr)
    if scaler.is_enabled() and checkpoint["scaler"]:
        scaler.load_state_dict(checkpoint["scaler"])
    if averaged is not None:
        averaged.load_state_dict(checkpoint["averaged"])
    totals = EpochTotals.from_state_dict(checkpoint["meter"]) if checkpoint.get("meter") else EpochTotals()
    note = None
    if len(checkpoint["rng"]) == world_size:
        set_rng_state(checkpoint["rng"][rank])
    else:
        note = (f"the checkpoint was written by {len(checkpoint['rng'])} processes, this run has {world_size}; "
                "random states start afresh (the run is no longer bit-identical)")
    return checkpoint["epoch"], checkpoint.get("step", 0), totals, note


def set_base_lr(optimizer, scheduler, lr):
    """A new peak lr for a resumed run: the schedule's factor of the current epoch times `lr`."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
