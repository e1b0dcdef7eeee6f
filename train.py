"""Train DBN (LEViT backbone) for re-identification and fine-grained retrieval, as the release.

    python train.py --demo                                   # synthetic data, CPU, a few minutes
    python train.py --net small --img-height 256 --img-width 128 --batch-size 64 --lr 1.2e-1 \
        --dataset market1501 --gpus 0,1 --epochs 5,75 --ema-ratio 0.80 --ema-extra 25 \
        --instance-num 4 --erasing 0.45 --save-path params/ema.pth --dataset-root data
    torchrun --nproc-per-node 2 train.py ...                 # DistributedDataParallel

Recipe: P x K batches (PKSampler), loss = mean of 5 cross-entropy and 2 batch-hard soft-margin
triplet terms (losses/), SGD with Nesterov momentum, the release's warm-up / cosine / hold schedule
(training/schedule.py), uniform weight averaging of the epochs floor(T * ema_ratio) .. T + ema_extra
(torch.optim.swa_utils) and a BatchNorm pass over the training data; the averaged DBN goes to
--save-path with its variant, input size, dataset, args and final metrics (network.make_checkpoint).
Files beside --save-path (training/run_files.py): <stem>_last.pth, the resumable checkpoint
rewritten after every epoch, and <stem>_log.jsonl, one JSON line per epoch.
"""
import argparse
import copy
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import DATASET_NAMES, DATASET_ROOT_HELP, DatasetError, build_dataset
from datasets.image_dataset import ImageDataset, collate_skip
from datasets.sampler import PKSampler
from datasets.seeded import SeededBatches, SeededDataset
from datasets.synthetic import generate
from losses import ReIDLoss
from network import DBN, RELEASED_FILES, VARIANTS, CheckpointError, make_checkpoint, released_path
from network.flops import count_flops, count_params
from utils import distributed
from training.resume import (atomic_save, last_checkpoint_path, load_training_checkpoint,
                              log_path, rng_state, set_rng_state)
from utils.cli import BooleanFlag, HelpFormatter, default_workers
from utils.console import show_warnings_as_lines
from evaluation.evaluator import MINP_LINE, EvaluationError, evaluate
from utils.malloc import tune_allocator
from training.run_files import (TrainingError, UsageError, append_log, check_save_path, check_training_images,
                             remove_earlier_run, saved_state)
from training.schedule import averaging_start, build_scheduler
from training.flags import check_args, epochs_type, freeze_words, gpus_type

# --demo: the values of the flags a user did not give (explicit flags win)
DEMO = dict(dataset="market1501", dataset_root=os.path.join("data", "demo"), net="small", pretrained="none",
            img_height=128, img_width=64, batch_size=32, instance_num=4, lr=0.05, epochs=(2, 30),
            ema_ratio=0.8, ema_extra=4, erasing=0.0, device="cpu", num_workers=0,
            save_path=os.path.join("params", "demo.pth"))
DEMO_DATA = dict(ids=48, images_per_id=8, cameras=3, seed=0)  # synthetic market1501 for --demo
# flags that may change when resuming; every other flag is the recipe and must match the checkpoint
RUN_FLAGS = {"resume", "dry_run", "demo", "eval", "device", "gpus", "num_workers", "dataset_root", "save_path",
             "dist_timeout", "overwrite"}
# recipe flags that a resumed run may change (a way out of a non-finite loss), with a warning
RESUME_CHANGES = {"lr", "amp", "amp_dtype"}
MAX_SKIPPED = 0.01  # stop when more than this share of an epoch's images cannot be read


class Interrupted(Exception):
    """Ctrl-C / SIGTERM: a checkpoint was written; exit status 128 + signal number."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


# --- command line (flag types and checks: training/flags.py) -------------------------------

def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        "train.py", add_help=add_help, formatter_class=HelpFormatter,
        description="Train DBN on a LEViT backbone (the release's recipe). Defaults are the release's "
                    "Market-1501 LEViT-S command; --demo trains on generated data on the CPU.")
    g = parser.add_argument_group("model")
    g.add_argument("--net", default="small", choices=sorted(VARIANTS), help="backbone: small (LEViT-S) or large (LEViT-L)")
    g.add_argument("--pretrained", default="auto", metavar="PATH|none|auto",
                   help="ImageNet backbone: auto = network/<released file> (a run stops when it is missing), "
                        "none = random weights on purpose, or a path")
    g.add_argument("--std", default=0.1, type=float, help="std of the normal init of the BN layers of the head")
    g.add_argument("--drop", default=0.0, type=float,
                   help="BatchDrop: zero a square of this fraction of every training image's area around a "
                        "random centre (the release's; replaces --erasing when > 0)")
    g.add_argument("--drop-path", default=None, type=float, metavar="RATE",
                   help="stochastic depth rate of the backbone's last block (rising linearly from 0); default "
                        "per --net: 0.05 small, 0.10 large (the release's large value is ambiguous, see docs/recipe.md)")
    g.add_argument("--erasing", default=0.45, type=float,
                   help="batch-level random erasing: with probability 0.5 per training image, zero a rectangle "
                        "of up to this fraction of its area (0 = off)")
    g.add_argument("--freeze", default="", metavar="WORDS",
                   help="comma-separated words; parameters whose names contain one are not trained (e.g. stem,layer1)")
    g.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes (torchrun)")

    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="market1501", choices=DATASET_NAMES, help="training dataset")
    g.add_argument("--dataset-root", default="data", help=DATASET_ROOT_HELP)
    g.add_argument("--img-height", default=256, type=int, help="input height")
    g.add_argument("--img-width", default=128, type=int, help="input width")
    g.add_argument("--instance-num", default=4, type=int, help="K: images per identity in a batch")
    g.add_argument("--num-workers", default=default_workers(), type=int,
                   help="data loading processes (0: in the main process); 4, or the available cores if fewer")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", default=64, type=int,
                   help="global batch P x K (split across processes under torchrun)")
    g.add_argument("--lr", default=1.2e-1, type=float, help="peak learning rate (SGD, Nesterov momentum 0.9, wd 5e-4)")
    g.add_argument("--epochs", default="5,75", type=epochs_type, metavar="W,T",
                   help="linear warm-up from lr/100 over W epochs, cosine from lr at W towards 0 at T")
    g.add_argument("--ema-ratio", default=0.8, type=float,
                   help="average the weights from epoch floor(T*ratio) on (and hold the lr there)")
    g.add_argument("--ema-extra", default=25, type=int, help="epochs after T (total T + extra), all averaged")
    g.add_argument("--norm", default=True, action=BooleanFlag,
                   help="L2-normalise the embeddings inside the triplet loss")
    g.add_argument("--amp", default=None, action=BooleanFlag,
                   help="mixed precision: autocast in --amp-dtype, with a GradScaler for float16 "
                        "(default: on with CUDA, off on the CPU)")
    g.add_argument("--amp-dtype", default="auto", choices=["auto", "float16", "bfloat16"],
                   help="dtype of --amp; auto: float16 on CUDA (the release's), bfloat16 on the CPU")
    g.add_argument("--seed", default=613, type=int, help="seeds weights, data order, augmentation, erasing")

    g = parser.add_argument_group("hardware")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    g.add_argument("--gpus", default=None, type=gpus_type, metavar="IDS",
                   help="GPU ids, e.g. 0,1 (several: DataParallel); default: GPU 0 when CUDA is available. "
                        "Without CUDA: a warning, then the CPU. Under torchrun each process uses cuda:LOCAL_RANK")
    g.add_argument("--dist-timeout", default=1800, type=int, metavar="SECONDS",
                   help="torchrun: how long a process waits for a missing one before failing")

    g = parser.add_argument_group("run")
    g.add_argument("--save-path", default=os.path.join("params", "ema.pth"),
                   help="where the averaged weights go; <stem>_last.pth (resumable checkpoint) and "
                        "<stem>_log.jsonl (one JSON line per epoch) are written beside it")
    g.add_argument("--resume", default=None, metavar="PATH", help="continue from a <stem>_last.pth checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run even if --save-path already holds one (its files are replaced); "
                        "without it a new run there is refused (--demo replaces its own params/demo.pth)")
    g.add_argument("--eval", default=True, action=BooleanFlag,
                   help="evaluate the averaged model on the test split at the end")
    g.add_argument("--dry-run", action="store_true",
                   help="check the flags, the dataset layout and the model, print their sizes and exit")
    g.add_argument("--demo", action="store_true",
                   help=f"generate a small synthetic Market-1501 under {DEMO['dataset_root']} (once) and train "
                        "LEViT-S from scratch on the CPU; flags given explicitly still apply")
    return parser


def parse_args(argv=None):
    """Parse argv; --demo and --resume supply the defaults of the flags not given, then validate."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**DEMO)
    if args.resume:
        if not os.path.isfile(args.resume):
            parser.error(f"--resume {args.resume}: file not found")
        try:
            stored = load_training_checkpoint(args.resume)["args"]
        except CheckpointError as err:
            parser.error(str(err))
        # the run continues with its own settings; flags given now override the run-only ones (RUN_FLAGS)
        parser.set_defaults(**{k: v for k, v in stored.items() if k not in ("resume", "dry_run") and k in vars(args)})
    if args.demo or args.resume:
        args = parser.parse_args(argv)
    if args.demo and not args.resume and args.save_path == DEMO["save_path"]:
        args.overwrite = True  # a second `train.py --demo` replaces the demo's own files (README)
    check_args(args, parser)
    return args


# --- setup ------------------------------------------------------------------------------------

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(args):
    """(device, dist_info, DataParallel device ids or None), printing the one warning for --gpus without CUDA."""
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    dist_info = distributed.init_distributed(use_cuda, args.dist_timeout)
    if dist_info.distributed:
        if args.gpus and len(args.gpus) > 1 and dist_info.rank == 0:
            print(f"--gpus {','.join(map(str, args.gpus))} ignored under torchrun: each process uses "
                  f"{'cuda:LOCAL_RANK' if use_cuda else 'the CPU'}")
        return torch.device("cuda", dist_info.local_rank) if use_cuda else torch.device("cpu"), dist_info, None
    if not use_cuda:
        if args.gpus and args.device == "auto":
            print(f"warning: --gpus {','.join(map(str, args.gpus))}: CUDA is not available on this machine; "
                  "training on the CPU", file=sys.stderr)
        return torch.device("cpu"), dist_info, None
    gpus = args.gpus or [0]
    return torch.device("cuda", gpus[0]), dist_info, (gpus if len(gpus) > 1 else None)


def amp_settings(args, device):
    """(autocast on?, its dtype): --amp defaults to on with CUDA; --amp-dtype auto is float16 on
    CUDA (the release's mixed precision) and bfloat16 on the CPU."""
    use_amp = args.amp if args.amp is not None else device.type == "cuda"
    name = args.amp_dtype if args.amp_dtype != "auto" else ("float16" if device.type == "cuda" else "bfloat16")
    return use_amp, getattr(torch, name)


def missing_pretrained(args):
    """Why a run cannot start from the ImageNet backbone --pretrained auto names (its file is not
    in network/), or None. A resumed run takes its weights from the checkpoint and needs no file."""
    if args.pretrained != "auto" or args.resume or os.path.isfile(released_path(args.net)):
        return None
    return (f"--pretrained auto: the released ImageNet backbone of LEViT-{args.net}, {RELEASED_FILES[args.net]}, "
            f"is not in {os.path.dirname(released_path(args.net))} (network/ of this repository). Put the file "
            "there, or give --pretrained PATH, or --pretrained none to train from scratch on purpose (accuracy "
            "then stays far below the README's figures)")


def build_model(args, num_classes):
    pretrained = None if args.pretrained == "none" else args.pretrained
    if pretrained == "auto":  # missing_pretrained() has let a run through: use the file if it is there
        pretrained = released_path(args.net) if os.path.isfile(released_path(args.net)) else None
    model = DBN(num_classes=num_classes, std=args.std, net=args.net, drop=args.drop,
                erasing=args.erasing, pretrained=pretrained, drop_path=args.drop_path)
    words = freeze_words(args.freeze)
    for name, param in model.named_parameters():
        if any(w in name for w in words):
            param.requires_grad_(False)
    return model


def model_summary(model, args):
    with torch.device("meta"):  # shapes only: counting needs no memory and no compute
        meta = DBN(num_classes=model.num_classes, net=args.net, pretrained=None, mlp_ratio=model.mlp_ratio)
    flops = count_flops(meta, args.img_height, args.img_width)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"model: DBN LEViT-{args.net}, {model.num_classes} classes, {count_params(model):,} parameters "
            f"({trainable:,} trained), {flops / 1e9:.2f} GFLOPs ({flops / 2e9:.2f} G multiply-adds) "
            f"per {args.img_height}x{args.img_width} image")


def build_train_set(dataset, args):
    return ImageDataset(dataset.train, dataset.train_transform(args.img_height, args.img_width))


def build_sampler(dataset, args, dist_info):
    labels = [item[1] for item in dataset.train]
    try:
        return PKSampler(labels, args.batch_size, args.instance_num, seed=args.seed, rank=dist_info.rank,
                         world_size=dist_info.world_size, views=dataset.sampler_views())
    except ValueError as err:  # a batch that does not split over the processes, too few identities: usage
        raise UsageError(f"--batch-size {args.batch_size} --instance-num {args.instance_num} on {dist_info.world_size} "
                         f"process(es): {err}") from None


def build_loader(train_set, sampler, args, epoch, dist_info, device, skip=0):
    """Loader of one epoch (0-based `epoch`), starting at batch `skip`: same batches and augmentation
    for a given seed and epoch whatever --num-workers (see datasets.seeded.SeededBatches)."""
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(args.seed * 1000003 + epoch)
    return DataLoader(train_set, batch_sampler=SeededBatches(sampler, args.seed, epoch, dist_info.rank, skip),
                      num_workers=args.num_workers, collate_fn=collate_skip, generator=generator,
                      pin_memory=device.type == "cuda")


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


# --- training ---------------------------------------------------------------------------------

def train_one_epoch(model, criterion, optimizer, scaler, loader, device, epoch, args, autocast,
                    totals, stop=None, start_step=0, saved=None):
    """One epoch (0-based `epoch`) from batch `start_step` on: forward, loss, backward, step, log.

    `totals` (EpochTotals) is updated in place. Returns the number of batches done in this epoch;
    fewer than the epoch has when `stop` (a StopFlag) was raised. Raises TrainingError on a
    non-finite loss or when more than MAX_SKIPPED of the epoch's images cannot be read; its
    message says how to go on from `saved` (see saved_state).
    """
    model.train()
    steps, per_rank = start_step + len(loader), args.batch_size // distributed.get_world_size()
    planned_images = steps * per_rank
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{args.epochs[1] + args.ema_extra}",
               unit="batch", disable=not distributed.is_main(), dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter()
    step = start_step
    try:  # the bar's line is finished whatever ends the epoch, so no message is glued to it
        for imgs, labels, _, skipped in loader:
            totals.skipped += skipped
            if totals.skipped > MAX_SKIPPED * planned_images:
                then = (f"resume with --resume {saved[0]}" if saved else
                        "rerun (no epoch had finished, nothing to resume)")
                raise TrainingError(f"epoch {epoch + 1}: {totals.skipped} images could not be read (more than "
                                    f"{MAX_SKIPPED:.0%} of the epoch's {planned_images}); the warnings above name "
                                    f"them; fix or remove them and {then}")
            if imgs.shape[0] == 0:  # every image of the batch was unreadable: nothing to learn from
                if distributed.get_world_size() > 1:  # the other processes would wait for this one's gradients
                    raise TrainingError(f"epoch {epoch + 1}, step {step + 1}: no image of this process's batch "
                                        "could be read (see the warnings above)")
                step += 1
                bar.update(1)
                continue
            imgs = imgs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast:
                logits, embeddings = model(imgs)
            loss, terms = criterion(logits, embeddings, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            # one small all-reduce per step: mean loss for the log and a common decision to stop
            status = torch.stack([loss.detach().float(), *terms.values(),
                                  torch.tensor(float(stop.signum if stop else 0), device=loss.device)])
            distributed.all_reduce_mean(status)
            values = status.tolist()
            if not math.isfinite(values[0]):
                lower = f"--lr {args.lr / 2:g}" + (" (or --amp false)" if amp_settings(args, device)[0] else "")
                if saved:
                    then = (f"The checkpoint {saved[0]} ({saved[1]} finished epochs) is kept: resume it with a lower "
                            f"--lr, e.g. --resume {saved[0]} {lower} (a changed --lr is allowed on resume)")
                else:
                    then = ("No epoch had finished, so there is nothing to resume: rerun with a lower --lr, "
                            f"e.g. {lower}")
                raise TrainingError(f"non-finite loss ({values[0]}) at epoch {epoch + 1}, step {step + 1} of {steps}; "
                                    f"training stopped. {then}")
            step += 1
            totals.steps += 1
            totals.images += imgs.shape[0]
            for name, value in zip(["loss", *terms], values[:-1]):
                totals.losses[name] = totals.losses.get(name, 0.0) + value
            elapsed = totals.seconds + time.perf_counter() - start
            bar.set_postfix(loss=f"{values[0]:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{totals.images * distributed.get_world_size() / max(elapsed, 1e-9):.0f}")
            bar.update(1)
            if values[-1]:  # some process was asked to stop
                break
    finally:
        bar.close()
    totals.seconds += time.perf_counter() - start
    return step


@dataclass
class EpochTotals:
    """Running totals of the epoch in progress (a mid-epoch checkpoint keeps them)."""
    steps: int = 0  # batches trained on
    images: int = 0  # of this process
    skipped: int = 0  # unreadable images left out
    seconds: float = 0.0
    losses: dict = field(default_factory=dict)  # "loss" and each term of ReIDLoss -> its sum over the steps

    COUNTERS = ("steps", "images", "skipped", "seconds")

    def state_dict(self):
        """A flat dict of numbers: the counters and the loss sums (the checkpoint's "meter")."""
        return {**{k: getattr(self, k) for k in self.COUNTERS}, **self.losses}

    @classmethod
    def from_state_dict(cls, state):
        return cls(**{k: state[k] for k in cls.COUNTERS}, losses={k: v for k, v in state.items()
                                                                  if k not in cls.COUNTERS})

    def log_record(self, epoch, lr, world_size):
        """The epoch's line of <stem>_log.jsonl: mean loss and terms per step, throughput, skipped images."""
        terms = {k: v / max(self.steps, 1) for k, v in self.losses.items()}
        return {"epoch": epoch + 1, "loss": terms.pop("loss", float("nan")), "terms": terms, "lr": lr,
                "img_per_s": self.images * world_size / max(self.seconds, 1e-9),
                "seconds": round(self.seconds, 3), "skipped": self.skipped}


def save_training_state(path, model, optimizer, scheduler, scaler, averaged, epoch, step, totals, args, sampler):
    """Gather every rank's random state, then rank 0 writes the checkpoint (all ranks must call)."""
    rngs = distributed.all_gather_object(rng_state())
    if not distributed.is_main():
        return
    atomic_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "averaged": averaged.state_dict(),
        "n_averaged": int(averaged.n_averaged), "epoch": epoch, "step": step, "meter": totals.state_dict(),
        "sampler": {"seed": args.seed, "epoch": epoch, "batches_done": step, "world_size": len(rngs)},
        "rng": rngs, "world_size": len(rngs), "args": vars(args),
    }, path)


def check_resume_args(stored, args):
    """Refuse recipe flags that differ from the checkpoint's, except RESUME_CHANGES (warned about).
    Returns the changed RESUME_CHANGES flags."""
    def differ(names):
        return [k for k in names if json_form(stored[k]) != json_form(getattr(args, k))]

    def detail(names):
        return ", ".join(f"--{k.replace('_', '-')} {json_form(getattr(args, k))} (checkpoint: {json_form(stored[k])})"
                         for k in names)

    names = [k for k in stored if k not in RUN_FLAGS and k in vars(args)]
    changed = differ(k for k in names if k not in RESUME_CHANGES)
    if changed:
        raise UsageError(f"--resume continues the run with its own settings; these differ: {detail(changed)}. "
                         "Drop those flags, or start a new run with another --save-path")
    allowed = differ(k for k in names if k in RESUME_CHANGES)
    if allowed and distributed.is_main():
        print(f"warning: resuming with {detail(allowed)}: from here on the run follows another recipe (no longer "
              "its own nor the release's) and is not bit-identical to an uninterrupted run", file=sys.stderr)
    return allowed


def set_base_lr(optimizer, scheduler, lr):
    """A new peak lr for a resumed run: the schedule's factor of the current epoch times `lr`."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def json_form(value):
    return list(value) if isinstance(value, tuple) else value


def main(args):
    device, dist_info, dp_ids = resolve_device(args)
    tune_allocator(device)
    try:
        return train_and_evaluate(args, device, dist_info, dp_ids)
    finally:
        distributed.cleanup()


def train_and_evaluate(args, device, dist_info, dp_ids):
    main_rank = dist_info.rank == 0
    if args.sync_bn and dist_info.distributed and device.type != "cuda":
        raise UsageError("--sync-bn synchronises BatchNorm statistics over GPUs (NCCL); PyTorch's SyncBatchNorm "
                         "does not run on the CPU. Drop --sync-bn (each process then normalises its own share "
                         "of the batch) or train on GPUs")
    problem = missing_pretrained(args)
    if problem and not args.dry_run:  # before any work: no silent from-scratch run
        raise UsageError(problem)
    if main_rank:
        print("args: " + " ".join(f"{k}={json_form(v)}" for k, v in vars(args).items()), flush=True)
        if problem:
            print(f"dry run: a real run stops here (exit status 2): {problem}", flush=True)
    if args.demo:
        ensure_demo_data(args.dataset_root)
    dataset = build_dataset(args.dataset, args.dataset_root)
    if not dataset.train:  # --dataset custom may hold query and gallery only
        raise DatasetError(f"{dataset.root} has no train split (train/ or train.txt) to train on")
    seed_everything(args.seed)  # the same initial weights in every process
    model = build_model(args, dataset.num_classes)
    sampler = build_sampler(dataset, args, dist_info)
    if main_rank:
        print(f"train: {dataset.num_classes} identities, {len(dataset.train)} images")
        print(model_summary(model, args))
    check_save_path(args)
    if args.dry_run:
        if main_rank:
            last = sampler.last_batch_size()  # the release's partial last batch
            print(f"dry run: {len(sampler)} batches of {args.batch_size} per epoch"
                  f"{f' (the last of {last})' if last != args.batch_size else ''}, "
                  f"{args.epochs[1] + args.ema_extra} epochs; nothing trained")
        return None

    checkpoint = load_training_checkpoint(args.resume) if args.resume else None
    epochs_total, start_avg = args.epochs[1] + args.ema_extra, averaging_start(args.epochs[1], args.ema_ratio)
    changed = check_resume_args(checkpoint["args"], args) if checkpoint is not None else []
    if checkpoint is not None and checkpoint["epoch"] >= epochs_total and os.path.isfile(args.save_path):
        if main_rank:
            print(f"resume: {args.resume} is a finished run (all {epochs_total} epochs done) and its averaged "
                  f"weights are in {args.save_path}; nothing to do, nothing rewritten")
        return None
    untrained = untrained_copy(model) if args.demo else None  # the seeded initial weights, resumed or not
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    averaged = AveragedModel(model, use_buffers=False)  # uniform running mean of the weights, BN stats later
    if args.sync_bn and dist_info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model_without_ddp = model
    if dist_info.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif dp_ids:
        model = nn.DataParallel(model, device_ids=dp_ids)

    params = [p for p in model_without_ddp.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    warmup, total = args.epochs
    scheduler = build_scheduler(optimizer, warmup, total, args.ema_ratio)
    use_amp, amp_dtype = amp_settings(args, device)
    # float16 needs loss scaling (its gradients underflow), bfloat16 has float32's range
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)
    # under torchrun the triplets are mined over the global batch, as DataParallel's loss does
    criterion = ReIDLoss(normalize=args.norm, global_triplet=dist_info.distributed)
    train_set = SeededDataset(build_train_set(dataset, args))

    start_epoch, start_step, totals = 0, 0, EpochTotals()
    last_path, log_file = last_checkpoint_path(args.save_path), log_path(args.save_path)
    saved = None  # (path, finished epochs, batches of the next) of the newest checkpoint of this run
    seed_everything(args.seed + dist_info.rank)  # per-process randomness (erasing, stochastic depth)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if "lr" in changed:
            set_base_lr(optimizer, scheduler, args.lr)
        if scaler.is_enabled() and checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
        averaged.load_state_dict(checkpoint["averaged"])
        start_epoch, start_step = checkpoint["epoch"], checkpoint.get("step", 0)
        saved = (args.resume, start_epoch, start_step)
        totals = EpochTotals.from_state_dict(checkpoint["meter"]) if checkpoint.get("meter") else EpochTotals()
        if len(checkpoint["rng"]) == dist_info.world_size:
            set_rng_state(checkpoint["rng"][dist_info.rank])
        elif main_rank:
            print(f"resume: the checkpoint was written by {len(checkpoint['rng'])} processes, this run has "
                  f"{dist_info.world_size}; random states start afresh (the run is no longer bit-identical)")
        if main_rank:
            append_log(log_file, None, completed_epochs=start_epoch)
            print(f"resume: {args.resume}, {start_epoch} epochs done" +
                  (f", epoch {start_epoch + 1} from batch {start_step + 1}" if start_step else ""))
        del checkpoint
    elif main_rank:
        remove_earlier_run(args.save_path)  # --overwrite (check_save_path refused otherwise)
    if start_epoch < epochs_total:
        check_training_images(dataset.train, saved, MAX_SKIPPED)

    with StopFlag() as stop:
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, epochs_total):
                loader = build_loader(train_set, sampler, args, epoch, dist_info, device, skip=start_step)
                steps = train_one_epoch(model, criterion, optimizer, scaler, loader, device, epoch, args, autocast,
                                        totals, stop, start_step, saved)
                if steps < len(sampler):  # interrupted: a mid-epoch checkpoint, exact to resume
                    save_training_state(last_path, model_without_ddp, optimizer, scheduler, scaler, averaged,
                                        epoch, steps, totals, args, sampler)
                    raise Interrupted(stop.signum or signal.SIGINT,
                                      f"interrupted in epoch {epoch + 1} after batch {steps}; resume with "
                                      f"--resume {last_path}")
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                if epoch + 1 >= start_avg:
                    averaged.update_parameters(model_without_ddp)
                if main_rank:
                    append_log(log_file, totals.log_record(epoch, lr, dist_info.world_size))
                    if totals.skipped:
                        print(f"epoch {epoch + 1}: {totals.skipped} unreadable images skipped (named in the "
                              "warnings above)", file=sys.stderr, flush=True)
                start_step, totals = 0, EpochTotals()
                save_training_state(last_path, model_without_ddp, optimizer, scheduler, scaler, averaged,
                                    epoch + 1, 0, totals, args, sampler)
                saved = (last_path, epoch + 1, 0)
        except KeyboardInterrupt:  # a second Ctrl-C (StopFlag): stop at once, the last checkpoint stands
            raise Interrupted(signal.SIGINT, f"stopped at once in epoch {epoch + 1}; " + saved_state(saved)) from None

    # BatchNorm statistics of the averaged weights: one pass over the training data (as the release)
    try:
        loader = build_loader(train_set, sampler, args, epochs_total, dist_info, device)
        recompute_bn(averaged.module, loader, device, dp_ids, autocast)
        if main_rank:
            save_model(averaged.module, dataset, args)
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT, f"interrupted during the BatchNorm pass after the last epoch, before "
                                         f"{args.save_path} was written; every epoch is in {last_path}: "
                                         f"--resume {last_path} redoes the pass and saves") from None
    if main_rank:
        print(f"saved the average of {int(averaged.n_averaged)} epochs' weights ({start_avg}..{epochs_total}) "
              f"to {args.save_path}")
    distributed.cleanup()
    if not (main_rank and args.eval):
        return None
    try:
        metrics = final_evaluation(averaged.module, untrained, dataset, args, device)
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT, f"interrupted during the final evaluation; the averaged weights are "
                                         f"saved in {args.save_path} ({evaluate_command(args)})") from None
    except EvaluationError as err:
        raise DatasetError(f"{err}\nTraining finished and its averaged weights are saved in {args.save_path}; "
                           f"once the test data is fixed, {evaluate_command(args)}") from None
    save_model(averaged.module, dataset, args, metrics)  # the same weights, now with their test metrics
    return metrics


def save_model(model, dataset, args, metrics=None):
    """--save-path: the DBN's state_dict with its variant, input size, dataset, args and metrics
    (network.checkpoint.make_checkpoint), written atomically."""
    atomic_save(make_checkpoint(model, args.img_height, args.img_width, dataset=args.dataset,
                                transform=dataset.family, args=args, metrics=metrics), args.save_path)


def recompute_bn(model, loader, device, dp_ids, autocast):
    """BatchNorm statistics of `model` (the averaged weights) from one pass of `loader` in train mode,
    with a cumulative average (torch.optim.swa_utils.update_bn), as the release.

    With several --gpus (`dp_ids`) the pass runs through DataParallel, as the release's does: every
    batch is split over the GPUs and only the replica on the first GPU shares the model's buffers
    (the others update copies that are dropped), so the statistics are those of GPU 0's share of
    each batch. Under torchrun each process passes its own share and the statistics are then
    averaged over the processes.
    """
    bn_model = nn.DataParallel(model, device_ids=dp_ids) if dp_ids else model
    with autocast:
        update_bn((batch for batch in loader if batch[0].shape[0]), bn_model, device=device)
    distributed.average_bn_statistics(model)


def evaluate_command(args):
    return (f"evaluate them with python test_{args.dataset}.py --weights {args.save_path} --net {args.net} "
            f"--img-height {args.img_height} --img-width {args.img_width} --dataset-root {args.dataset_root}")


def final_evaluation(model, untrained, dataset, args, device):
    options = dict(image_size=(args.img_height, args.img_width), batch_size=args.batch_size,
                   num_workers=args.num_workers)  # the protocol's own defaults (the test scripts')
    metrics, line = evaluate(model.eval(), dataset, **options)
    if "mINP" in metrics:  # the trained model's, before the comparison with the untrained one
        print(MINP_LINE.format(**metrics))
    if untrained is not None:
        base, _ = evaluate(untrained.to(device).eval(), dataset, **options)
        print(f"untrained (random init) mAP:{base['mAP']:f} top1:{base['top1']:f} | "
              f"trained mAP:{metrics['mAP']:f} top1:{metrics['top1']:f}")
        metrics["untrained"] = base
    print(line, flush=True)
    return metrics


def untrained_copy(model):
    return copy.deepcopy(model).eval()


def ensure_demo_data(root):
    folder = os.path.join(root, "market1501")
    # only rank 0 looks and writes; every rank waits at the barrier, whatever it would have seen
    if distributed.is_main() and not os.path.isdir(folder):
        print(f"demo: generating a synthetic Market-1501 ({DEMO_DATA['ids']} training identities) under {folder}")
        generate("market1501", root, **DEMO_DATA)
    distributed.barrier()




def cli(argv=None):
    """`python train.py ...`: parse, run, and turn the known failures into a message and an exit status
    (2: usage, data or checkpoint; 1: training stopped; 128 + signal: interrupted), no traceback."""
    show_warnings_as_lines()
    args = parse_args(argv)
    try:
        main(args)
    except (DatasetError, CheckpointError, UsageError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as err:
        print(f"train.py: {err}", file=sys.stderr)
        sys.exit(128 + int(err.signum))


if __name__ == "__main__":
    cli()
