"""Pretrain the LEViT backbone on ImageNet-style classification, for train.py --pretrained.

    torchrun --nproc-per-node 8 pretrain.py --net small --data-root /data/imagenet --batch-size 1024
    python pretrain.py --net small --data-root data/shapes --img-size 64 --epochs 3 --dry-run

Recipe (DeiT / LeViT, torchvision v2 instead of timm; docs/pretraining.md): LEViT with a Linear head on the
pooled features, cross-entropy with label smoothing on Mixup / CutMix targets (training/classification.py),
AdamW with lr = --lr * batch / 512 and weight decay, a per-step linear warm-up then cosine to --min-lr,
RandAugment and random erasing (datasets/imagefolder.py), stochastic depth, optional weight EMA. Every epoch
scores top-1 / top-5 on val/. --save-path gets the backbone with the released file's keys less the
classifier (which is kept apart under "head"), so train.py --pretrained loads it key for key. Beside it, as
train.py's: <stem>_last.pth (resumable, every epoch and on Ctrl-C) and <stem>_log.jsonl.
"""
import argparse
import os
import signal
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.image_dataset import ImageDataset, collate_skip
from datasets.imagefolder import ImageFolderData, ShuffledBatches, train_transform, val_transform
from datasets.seeded import SeededDataset, seeded_loader
from network import VARIANTS, LEViT, out_of_range
from network.fast import training_form
from training.classification import batch_mix, build_step_scheduler, model_ema, param_groups, scaled_lr, topk_correct
from training.compile import CompiledStep, add_compile_flag, check_compile
from training.curves import draw_run_curves
from training.flags import (add_amp_flags, add_hardware_flags, amp_settings, check_resume_args, json_form,
                            parse_with_defaults)
from training.launch import run_cli, run_on_device
from training.resume import (curves_path, last_checkpoint_path, load_training_checkpoint, log_path,
                             restore_training_state, save_training_state, seed_everything)
from training.run_files import append_log, check_save_path, check_training_images, remove_earlier_run, saved_state
from training.run_state import (MAX_SKIPPED, EpochTotals, Interrupted, StopFlag, UsageError, batch_has_images,
                                reduce_step)
from utils import distributed
from utils.cli import HelpFormatter, check_gpu, default_workers, require_at_least
from utils.console import show_warnings_as_lines
from utils.files import atomic_save

MIN_IMG_SIZE = 32  # the backbone's output stride: a smaller input has no 1x1 feature left to pool

# --- command line ------------------------------------------------------------------------------


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        "pretrain.py", add_help=add_help, formatter_class=HelpFormatter,
        description="Pretrain a LEViT backbone on an ImageFolder (DeiT / LeViT recipe) for train.py --pretrained.")
    g = parser.add_argument_group("model")
    g.add_argument("--net", default="small", choices=sorted(VARIANTS), help="backbone: small (LEViT-S) or large (LEViT-L)")
    g.add_argument("--drop-path", default=None, type=float, metavar="RATE",
                   help="stochastic depth rate of the last block; default per --net: 0.05 small, 0.10 large")
    g.add_argument("--model-ema-decay", default=0.0, type=float,
                   help="keep an EMA of the weights with this decay per step (e.g. 0.99996) and save and score it; 0 = off")

    g = parser.add_argument_group("data")
    g.add_argument("--data-root", default=os.path.join("data", "imagenet"), help="folder holding train/<class>/ and val/<class>/")
    g.add_argument("--img-size", default=224, type=int, help="training and validation crop (square)")
    g.add_argument("--randaug-magnitude", default=9, type=int, help="RandAugment magnitude M (2 ops, 31 bins); 0 = off")
    g.add_argument("--reprob", default=0.25, type=float, help="random erasing probability per image; 0 = off")
    g.add_argument("--num-workers", default=None, type=int,
                   help="data loading processes; default: with CUDA 4 (or the available cores if fewer), on the CPU 0")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", default=300, type=int, help="epochs (DeiT's and LeViT's ImageNet runs: 300)")
    g.add_argument("--batch-size", default=256, type=int, help="global batch (split across processes under torchrun)")
    g.add_argument("--lr", default=5e-4, type=float, help="base lr of AdamW; the peak is lr * batch-size / 512 (DeiT)")
    g.add_argument("--min-lr", default=1e-5, type=float, help="the cosine's final lr")
    g.add_argument("--warmup-epochs", default=5, type=int, help="linear warm-up (per step) over these epochs")
    g.add_argument("--weight-decay", default=0.05, type=float, help="AdamW weight decay (DeiT's; LeViT used 0.025)")
    g.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")
    g.add_argument("--mixup", default=0.8, type=float, help="Mixup alpha; 0 = off")
    g.add_argument("--cutmix", default=1.0, type=float, help="CutMix alpha; 0 = off (with both on, one per batch)")
    add_amp_flags(g)
    add_compile_flag(g)
    g.add_argument("--seed", default=0, type=int, help="seeds weights, data order, augmentation, mixing")
    add_hardware_flags(parser)

    g = parser.add_argument_group("run")
    g.add_argument("--save-path", default=os.path.join("params", "pretrained_small.pth"),
                   help="where the backbone goes; <stem>_last.pth and <stem>_log.jsonl are written beside it")
    g.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from a <stem>_last.pth checkpoint; auto: from --save-path's <stem>_last.pth when "
                        "it exists, else a new run (torchrun --max-restarts)")
    g.add_argument("--overwrite", action="store_true", help="start a new run even if --save-path holds one")
    g.add_argument("--dry-run", action="store_true", help="check the flags, the data and the model, then exit")
    return parser


def check_args(args, parser):
    """Reject invalid values up front, naming the flag and what is allowed."""
    require_at_least(parser, args, 1, "epochs", "batch_size")
    require_at_least(parser, args, 0, "warmup_epochs", "randaug_magnitude", "num_workers", "mixup", "cutmix")
    if args.img_size < MIN_IMG_SIZE:
        parser.error(f"--img-size must be at least {MIN_IMG_SIZE} (the backbone's output stride), got {args.img_size}; "
                     "ImageNet's recipe uses 224")
    if args.warmup_epochs >= args.epochs:
        parser.error(f"--warmup-epochs {args.warmup_epochs} must be below --epochs {args.epochs}")
    if not (args.lr > 0 and 0 <= args.min_lr <= args.lr):
        parser.error(f"--lr must be positive and --min-lr in [0, lr], got {args.lr} and {args.min_lr}")
    for name in ("smoothing", "reprob", "model_ema_decay"):
        if not 0 <= getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    if args.randaug_magnitude > 30:
        parser.error(f"--randaug-magnitude must be in 0..30 (31 bins), got {args.randaug_magnitude}")
    if args.drop_path is None:
        args.drop_path = VARIANTS[args.net]["drop_path"]
    problem = out_of_range(drop_path=args.drop_path)
    if problem:
        parser.error(f"--{problem[0].replace('_', '-')} {problem[1]}")
    if args.num_workers is None:
        args.num_workers = default_workers() if args.device != "cpu" and torch.cuda.is_available() else 0
    if args.device == "cuda":
        check_gpu(parser, "--device cuda")
    if args.gpus and torch.cuda.is_available() and args.device != "cpu":
        for index in args.gpus:
            check_gpu(parser, f"--gpus {','.join(map(str, args.gpus))}", index)
    check_compile(parser, args, "pretrain.py")
    return args


def parse_args(argv=None):
    """Parse argv; --resume supplies the defaults of the flags not given, then check_args."""
    return parse_with_defaults(get_args_parser(), argv, check=check_args)


# --- setup and the saved backbone ----------------------------------------------------------------

def build_model(args, num_classes):
    return LEViT(num_classes=num_classes, **{**VARIANTS[args.net], "drop_path": args.drop_path})


def backbone_checkpoint(model, data, args, metrics):
    """The --save-path file: "state_dict" holds the released backbone's keys less the classifier head.*
    (train.py drops it), "head" the classifier of `data`'s classes, then classes, variant, size, args, metrics."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"state_dict": {k: v for k, v in state.items() if not k.startswith("head.")},
            "head": {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")},
            "classes": list(data.classes), "variant": args.net, "img_size": args.img_size,
            "args": {k: json_form(v) for k, v in vars(args).items()}, "metrics": metrics}


def build_loaders(data, args, dist_info):
    train_set = SeededDataset(ImageDataset(data.train, train_transform(args.img_size, args.randaug_magnitude,
                                                                       args.reprob)))
    try:
        sampler = ShuffledBatches(len(data.train), args.batch_size, args.seed, dist_info.rank, dist_info.world_size)
    except ValueError as err:
        raise UsageError(f"--batch-size {args.batch_size} on {dist_info.world_size} process(es): {err}") from None
    val_items = data.val[dist_info.rank::dist_info.world_size]  # each process scores its share
    val_loader = DataLoader(ImageDataset(val_items, val_transform(args.img_size)), batch_size=max(
        args.batch_size // dist_info.world_size, 1), num_workers=args.num_workers, collate_fn=collate_skip)
    return train_set, sampler, val_loader


# --- training ----------------------------------------------------------------------------------

def train_one_epoch(model, criterion, mix, optimizer, scheduler, scaler, update_ema, loader, device, epoch, args,
                    autocast, totals, stop=None, start_step=0, saved=None):
    """One epoch (0-based) from batch `start_step` on: mix, forward, loss, backward, step, lr step, EMA, log.
    `model` is the training module or its CompiledStep (--compile); `update_ema` (or None) is called after
    each step. Returns the batches done; fewer than the epoch has when `stop` was raised (see train.py's)."""
    model.train()
    steps = start_step + len(loader)
    planned_images = steps * (args.batch_size // distributed.get_world_size())
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch",
               disable=not distributed.is_main(), dynamic_ncols=True, file=sys.stderr)
    start, step = time.perf_counter(), start_step
    try:
        for imgs, labels, _, skipped in loader:
            if not batch_has_images(imgs, skipped, totals, epoch, step, planned_images, saved, MAX_SKIPPED):
                step += 1
                bar.update(1)
                continue
            imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if mix is not None:
                imgs, labels = mix(imgs, labels)  # (B, C) soft targets
            with autocast:
                loss = criterion(model(imgs).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if update_ema is not None:
                update_ema()
            lr = optimizer.param_groups[0]["lr"]
            _, stopping = reduce_step(loss, {}, stop, totals, epoch, step, steps, args.lr,
                                      amp_settings(args, device)[0], saved, imgs.shape[0])
            step += 1
            bar.set_postfix(loss=f"{totals.losses['loss'] / totals.steps:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
            if stopping:
                break
    finally:
        bar.close()
    totals.seconds += time.perf_counter() - start
    return step


@torch.no_grad()
def evaluate(model, loader, device, autocast):
    """(top-1, top-5) on val/ in [0, 1], over every process's share."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    for imgs, labels, _, _ in loader:
        if imgs.shape[0]:
            with autocast:
                logits = model(imgs.to(device))
            counts += torch.tensor([*topk_correct(logits.float(), labels.to(device)), imgs.shape[0]],
                                   dtype=torch.float64, device=device)
    distributed.all_reduce_mean(counts)
    return (float(counts[0] / counts[2]), float(counts[1] / counts[2])) if counts[2] else (0.0, 0.0)


def main(args):
    return run_on_device(args, pretrain)


def pretrain(args, device, dist_info, dp_ids):
    main_rank = dist_info.rank == 0
    if main_rank:
        print("args: " + " ".join(f"{k}={json_form(v)}" for k, v in vars(args).items()), flush=True)
    data = ImageFolderData(args.data_root)
    seed_everything(args.seed)  # the same initial weights in every process
    model = build_model(args, data.num_classes)
    if device.type == "cpu":  # the stride-1 grouped 3x3 convolutions train in the native CPU kernels
        training_form(model)
    train_set, sampler, val_loader = build_loaders(data, args, dist_info)
    if main_rank:
        print(data.summary())
        print(f"model: LEViT-{args.net} + Linear({model.num_features}, {data.num_classes}), "
              f"{sum(p.numel() for p in model.parameters()):,} parameters")
    check_save_path(args, lock=main_rank)
    if args.dry_run:
        check_training_images(data.train, None, MAX_SKIPPED)
        if main_rank:
            print(f"dry run: {len(sampler)} batches of {args.batch_size} per epoch, {args.epochs} epochs; "
                  "nothing trained")
        return None

    checkpoint = load_training_checkpoint(args.resume) if args.resume else None
    changed = check_resume_args(checkpoint["args"], args, main_rank) if checkpoint is not None else []
    if checkpoint is not None and checkpoint["epoch"] >= args.epochs and os.path.isfile(args.save_path):
        if main_rank:
            print(f"resume: {args.resume} is a finished run and its backbone is in {args.save_path}; nothing to do")
        return None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    ema = model_ema(model, args.model_ema_decay)
    model_without_ddp = model
    if dist_info.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif dp_ids:
        model = nn.DataParallel(model, device_ids=dp_ids)
    # --compile: the forward (of the DDP module under torchrun) through torch.compile (training/compile.py)
    per_rank = args.batch_size // dist_info.world_size
    forward = model if args.compile == "off" else CompiledStep(model, args.compile, per_rank)
    update_ema = None if ema is None else lambda: ema.update_parameters(model_without_ddp)

    lr = scaled_lr(args.lr, args.batch_size)
    optimizer = torch.optim.AdamW(param_groups(model_without_ddp, args.weight_decay), lr=lr)
    scheduler = build_step_scheduler(optimizer, args.warmup_epochs, args.epochs, len(sampler), lr, args.min_lr)
    use_amp, amp_dtype = amp_settings(args, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.smoothing)  # smooths the mixed targets too
    mix = batch_mix(args.mixup, args.cutmix, data.num_classes)

    start_epoch, start_step, totals = 0, 0, EpochTotals()
    last_path, log_file = last_checkpoint_path(args.save_path), log_path(args.save_path)
    saved = None
    seed_everything(args.seed + dist_info.rank)  # per-process randomness (mixing, stochastic depth)
    if checkpoint is not None:
        start_epoch, start_step, totals, note = restore_training_state(
            checkpoint, optimizer, scheduler, scaler, ema, lr=scaled_lr(args.lr, args.batch_size)
            if "lr" in changed else None, rank=dist_info.rank, world_size=dist_info.world_size)
        saved = (args.resume, start_epoch, start_step)
        if main_rank:
            append_log(log_file, None, completed_epochs=start_epoch)
            print((f"resume: {note}\n" if note else "") + f"resume: {args.resume}, {start_epoch} epochs done")
        del checkpoint
    elif main_rank:
        remove_earlier_run(args.save_path)
    check_training_images(data.train, saved, MAX_SKIPPED)

    scored = ema.module if ema is not None else model_without_ddp  # what is evaluated and saved
    top1 = top5 = 0.0
    with StopFlag() as stop:
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, args.epochs):
                loader = seeded_loader(train_set, sampler, args.seed, epoch, dist_info.rank, args.num_workers,
                                       pin_memory=device.type == "cuda", skip=start_step)
                steps = train_one_epoch(forward, criterion, mix, optimizer, scheduler, scaler, update_ema, loader,
                                        device, epoch, args, autocast, totals, stop, start_step, saved)
                if steps < len(sampler):  # interrupted: a mid-epoch checkpoint, exact to resume
                    save_training_state(last_path, model_without_ddp, optimizer, scheduler, scaler, ema, epoch,
                                        steps, totals, args)
                    raise Interrupted(stop.signum or signal.SIGINT, f"interrupted in epoch {epoch + 1} after batch "
                                                                    f"{steps}; resume with --resume {last_path}")
                top1, top5 = evaluate(scored, val_loader, device, autocast)
                if main_rank:
                    record = totals.log_record(epoch, optimizer.param_groups[0]["lr"], dist_info.world_size)
                    append_log(log_file, {**record, "top1": top1, "top5": top5})
                    draw_run_curves(log_file, curves_path(args.save_path))
                    print(f"epoch {epoch + 1}: loss {record['loss']:.4f} val top1 {top1:.4f} top5 {top5:.4f}"
                          + (f", {totals.skipped} unreadable images skipped" if totals.skipped else ""), flush=True)
                start_step, totals = 0, EpochTotals()
                save_training_state(last_path, model_without_ddp, optimizer, scheduler, scaler, ema, epoch + 1, 0,
                                    totals, args)
                saved = (last_path, epoch + 1, 0)
        except KeyboardInterrupt:
            raise Interrupted(signal.SIGINT, f"stopped at once in epoch {epoch + 1}; " + saved_state(saved)) from None

    if start_epoch == args.epochs:  # resumed after the last epoch, before the backbone was written
        top1, top5 = evaluate(scored, val_loader, device, autocast)
    if main_rank:
        atomic_save(backbone_checkpoint(scored, data, args, {"top1": top1, "top5": top5}), args.save_path)
        print(f"saved the backbone{' (EMA weights)' if ema is not None else ''} to {args.save_path}; fine-tune it "
              f"with python train.py --net {args.net} --pretrained {args.save_path} ...")
        print(f"top1:{top1:f} top5:{top5:f}", flush=True)
    return top1, top5


def cli(argv=None):
    """`python pretrain.py ...`: exit status 2 for usage, data or checkpoint errors, 1 when training
    stopped, 128 + signal when interrupted; a message, no traceback."""
    show_warnings_as_lines()
    run_cli("pretrain.py", main, parse_args(argv))

if __name__ == "__main__":
    cli()
