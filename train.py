"""Train DBN (LEViT backbone) for re-identification and fine-grained retrieval, as the release.

    python train.py --demo                                   # synthetic data, CPU, a few minutes
    python train.py --net small --img-height 256 --img-width 128 --batch-size 64 --lr 1.2e-1 \
        --dataset market1501 --gpus 0,1 --epochs 5,75 --ema-ratio 0.80 --ema-extra 25 \
        --instance-num 4 --erasing 0.45 --save-path params/ema.pth --dataset-root data
    torchrun --nproc-per-node 2 train.py ...                 # DistributedDataParallel

Recipe: P x K batches (PKSampler), loss = mean of 5 cross-entropy and 2 batch-hard soft-margin
triplet terms (losses/), SGD with Nesterov momentum, the release's warm-up / cosine / hold schedule
(utils/schedule.py), uniform weight averaging of the epochs floor(T * ema_ratio) .. T + ema_extra
(torch.optim.swa_utils) and a BatchNorm pass over the training data; the averaged DBN goes to
--save-path with its variant, input size, dataset, args and final metrics (network.make_checkpoint).
Files beside --save-path (utils/checkpoint.py): <stem>_last.pth, the resumable checkpoint
rewritten after every epoch, and <stem>_log.jsonl, one JSON line per epoch.
"""
import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import DATASET_NAMES, DatasetError, build_dataset
from losses import ReIDLoss
from network import DBN, RELEASED_FILES, VARIANTS, CheckpointError, released_path
from utils import distributed as du
from utils.checkpoint import (SeededBatches, SeededDataset, atomic_save, last_checkpoint_path, load_training_checkpoint,
                              log_path, rng_state, set_rng_state)
from utils.console import show_warnings_as_lines
from utils.evaluation import EvaluationError, default_workers
from utils.malloc import keep_freed_memory
from utils.schedule import averaging_start, build_scheduler, lr_factor

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


class UsageError(ValueError):
    """A flag value that turns out to be invalid once the data or the checkpoint is known."""


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, unreadable images); the last checkpoint is kept."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM: a checkpoint was written; exit status 128 + signal number."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


# --- command line -----------------------------------------------------------------------------

def epochs_type(text):
    parts = str(text).split(",")
    try:
        warmup, total = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two integers W,T (warm-up epochs, end of the cosine), e.g. 5,75; got {text!r}") from None
    if not 0 <= warmup < total:
        raise argparse.ArgumentTypeError(f"expected 0 <= W < T, e.g. 5,75; got W={warmup}, T={total}")
    return warmup, total


def gpus_type(text):
    try:
        ids = [int(p) for p in str(text).split(",") if p.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated GPU ids, e.g. 0,1; got {text!r}") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"expected distinct GPU ids >= 0, e.g. 0,1; got {text!r}")
    return ids


def bool_type(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y", "t", "on"):
        return True
    if value in ("0", "false", "no", "n", "f", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" except for flags without a meaningful default."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


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
                        "per --net: 0.05 small, 0.10 large (the release's large value is ambiguous, see README)")
    g.add_argument("--erasing", default=0.45, type=float,
                   help="batch-level random erasing: with probability 0.5 per training image, zero a rectangle "
                        "of up to this fraction of its area (0 = off)")
    g.add_argument("--freeze", default="", metavar="WORDS",
                   help="comma-separated words; parameters whose names contain one are not trained (e.g. stem,layer1)")
    g.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes (torchrun)")

    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="market1501", choices=DATASET_NAMES, help="training dataset")
    g.add_argument("--dataset-root", default="data",
                   help="folder holding the dataset folders (market1501/, MSMT17/, DukeMTMC-reID/, VeRi/, "
                        "VehicleID_V1.0/, CARS/, CUB_200_2011/, University-Release/, cuhk03-np/); "
                        "--dataset custom: the dataset folder itself")
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
    g.add_argument("--norm", default=True, type=bool_type, metavar="{true,false}",
                   help="L2-normalise the embeddings inside the triplet loss")
    g.add_argument("--amp", default=None, type=bool_type, nargs="?", const=True, metavar="{true,false}",
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
    g.add_argument("--eval", default=True, action=argparse.BooleanOptionalAction,
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


def check_pretrained(args, parser):
    """--pretrained PATH must be a readable LEViT backbone of --net (said in train.py's flags)."""
    from network import detect_architecture, read_checkpoint, unwrap_state_dict
    try:
        arch = detect_architecture(unwrap_state_dict(read_checkpoint(args.pretrained)))
    except CheckpointError as err:
        parser.error(f"--pretrained: {err}")
    if arch["kind"] == "dbn":
        parser.error(f"--pretrained {args.pretrained} is a trained DBN ReID model, not an ImageNet backbone; "
                     "evaluate it with test_<dataset>.py --weights, or continue its run with --resume <stem>_last.pth")
    if arch["kind"] == "backbone" and arch["variant"] not in (None, args.net):
        parser.error(f"--pretrained {args.pretrained} is a LEViT-{arch['variant']} backbone (embed_dim "
                     f"{arch['embed_dim']}) but --net {args.net} was given; pass --net {arch['variant']}")


def check_args(args, parser):
    """Reject invalid values up front, naming the flag and what is allowed."""
    args.epochs = tuple(args.epochs)
    warmup, total = args.epochs
    for name in ("batch_size", "instance_num", "img_height", "img_width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.batch_size % args.instance_num:
        parser.error(f"--batch-size {args.batch_size} is not divisible by --instance-num {args.instance_num}: "
                     f"a batch is P identities x K={args.instance_num} images (e.g. --batch-size "
                     f"{max(1, round(args.batch_size / args.instance_num)) * args.instance_num})")
    if min(args.img_height, args.img_width) < 16:
        parser.error(f"--img-height/--img-width must be at least 16 (output stride 16), got "
                     f"{args.img_height}x{args.img_width}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if not 0 < args.ema_ratio <= 1:
        parser.error(f"--ema-ratio must be in (0, 1], got {args.ema_ratio}")
    start = averaging_start(total, args.ema_ratio)
    if start < 1:
        parser.error(f"--ema-ratio {args.ema_ratio} with T={total}: averaging would start at epoch "
                     f"floor(T*ratio) = 0; use a ratio of at least {1 / total:.3g}")
    if lr_factor(start, warmup, total, args.ema_ratio) == 0:
        parser.error(f"--ema-ratio {args.ema_ratio} with --epochs {warmup},{total}: the lr is held from epoch "
                     f"floor(T*ratio) = {start} on at the cosine's value there, which is 0 at T, so every averaged "
                     f"epoch would train at lr 0; use a ratio below {start / total:g} (the release's: 0.8)")
    if args.ema_extra < 0:
        parser.error(f"--ema-extra must be 0 or more, got {args.ema_extra}")
    if args.erasing != 0 and not 0.02 <= args.erasing <= 1:
        parser.error(f"--erasing is the largest erased area fraction: 0 (off) or in [0.02, 1], got {args.erasing}")
    if not 0 <= args.drop < 1:
        parser.error(f"--drop must be in [0, 1), got {args.drop}")
    if args.drop_path is None:
        args.drop_path = VARIANTS[args.net]["drop_path"]
    if not 0 <= args.drop_path < 1:
        parser.error(f"--drop-path must be in [0, 1) (0 = off), got {args.drop_path}")
    if args.std < 0:
        parser.error(f"--std must be 0 or more, got {args.std}")
    if args.num_workers < 0:
        parser.error(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.pretrained not in ("none", "auto") and not os.path.isfile(args.pretrained):
        parser.error(f"--pretrained {args.pretrained}: file not found (give a backbone file, 'auto' or 'none')")
    if args.pretrained not in ("none", "auto") and not args.resume:
        check_pretrained(args, parser)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu (or auto)")
    if args.gpus and torch.cuda.is_available() and args.device != "cpu":
        bad = [i for i in args.gpus if i >= torch.cuda.device_count()]
        if bad:
            parser.error(f"--gpus {','.join(map(str, args.gpus))}: no GPU {bad[0]} (this machine has "
                         f"{torch.cuda.device_count()}: ids 0..{torch.cuda.device_count() - 1})")
    words = [w.strip() for w in args.freeze.split(",") if w.strip()]
    if words:
        with torch.device("meta"):
            names = [n for n, _ in DBN(num_classes=2, net=args.net, pretrained=None).named_parameters()]
        unknown = [w for w in words if not any(w in n for n in names)]
        if unknown:
            top = sorted({n.split(".")[0] for n in names})
            parser.error(f"--freeze {unknown[0]!r} matches no parameter name; parameters start with "
                         f"{', '.join(top)} (e.g. --freeze stem,layer1)")
    return args


# --- setup ------------------------------------------------------------------------------------

def seed_everything(seed):
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(args):
    """(device, dist_info, DataParallel device ids or None), printing the one warning for --gpus without CUDA."""
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    info = du.init_distributed(use_cuda, args.dist_timeout)
    if info.distributed:
        if args.gpus and len(args.gpus) > 1 and info.rank == 0:
            print(f"--gpus {','.join(map(str, args.gpus))} ignored under torchrun: each process uses "
                  f"{'cuda:LOCAL_RANK' if use_cuda else 'the CPU'}")
        return torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu"), info, None
    if not use_cuda:
        if args.gpus and args.device == "auto":
            print(f"warning: --gpus {','.join(map(str, args.gpus))}: CUDA is not available on this machine; "
                  "training on the CPU", file=sys.stderr)
        return torch.device("cpu"), info, None
    gpus = args.gpus or [0]
    return torch.device("cuda", gpus[0]), info, (gpus if len(gpus) > 1 else None)


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
    model = DBN(num_classes=num_classes, num_parts=(1, 2), std=args.std, net=args.net, drop=args.drop,
                erasing=args.erasing, pretrained=pretrained, drop_path=args.drop_path)
    words = [w.strip() for w in args.freeze.split(",") if w.strip()]
    for name, param in model.named_parameters():
        if any(w in name for w in words):
            param.requires_grad_(False)
    return model


def model_summary(model, args):
    from network.flops import count_flops, count_params
    with torch.device("meta"):  # shapes only: counting needs no memory and no compute
        meta = DBN(num_classes=model.num_classes, net=args.net, pretrained=None, mlp_ratio=model.mlp_ratio)
    flops = count_flops(meta, args.img_height, args.img_width)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"model: DBN LEViT-{args.net}, {model.num_classes} classes, {count_params(model):,} parameters "
            f"({trainable:,} trained), {flops / 1e9:.2f} GFLOPs ({flops / 2e9:.2f} G multiply-adds) "
            f"per {args.img_height}x{args.img_width} image")


def check_training_images(items, saved):
    """Open the header of every training image before training: list every unreadable one and
    stop (TrainingError) when they are more than MAX_SKIPPED of the training set."""
    from PIL import Image
    from datasets.image_dataset import DECODE_ERRORS
    bad = []
    for path, *_ in items:
        try:
            with Image.open(path):  # the header only: cheap
                pass
        except DECODE_ERRORS as err:  # Pillow's message repeats the path
            bad.append((path, str(err).replace(f"'{path}'", "").replace(path, "").strip(" :") or type(err).__name__))
    if not bad:
        return
    if du.is_main():
        tqdm.write(f"{len(bad)} of the {len(items)} training images cannot be read:", file=sys.stderr)
        for path, err in bad:
            tqdm.write(f"  {path}: {err}", file=sys.stderr)
    if len(bad) > MAX_SKIPPED * len(items):
        then = f"resume with --resume {saved[0]}" if saved else "rerun"
        raise TrainingError(f"{len(bad)} of the {len(items)} training images cannot be read (more than "
                            f"{MAX_SKIPPED:.0%}; listed above); fix or remove them and {then}")
    if du.is_main():
        tqdm.write(f"warning: training goes on without them (at most {MAX_SKIPPED:.0%} may be unreadable)",
                   file=sys.stderr)


def check_save_path(args):
    """Before any training: --save-path must be writable and, for a new run, hold no earlier run
    (unless --overwrite). Raises UsageError saying what is there and what to do."""
    path = args.save_path
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--save-path {path}: cannot write there, {existing} is a file, not a folder; "
                         "choose another --save-path")
    if os.path.isdir(path):
        raise UsageError(f"--save-path {path} is a folder; give a file name, e.g. {os.path.join(path, 'ema.pth')}")
    try:
        if args.dry_run:  # creates nothing: the nearest existing folder must let us create the rest
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        else:
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError as err:
        raise UsageError(f"--save-path {path}: cannot write in {folder} ({err.strerror or err}); "
                         "choose a writable --save-path") from None
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
            done, total = earlier["epoch"], earlier["args"]["epochs"][1] + earlier["args"]["ema_extra"]
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


def remove_earlier_run(save_path):
    """A new run with --overwrite: the earlier run's weights, checkpoint and log go first, so that
    no file of it is left beside the new run's."""
    for path in (save_path, last_checkpoint_path(save_path), log_path(save_path)):
        if os.path.isfile(path):
            os.remove(path)


def build_train_set(dataset, args):
    from datasets.image_dataset import ImageDataset
    from datasets.transforms import build_transform
    return ImageDataset(dataset.train, build_transform(dataset.family, args.img_height, args.img_width, train=True))


def build_sampler(dataset, args, info):
    from datasets.sampler import PKSampler
    labels = [item[1] for item in dataset.train]
    views = [item[2] for item in dataset.train] if dataset.family == "university" else None
    try:
        return PKSampler(labels, args.batch_size, args.instance_num, seed=args.seed, rank=info.rank,
                         world_size=info.world_size, views=views)
    except ValueError as err:  # a batch that does not split over the processes, too few identities: usage
        raise UsageError(f"--batch-size {args.batch_size} --instance-num {args.instance_num} on {info.world_size} "
                         f"process(es): {err}") from None


def build_loader(train_set, sampler, args, epoch, info, device, skip=0):
    """Loader of one epoch (0-based `epoch`), starting at batch `skip`: same batches and augmentation
    for a given seed and epoch whatever --num-workers (see utils.checkpoint.SeededBatches)."""
    from datasets.image_dataset import collate_skip
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(args.seed * 1000003 + epoch)
    return DataLoader(train_set, batch_sampler=SeededBatches(sampler, args.seed, epoch, info.rank, skip),
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
        if du.is_main():
            print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                  "(again to stop at once)", file=sys.stderr, flush=True)


# --- training ---------------------------------------------------------------------------------

def train_one_epoch(model, criterion, optimizer, scaler, loader, device, epoch, args, autocast,
                    meter, stop=None, start_step=0, saved=None):
    """One epoch (0-based `epoch`) from batch `start_step` on: forward, loss, backward, step, log.

    `meter` (dict of sums) is updated in place. Returns the number of batches done in this epoch;
    fewer than the epoch has when `stop` (a StopFlag) was raised. Raises TrainingError on a
    non-finite loss or when more than MAX_SKIPPED of the epoch's images cannot be read; its
    message says how to go on from `saved` (see saved_state).
    """
    model.train()
    steps, per_rank = start_step + len(loader), args.batch_size // du.get_world_size()
    planned_images = steps * per_rank
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{args.epochs[1] + args.ema_extra}",
               unit="batch", disable=not du.is_main(), dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter()
    step = start_step
    try:  # the bar's line is finished whatever ends the epoch, so no message is glued to it
        for imgs, labels, _, skipped in loader:
            meter["skipped"] += skipped
            if meter["skipped"] > MAX_SKIPPED * planned_images:
                then = (f"resume with --resume {saved[0]}" if saved else
                        "rerun (no epoch had finished, nothing to resume)")
                raise TrainingError(f"epoch {epoch + 1}: {meter['skipped']} images could not be read (more than "
                                    f"{MAX_SKIPPED:.0%} of the epoch's {planned_images}); the warnings above name "
                                    f"them; fix or remove them and {then}")
            if imgs.shape[0] == 0:  # every image of the batch was unreadable: nothing to learn from
                if du.get_world_size() > 1:  # the other processes would wait for this one's gradients
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
            du.all_reduce_mean(status)
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
            meter["steps"] += 1
            meter["images"] += imgs.shape[0]
            for name, value in zip(["loss", *terms], values[:-1]):
                meter[name] = meter.get(name, 0.0) + value
            elapsed = meter["seconds"] + time.perf_counter() - start
            bar.set_postfix(loss=f"{values[0]:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{meter['images'] * du.get_world_size() / max(elapsed, 1e-9):.0f}")
            bar.update(1)
            if values[-1]:  # some process was asked to stop
                break
    finally:
        bar.close()
    meter["seconds"] += time.perf_counter() - start
    return step


def new_meter():
    return {"steps": 0, "images": 0, "skipped": 0, "seconds": 0.0}


def epoch_record(epoch, meter, lr, world_size):
    steps = max(meter["steps"], 1)
    terms = {k: v / steps for k, v in meter.items() if k not in ("steps", "images", "skipped", "seconds")}
    return {"epoch": epoch + 1, "loss": terms.pop("loss", float("nan")), "terms": terms, "lr": lr,
            "img_per_s": meter["images"] * world_size / max(meter["seconds"], 1e-9),
            "seconds": round(meter["seconds"], 3), "skipped": meter["skipped"]}


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


def save_training_state(path, model, optimizer, scheduler, scaler, averaged, epoch, step, meter, args, sampler):
    """Gather every rank's random state, then rank 0 writes the checkpoint (all ranks must call)."""
    rngs = du.all_gather_object(rng_state())
    if not du.is_main():
        return
    atomic_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "averaged": averaged.state_dict(),
        "n_averaged": int(averaged.n_averaged), "epoch": epoch, "step": step, "meter": dict(meter),
        "sampler": {"seed": args.seed, "epoch": epoch, "batches_done": step, "world_size": len(rngs)},
        "rng": rngs, "world_size": len(rngs), "args": vars(args),
    }, path)


def check_resume_args(stored, args):
    """Refuse recipe flags that differ from the checkpoint's, except RESUME_CHANGES (warned about).
    Returns the changed RESUME_CHANGES flags."""
    def differ(names):
        return [k for k in names if _plain(stored[k]) != _plain(getattr(args, k))]

    def detail(names):
        return ", ".join(f"--{k.replace('_', '-')} {_plain(getattr(args, k))} (checkpoint: {_plain(stored[k])})"
                         for k in names)

    names = [k for k in stored if k not in RUN_FLAGS and k in vars(args)]
    changed = differ(k for k in names if k not in RESUME_CHANGES)
    if changed:
        raise UsageError(f"--resume continues the run with its own settings; these differ: {detail(changed)}. "
                         "Drop those flags, or start a new run with another --save-path")
    allowed = differ(k for k in names if k in RESUME_CHANGES)
    if allowed and du.is_main():
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


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def main(args):
    device, info, dp_ids = resolve_device(args)
    if device.type == "cpu":
        keep_freed_memory()  # reuse freed activations instead of faulting fresh pages in every step
    try:
        return _run(args, device, info, dp_ids)
    finally:
        du.cleanup()


def _run(args, device, info, dp_ids):
    main_rank = info.rank == 0
    if args.sync_bn and info.distributed and device.type != "cuda":
        raise UsageError("--sync-bn synchronises BatchNorm statistics over GPUs (NCCL); PyTorch's SyncBatchNorm "
                         "does not run on the CPU. Drop --sync-bn (each process then normalises its own share "
                         "of the batch) or train on GPUs")
    problem = missing_pretrained(args)
    if problem and not args.dry_run:  # before any work: no silent from-scratch run
        raise UsageError(problem)
    if main_rank:
        print("args: " + " ".join(f"{k}={_plain(v)}" for k, v in vars(args).items()), flush=True)
        if problem:
            print(f"dry run: a real run stops here (exit status 2): {problem}", flush=True)
    if args.demo:
        ensure_demo_data(args.dataset_root)
    dataset = build_dataset(args.dataset, args.dataset_root)
    if not dataset.train:  # --dataset custom may hold query and gallery only
        raise DatasetError(f"{dataset.root} has no train split (train/ or train.txt) to train on")
    seed_everything(args.seed)  # the same initial weights in every process
    model = build_model(args, dataset.num_classes)
    sampler = build_sampler(dataset, args, info)
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
    untrained = copy_for_demo(model) if args.demo else None  # the seeded initial weights, resumed or not
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    averaged = AveragedModel(model, use_buffers=False)  # uniform running mean of the weights, BN stats later
    if args.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model_without_ddp = model
    if info.distributed:
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
    criterion = ReIDLoss(normalize=args.norm, global_triplet=info.distributed)
    train_set = SeededDataset(build_train_set(dataset, args))

    start_epoch, start_step, meter = 0, 0, new_meter()
    last_path, log_file = last_checkpoint_path(args.save_path), log_path(args.save_path)
    saved = None  # (path, finished epochs, batches of the next) of the newest checkpoint of this run
    seed_everything(args.seed + info.rank)  # per-process randomness (erasing, stochastic depth)
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
        meter = checkpoint.get("meter") or new_meter()
        if len(checkpoint["rng"]) == info.world_size:
            set_rng_state(checkpoint["rng"][info.rank])
        elif main_rank:
            print(f"resume: the checkpoint was written by {len(checkpoint['rng'])} processes, this run has "
                  f"{info.world_size}; random states start afresh (the run is no longer bit-identical)")
        if main_rank:
            append_log(log_file, None, completed_epochs=start_epoch)
            print(f"resume: {args.resume}, {start_epoch} epochs done" +
                  (f", epoch {start_epoch + 1} from batch {start_step + 1}" if start_step else ""))
        del checkpoint
    elif main_rank:
        remove_earlier_run(args.save_path)  # --overwrite (check_save_path refused otherwise)
    if start_epoch < epochs_total:
        check_training_images(dataset.train, saved)

    with StopFlag() as stop:
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, epochs_total):
                loader = build_loader(train_set, sampler, args, epoch, info, device, skip=start_step)
                steps = train_one_epoch(model, criterion, optimizer, scaler, loader, device, epoch, args, autocast,
                                        meter, stop, start_step, saved)
                if steps < len(sampler):  # interrupted: a mid-epoch checkpoint, exact to resume
                    save_training_state(last_path, model_without_ddp, optimizer, scheduler, scaler, averaged,
                                        epoch, steps, meter, args, sampler)
                    raise Interrupted(stop.signum or signal.SIGINT,
                                      f"interrupted in epoch {epoch + 1} after batch {steps}; resume with "
                                      f"--resume {last_path}")
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                if epoch + 1 >= start_avg:
                    averaged.update_parameters(model_without_ddp)
                if main_rank:
                    append_log(log_file, epoch_record(epoch, meter, lr, info.world_size))
                    if meter["skipped"]:
                        print(f"epoch {epoch + 1}: {meter['skipped']} unreadable images skipped (named in the "
                              "warnings above)", file=sys.stderr, flush=True)
                start_step, meter = 0, new_meter()
                save_training_state(last_path, model_without_ddp, optimizer, scheduler, scaler, averaged,
                                    epoch + 1, 0, meter, args, sampler)
                saved = (last_path, epoch + 1, 0)
        except KeyboardInterrupt:  # a second Ctrl-C (StopFlag): stop at once, the last checkpoint stands
            raise Interrupted(signal.SIGINT, f"stopped at once in epoch {epoch + 1}; " + saved_state(saved)) from None

    # BatchNorm statistics of the averaged weights: one pass over the training data (as the release)
    try:
        loader = build_loader(train_set, sampler, args, epochs_total, info, device)
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
    du.cleanup()
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
    from network import make_checkpoint
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
    du.average_bn_statistics(model)


def evaluate_command(args):
    return (f"evaluate them with python test_{args.dataset}.py --weights {args.save_path} --net {args.net} "
            f"--img-height {args.img_height} --img-width {args.img_width} --dataset-root {args.dataset_root}")


def saved_state(saved):
    """What the newest checkpoint of the run holds, and how to go on from it."""
    if saved is None:
        return "no epoch had finished, so nothing was saved: rerun the same command to start again"
    path, epochs, step = saved
    where = f"{epochs} finished epochs" + (f" and {step} batches of the next" if step else "")
    return f"the checkpoint {path} holds {where}: resume with --resume {path}"


def final_evaluation(model, untrained, dataset, args, device):
    from utils.evaluation import MINP_LINE, evaluate
    metrics, line = evaluate(model.eval(), dataset, args)
    if "mINP" in metrics:  # the trained model's, before the comparison with the untrained one
        print(MINP_LINE.format(**metrics))
    if untrained is not None:
        base, _ = evaluate(untrained.to(device).eval(), dataset, args)
        print(f"untrained (random init) mAP:{base['mAP']:f} top1:{base['top1']:f} | "
              f"trained mAP:{metrics['mAP']:f} top1:{metrics['top1']:f}")
        metrics["untrained"] = base
    print(line, flush=True)
    return metrics


def copy_for_demo(model):
    import copy
    return copy.deepcopy(model).eval()


def ensure_demo_data(root):
    folder = os.path.join(root, "market1501")
    # only rank 0 looks and writes; every rank waits at the barrier, whatever it would have seen
    if du.is_main() and not os.path.isdir(folder):
        from datasets.synthetic import generate
        print(f"demo: generating a synthetic Market-1501 ({DEMO_DATA['ids']} training identities) under {folder}")
        generate("market1501", root, **DEMO_DATA)
    du.barrier()




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
