"""train.py's flag types and the checks of its flags once parsed: each error names the flag and what is allowed."""
import argparse
import math
import os
import sys
import warnings

import torch

from network import (DBN, RELEASED_FILES, VARIANTS, CheckpointError, detect_architecture, out_of_range, read_checkpoint,
                     released_path, unwrap_state_dict)
from training.compile import check_compile
from training.resume import last_checkpoint_path, load_training_checkpoint, log_path
from training.run_state import UsageError
from training.schedule import averaging_start, lr_factor
from utils import distributed
from utils.cli import BooleanFlag, check_gpu, default_workers, require_at_least
from utils.device import pick_device


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


def add_amp_flags(group):
    """--amp and --amp-dtype (train.py and pretrain.py; see amp_settings)."""
    group.add_argument("--amp", default=None, action=BooleanFlag,
                       help="mixed precision: autocast in --amp-dtype, with a GradScaler for float16 "
                            "(default: on with CUDA, off on the CPU)")
    group.add_argument("--amp-dtype", default="auto", choices=["auto", "float16", "bfloat16"],
                       help="dtype of --amp; auto: float16 on CUDA (the release's), bfloat16 on the CPU")


def add_hardware_flags(parser):
    """The "hardware" group of train.py and pretrain.py: --device, --gpus, --dist-timeout (training_device)."""
    g = parser.add_argument_group("hardware")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    g.add_argument("--gpus", default=None, type=gpus_type, metavar="IDS",
                   help="GPU ids, e.g. 0,1 (several: DataParallel); default: GPU 0 when CUDA is available. "
                        "Without CUDA: a warning, then the CPU. Under torchrun each process uses cuda:LOCAL_RANK")
    g.add_argument("--dist-timeout", default=1800, type=int, metavar="SECONDS",
                   help="torchrun: how long a process waits for a missing one before failing")


def freeze_words(text):
    """--freeze stem,layer1 -> ["stem", "layer1"]: parameters whose names contain one are not trained."""
    return [w.strip() for w in text.split(",") if w.strip()]


def check_pretrained(args, parser):
    """--pretrained PATH must be a readable LEViT backbone of --net (said in train.py's flags)."""
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
    require_at_least(parser, args, 1, "batch_size", "instance_num")
    if args.instance_num == 1:
        warnings.warn("--instance-num 1: a batch holds one image of each identity, so the triplet loss has no "
                      "positive pair and only the cross-entropy trains; the release uses 4")
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
    require_at_least(parser, args, 0, "ema_extra")
    if args.drop_path is None:
        args.drop_path = VARIANTS[args.net]["drop_path"]
    problem = out_of_range(erasing=args.erasing, drop=args.drop, drop_path=args.drop_path)
    if problem:
        parser.error(f"--{problem[0].replace('_', '-')} {problem[1]}")
    if args.num_workers is None:  # loader processes help a GPU run; on the CPU they compete with the training
        args.num_workers = default_workers() if args.device != "cpu" and torch.cuda.is_available() else 0
    require_at_least(parser, args, 0, "std", "num_workers", "eval_period")
    if args.pretrained not in ("none", "auto") and not os.path.isfile(args.pretrained):
        parser.error(f"--pretrained {args.pretrained}: file not found (give a backbone file, 'auto' or 'none')")
    if args.pretrained not in ("none", "auto") and not args.resume:
        check_pretrained(args, parser)
    if args.device == "cuda":
        check_gpu(parser, "--device cuda")
    if args.gpus and torch.cuda.is_available() and args.device != "cpu":
        for index in args.gpus:
            check_gpu(parser, f"--gpus {','.join(map(str, args.gpus))}", index)
    check_compile(parser, args, "train.py")
    words = freeze_words(args.freeze)
    if words:
        with torch.device("meta"):
            names = [n for n, _ in DBN(num_classes=2, net=args.net, pretrained=None).named_parameters()]
        unknown = [w for w in words if not any(w in n for n in names)]
        if unknown:
            top = sorted({n.split(".")[0] for n in names})
            parser.error(f"--freeze {unknown[0]!r} matches no parameter name; parameters start with "
                         f"{', '.join(top)} (e.g. --freeze stem,layer1)")
    return args


# --demo: the values of the flags a user did not give (explicit flags win)
DEMO = dict(dataset="market1501", dataset_root=os.path.join("data", "demo"), net="small", pretrained="none",
            img_height=128, img_width=64, batch_size=32, instance_num=4, lr=0.05, epochs=(2, 30),
            ema_ratio=0.8, ema_extra=4, erasing=0.0, device="cpu", num_workers=0,
            save_path=os.path.join("params", "demo.pth"))
# flags that may change when resuming; every other flag is the recipe and must match the checkpoint
RUN_FLAGS = {"resume", "dry_run", "demo", "eval", "device", "gpus", "num_workers", "dataset_root", "data_root",
             "save_path", "dist_timeout", "overwrite", "eval_period", "compile"}
# --compile is a run flag: it changes the rounding, not the recipe (as --device does); a resumed run that
# changes it is exact to float32 rounding, not bit-identical (docs/performance.md)
# recipe flags that a resumed run may change (a way out of a non-finite loss), with a warning
RESUME_CHANGES = {"lr", "amp", "amp_dtype"}


def parse_with_defaults(parser, argv=None, check=None):
    """Parse argv with train.py's parser (or pretrain.py's, whose flag checks are `check(args, parser)`,
    by default train.py's check_args); --demo and --resume supply the defaults of the flags not given,
    then the checks. --resume auto becomes <stem>_last.pth of --save-path when that file exists, else
    a new run (which replaces the files of an earlier run there that never finished an epoch)."""
    args = parser.parse_args(argv)
    demo = getattr(args, "demo", False)
    if demo:
        parser.set_defaults(**DEMO)
    resume, replace = args.resume, False
    if resume == "auto":
        save_path = parser.parse_args(argv).save_path  # with --demo's default
        last = last_checkpoint_path(save_path)
        resume = last if os.path.isfile(last) else None
        replace = resume is None and not os.path.exists(save_path) and os.path.exists(log_path(save_path))
    if resume:
        if not os.path.isfile(resume):
            parser.error(f"--resume {resume}: file not found")
        try:
            stored = load_training_checkpoint(resume)["args"]
        except CheckpointError as err:
            parser.error(str(err))
        # the run continues with its own settings; flags given now override the run-only ones (RUN_FLAGS)
        parser.set_defaults(**{k: v for k, v in stored.items() if k not in ("resume", "dry_run") and k in vars(args)})
    if demo or resume:
        args = parser.parse_args(argv)
    args.resume = resume
    args.overwrite = args.overwrite or replace
    if demo and not args.resume and args.save_path == DEMO["save_path"]:
        args.overwrite = True  # a second `train.py --demo` replaces the demo's own files (README)
    (check or check_args)(args, parser)
    return args


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


def check_sync_bn(args, distributed, device):
    """--sync-bn needs GPUs: PyTorch's SyncBatchNorm does not run on the CPU."""
    if args.sync_bn and distributed and device.type != "cuda":
        raise UsageError("--sync-bn synchronises BatchNorm statistics over GPUs (NCCL); PyTorch's SyncBatchNorm "
                         "does not run on the CPU. Drop --sync-bn (each process then normalises its own share "
                         "of the batch) or train on GPUs")


def check_resume_args(stored, args, is_main=True):
    """Refuse recipe flags that differ from the checkpoint's, except RESUME_CHANGES (warned about).
    Returns the changed RESUME_CHANGES flags; `is_main`: this process prints the warning."""
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
    if allowed and is_main:
        print(f"warning: resuming with {detail(allowed)}: from here on the run follows another recipe (no longer "
              "its own nor the release's) and is not bit-identical to an uninterrupted run", file=sys.stderr)
    return allowed


def json_form(value):
    return list(value) if isinstance(value, tuple) else value


def training_device(device, gpus, dist_timeout):
    """train.py's device from --device, --gpus and torchrun: (torch.device, DistInfo, DataParallel GPU ids
    or None, a note to print or None). Under torchrun each process takes cuda:LOCAL_RANK (or the CPU);
    --gpus without CUDA trains on the CPU with a warning, as the release."""
    use_cuda = device != "cpu" and torch.cuda.is_available()
    dist_info = distributed.init_distributed(use_cuda, dist_timeout)
    ids = ",".join(map(str, gpus or []))
    if dist_info.distributed:
        note = (f"--gpus {ids} ignored under torchrun: each process uses "
                f"{'cuda:LOCAL_RANK' if use_cuda else 'the CPU'}") if gpus and len(gpus) > 1 else None
        return torch.device("cuda", dist_info.local_rank) if use_cuda else torch.device("cpu"), dist_info, None, note
    if not use_cuda:
        note = (f"warning: --gpus {ids}: CUDA is not available on this machine; training on the CPU"
                if gpus and device == "auto" else None)
        return torch.device("cpu"), dist_info, None, note
    gpus = gpus or [0]
    return pick_device(f"cuda:{gpus[0]}"), dist_info, (gpus if len(gpus) > 1 else None), None
