"""The files of a training run and the checks before it starts (train.py).

Beside --save-path (e.g. params/ema.pth): the averaged weights themselves, <stem>_last.pth (the
resumable checkpoint, training/resume.py) and <stem>_log.jsonl (one JSON line per epoch). Before any
training: --save-path must be writable and hold no earlier run unless --overwrite or --resume
(check_save_path), and the training images must be readable (check_training_images).
"""
import atexit
import contextlib
import json
import os
import socket
import sys
import time

from PIL import Image
from tqdm import tqdm

from datasets.image_dataset import DECODE_ERRORS
from datasets.synthetic import generate
from network import CheckpointError, make_checkpoint
from training.resume import best_checkpoint_path, curves_path, last_checkpoint_path, load_training_checkpoint, log_path
from training.run_state import UnreadableImages, UsageError
from utils import distributed
from utils.files import UnwritableError, atomic_save, check_writable

DEMO_DATA = dict(ids=48, images_per_id=8, cameras=3, seed=0)  # synthetic market1501 for train.py --demo


def check_save_path(args, lock=True):
    """Before any training: --save-path must be writable, used by no other run (its lock file, see
    acquire_run_lock: taken here when `lock` and not a dry run) and, for a new run, hold no earlier run
    (unless --overwrite). Raises UsageError saying what is there and what to do."""
    path = args.save_path
    if os.path.isdir(path):
        raise UsageError(f"--save-path {path} is a folder; give a file name, e.g. {os.path.join(path, 'ema.pth')}")
    try:  # creates nothing: a probe file in the nearest existing folder, removed at once
        check_writable(path)
    except UnwritableError as err:
        raise UsageError(f"--save-path {path}: {err}; choose a writable --save-path") from None
    if args.dry_run:
        check_run_lock(path)
    elif lock:
        acquire_run_lock(path)
    if args.resume or args.overwrite:
        return
    last, files = last_checkpoint_path(path), [p for p in (path, last_checkpoint_path(path), log_path(path))
                                               if os.path.exists(p)]
    if not files:
        return
    done = total = None
    if os.path.isfile(last):
        try:
            earlier = load_training_checkpoint(last)
            done, total = earlier["epoch"], planned_epochs(earlier["args"])
        except (CheckpointError, KeyError, TypeError, IndexError):  # not one of ours: named below anyway
            done = None
    if done is not None and done < total:
        what = f"an unfinished run is there ({done} epochs done in {last}); continue it with --resume {last}, or "
    elif os.path.isfile(path):
        what = f"a finished run is there ({path}); "
    else:
        what = f"files of an earlier run are there ({', '.join(files)}); " + (
            f"continue it with --resume {last}, or " if done is not None else "")
    raise UsageError(f"--save-path {path}: {what}add --overwrite to start a new run that replaces its files, "
                     "or choose another --save-path")


def planned_epochs(args):
    """Epochs a run's flags (a dict) plan: train.py's T + ema_extra, pretrain.py's --epochs."""
    epochs = args["epochs"]
    return epochs if isinstance(epochs, int) else epochs[1] + args["ema_extra"]


def dry_run_line(sampler, args):
    """What a real run would do: batches per epoch (the release's partial last one) and epochs."""
    last = sampler.last_batch_size()
    return (f"dry run: {len(sampler)} batches of {args.batch_size} per epoch"
            f"{f' (the last of {last})' if last != args.batch_size else ''}, "
            f"{args.epochs[1] + args.ema_extra} epochs; nothing trained")


def lock_path(save_path):
    """params/ema.pth -> params/ema.lock: held by the run writing there (pid, host, start)."""
    return f"{os.path.splitext(save_path)[0]}.lock"


_HELD = []  # lock files this process holds


def _alive(pid):
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: take the owner as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner(path):
    """The lock's record, or None when it cannot be read (a run stopped while writing it)."""
    try:
        with open(path) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _stale(path, owner):
    """A lock left by a run that is gone: its process no longer exists on this host (or the record is
    unreadable and older than a minute)."""
    if owner is None:
        try:
            return time.time() - os.path.getmtime(path) > 60
        except OSError:
            return True
    return owner.get("host") == socket.gethostname() and (owner["pid"] == os.getpid() or not _alive(owner["pid"]))


def check_run_lock(save_path):
    """UsageError naming the owner when another live run holds the lock of `save_path`; a stale lock
    is removed."""
    path = lock_path(save_path)
    if not os.path.exists(path):
        return
    owner = _owner(path)
    if _stale(path, owner):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return
    who = (f"pid {owner['pid']} on {owner.get('host')}, started {owner.get('started')}" if owner
           else "its owner could not be read")
    raise UsageError(f"--save-path {save_path}: another run is writing there ({who}; lock file {path}). "
                     "Wait for it to finish or stop it, or choose another --save-path (--overwrite and --resume "
                     f"do not take over a running run); if no such run exists any more, remove {path}")


def acquire_run_lock(save_path):
    """Create the lock of `save_path` (exclusively: of two runs starting at once, one gets it) with this
    process's pid, host and start time; released by release_run_lock or at exit."""
    path = lock_path(save_path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # the run's folder (check_writable made none)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        check_run_lock(save_path)  # refuses a live owner, clears a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:  # another run took it between the check and the creation
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        _HELD.append(path)
        return path
    check_run_lock(save_path)
    raise UsageError(f"--save-path {save_path}: could not take the lock file {path}")


def release_run_lock():
    """Remove the lock files this process holds."""
    while _HELD:
        with contextlib.suppress(FileNotFoundError):
            os.remove(_HELD.pop())


atexit.register(release_run_lock)


def remove_earlier_run(save_path):
    """A new run with --overwrite: the earlier run's weights, checkpoint, log, best weights and curves go
    first, so that no file of it is left beside the new run's."""
    for path in (save_path, last_checkpoint_path(save_path), log_path(save_path), best_checkpoint_path(save_path),
                 curves_path(save_path)):
        if os.path.isfile(path):
            os.remove(path)


def check_training_images(items, saved, max_skipped):
    """Open the header of every training image before training: list every unreadable one and
    stop (UnreadableImages, exit status 2) when they are more than the share `max_skipped` of the training set; `saved`
    as saved_state's."""
    bad = []
    for path, *_ in items:
        try:
            with Image.open(path):  # the header only: cheap
                pass
        except DECODE_ERRORS as err:  # Pillow's message repeats the path
            bad.append((path, str(err).replace(f"'{path}'", "").replace(path, "").strip(" :") or type(err).__name__))
    if not bad:
        return
    if distributed.is_main():
        tqdm.write(f"{len(bad)} of the {len(items)} training images cannot be read:", file=sys.stderr)
        for path, err in bad:
            tqdm.write(f"  {path}: {err}", file=sys.stderr)
    if len(bad) > max_skipped * len(items):
        then = f"resume with --resume {saved[0]}" if saved else "rerun"
        raise UnreadableImages(f"{len(bad)} of the {len(items)} training images cannot be read (more than "
                            f"{max_skipped:.0%}; listed above); fix or remove them and {then}")
    if distributed.is_main():
        tqdm.write(f"warning: training goes on without them (at most {max_skipped:.0%} may be unreadable)",
                   file=sys.stderr)


def saved_state(saved):
    """What the newest checkpoint of the run holds, and how to go on from it."""
    if saved is None:
        return "no epoch had finished, so nothing was saved: rerun the same command to start again"
    path, epochs, step = saved
    where = f"{epochs} finished epochs" + (f" and {step} batches of the next" if step else "")
    return f"the checkpoint {path} holds {where}: resume with --resume {path}"


def append_log(path, record, completed_epochs=None):
    """Append one JSON line; with `completed_epochs`, first drop lines of epochs after it (a resumed run)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if completed_epochs is not None and os.path.isfile(path):
        with open(path) as f:
            lines = [line for line in f if line.strip() and json.loads(line).get("epoch", 0) <= completed_epochs]
        with open(path, "w") as f:
            f.writelines(lines)
    if record is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def ensure_demo_data(root, demo_data=DEMO_DATA):
    folder = os.path.join(root, "market1501")
    # only rank 0 looks and writes; every rank waits at the barrier, whatever it would have seen
    if distributed.is_main() and not os.path.isdir(folder):
        print(f"demo: generating a synthetic Market-1501 ({demo_data['ids']} training identities) under {folder}")
        generate("market1501", root, **demo_data)
    distributed.barrier()


def evaluate_command(args):
    return (f"evaluate them with python test_{args.dataset}.py --weights {args.save_path} --net {args.net} "
            f"--img-height {args.img_height} --img-width {args.img_width} --dataset-root {args.dataset_root}")


def save_model(model, dataset, args, metrics=None):
    """--save-path: the DBN's state_dict with its variant, input size, dataset, args and metrics
    (network.checkpoint.make_checkpoint), written atomically."""
    atomic_save(make_checkpoint(model, args.img_height, args.img_width, dataset=args.dataset,
                                transform=dataset.family, args=args, metrics=metrics), args.save_path)
