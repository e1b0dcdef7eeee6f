"""train.py's flag types and the checks of its flags once parsed: each error names the flag and what is allowed."""
import argparse
import math
import os

import torch

from network import (DBN, VARIANTS, CheckpointError, detect_architecture, out_of_range, read_checkpoint,
                     unwrap_state_dict)
from utils.cli import check_gpu, require_at_least
from training.schedule import averaging_start, lr_factor


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
    require_at_least(parser, args, 1, "batch_size", "instance_num", "img_height", "img_width")
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
    require_at_least(parser, args, 0, "std", "num_workers")
    if args.pretrained not in ("none", "auto") and not os.path.isfile(args.pretrained):
        parser.error(f"--pretrained {args.pretrained}: file not found (give a backbone file, 'auto' or 'none')")
    if args.pretrained not in ("none", "auto") and not args.resume:
        check_pretrained(args, parser)
    if args.device == "cuda":
        check_gpu(parser, "--device cuda")
    if args.gpus and torch.cuda.is_available() and args.device != "cpu":
        for index in args.gpus:
            check_gpu(parser, f"--gpus {','.join(map(str, args.gpus))}", index)
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
