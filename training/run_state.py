"""The state of a run in progress: the stop flag of Ctrl-C / SIGTERM, the epoch's running totals,
and the errors that stop a run with what to do next."""
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch

from utils import distributed
from utils.device import available_cores

MAX_SKIPPED = 0.01  # stop when more than this share of an epoch's images cannot be read
SLOW_DATA = 0.2  # warn (once per run) when the steps wait for their batches more than this share of the time


class Interrupted(Exception):
    """Ctrl-C / SIGTERM: a checkpoint was written; exit status 128 + signal number."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


class UsageError(ValueError):
    """A flag value that turns out to be invalid once the data or the checkpoint is known."""


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, unreadable images); the last checkpoint is kept.
    `exit_status`: train.py's (1: the training failed; 2: the user's data)."""
    exit_status = 1


class UnreadableImages(TrainingError):
    """Too many training images cannot be read: the user's data, exit status 2."""
    exit_status = 2


class StopFlag:
    """SIGINT / SIGTERM handler: the first signal asks the loop to stop at the end of the step (a
    checkpoint is written), a second one raises KeyboardInterrupt at once. Data-loading workers
    (forked, so they inherit the handler) ignore it: the main process stops them."""

    def __init__(self):
        self.signum = 0
        self.previous = {}
        self.pid = os.getpid()

    def __enter__(self):
        self.pid = os.getpid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if os.getpid() != self.pid:  # a loader worker: Ctrl-C reaches the whole process group
            return
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        if distributed.is_main():
            print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                  "(again to stop at once)", file=sys.stderr, flush=True)


@dataclass
class EpochTotals:
    """Running totals of the epoch in progress (a mid-epoch checkpoint keeps them)."""
    steps: int = 0  # batches trained on
    images: int = 0  # of this process
    skipped: int = 0  # unreadable images left out
    seconds: float = 0.0
    data_wait: float = 0.0  # of `seconds`, spent waiting for the loader's batches
    losses: dict = field(default_factory=dict)  # "loss" and each term of ReIDLoss -> its sum over the steps

    COUNTERS = ("steps", "images", "skipped", "seconds", "data_wait")

    def state_dict(self):
        """A flat dict of numbers: the counters and the loss sums (the checkpoint's "meter")."""
        return {**{k: getattr(self, k) for k in self.COUNTERS}, **self.losses}

    @classmethod
    def from_state_dict(cls, state):
        return cls(**{k: state.get(k, 0) for k in cls.COUNTERS}, losses={k: v for k, v in state.items()
                                                                         if k not in cls.COUNTERS})

    def data_wait_share(self, seconds=None):
        """The share of the epoch's time (or of `seconds` so far) spent waiting for batches."""
        return self.data_wait / max(self.seconds if seconds is None else seconds, 1e-9)

    def log_record(self, epoch, lr, world_size, metrics=None):
        """The epoch's line of <stem>_log.jsonl: mean loss and terms per step, throughput, the time spent
        waiting for data (seconds and share, this process's), skipped images and, when the epoch was
        evaluated (--eval-period), its test metrics."""
        terms = {k: v / max(self.steps, 1) for k, v in self.losses.items()}
        record = {"epoch": epoch + 1, "loss": terms.pop("loss", float("nan")), "terms": terms, "lr": lr,
                  "img_per_s": self.images * world_size / max(self.seconds, 1e-9),
                  "seconds": round(self.seconds, 3), "data_wait": round(self.data_wait, 3),
                  "data_wait_share": round(self.data_wait_share(), 4), "skipped": self.skipped}
        if metrics is not None:
            record["metrics"] = metrics
        return record


def waiting_for_data(batches, totals):
    """Yield the batches of `batches`, adding to `totals.data_wait` how long each one took to arrive
    after the previous step ended (the consumer asking for the next batch ends a step)."""
    ready = time.perf_counter()
    for batch in batches:
        totals.data_wait += time.perf_counter() - ready
        yield batch
        ready = time.perf_counter()


_TOLD = []  # the slow-data warning is given once per run


def warn_if_waiting_for_data(totals, num_workers, device):
    """After an epoch: one warning per run when the steps waited for data more than SLOW_DATA of the time
    and more loader processes can help (slow_data_advice)."""
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    advice = slow_data_advice(totals.data_wait_share(), num_workers, available_cores(), threads)
    if advice and not _TOLD:
        _TOLD.append(advice)
        warnings.warn(advice)


def slow_data_advice(share, num_workers, cores, training_threads):
    """The warning of an epoch that waited for its batches more than SLOW_DATA of the time, or None when
    more loader processes would not help: no core is left beside the `training_threads` (the torch
    threads on the CPU, the one feeding the GPU otherwise) and the `num_workers` loader processes."""
    spare = cores - training_threads - num_workers
    if share <= SLOW_DATA or spare < 1:
        return None
    return (f"the training steps waited for their batches {share:.0%} of the time (data_wait in the log); "
            f"{cores} cores are available and {num_workers} loader processes run: try --num-workers "
            f"{num_workers + min(spare, 4)}")


def too_many_skipped(epoch, skipped, planned_images, saved):
    """TrainingError of an epoch in which more than MAX_SKIPPED of the images could not be read."""
    then = f"resume with --resume {saved[0]}" if saved else "rerun (no epoch had finished, nothing to resume)"
    return UnreadableImages(f"epoch {epoch + 1}: {skipped} images could not be read (more than {MAX_SKIPPED:.0%} of "
                         f"the epoch's {planned_images}); the warnings above name them; fix or remove them and {then}")


def non_finite_loss(loss, epoch, step, steps, lr, amp, saved):
    """TrainingError of a non-finite loss: where it happened and how to go on from `saved`
    ((path, finished epochs, batches) of the newest checkpoint, or None)."""
    lower = f"--lr {lr / 2:g}" + (" (or --amp false)" if amp else "")
    if saved:
        then = (f"The checkpoint {saved[0]} ({saved[1]} finished epochs) is kept: resume it with a lower "
                f"--lr, e.g. --resume {saved[0]} {lower} (a changed --lr is allowed on resume)")
    else:
        then = f"No epoch had finished, so there is nothing to resume: rerun with a lower --lr, e.g. {lower}"
    return TrainingError(f"non-finite loss ({loss}) at epoch {epoch + 1}, step {step + 1} of {steps}; "
                         f"training stopped. {then}")


def batch_has_images(imgs, skipped, totals, epoch, step, planned_images, saved, max_skipped=MAX_SKIPPED):
    """Count a batch's `skipped` unreadable images in `totals`; False when none of its images could be read
    (nothing to learn from: the caller moves on). Raises UnreadableImages past `max_skipped` of the epoch's
    `planned_images`, and TrainingError for an empty batch under torchrun (the other processes would wait
    for this one's gradients)."""
    totals.skipped += skipped
    if totals.skipped > max_skipped * planned_images:
        raise too_many_skipped(epoch, totals.skipped, planned_images, saved)
    if imgs.shape[0]:
        return True
    if distributed.get_world_size() > 1:
        raise TrainingError(f"epoch {epoch + 1}, step {step + 1}: no image of this process's batch could be read "
                            "(see the warnings above)")
    return False


def reduce_step(loss, terms, stop, totals, epoch, step, steps, lr, amp, saved, images):
    """After a step: one small all-reduce of the loss, its `terms` (name -> tensor) and the stop request;
    stops on a non-finite mean loss (non_finite_loss), adds the step to `totals`. Returns (mean loss,
    whether some process was asked to stop)."""
    status = torch.stack([loss.detach().float(), *(t.detach().float() for t in terms.values()),
                          torch.tensor(float(stop.signum if stop else 0), device=loss.device)])
    distributed.all_reduce_mean(status)
    values = status.tolist()
    if not math.isfinite(values[0]):
        raise non_finite_loss(values[0], epoch, step, steps, lr, amp, saved)
    totals.steps += 1
    totals.images += images
    for name, value in zip(["loss", *terms], values[:-1]):
        totals.losses[name] = totals.losses.get(name, 0.0) + value
    return values[0], bool(values[-1])
