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
Files beside --save-path (training/run_files.py; the run's state: training/): <stem>_last.pth, the resumable checkpoint
rewritten after every epoch, and <stem>_log.jsonl, one JSON line per epoch.
"""
import argparse
import copy
import os
import signal
import sys
import time

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from datasets import DATASET_NAMES, DATASET_ROOT_HELP, DatasetError, build_dataset
from datasets.image_dataset import ImageDataset
from datasets.sampler import PKSampler
from datasets.seeded import SeededDataset, seeded_loader
from datasets.synthetic import regenerate_hint
from evaluation.evaluator import MINP_LINE, EvaluationError, evaluate
from evaluation.features import prepare_for_inference
from losses import ReIDLoss
from network import DBN, VARIANTS, released_path
from network.fast import training_form
from network.flops import model_summary
from training.bn_pass import recompute_bn
from training.compile import CompiledStep, add_compile_flag
from training.curves import draw_run_curves
from training.eval_period import PeriodicEvaluation
from training.flags import (DEMO, add_amp_flags, add_hardware_flags, amp_settings, check_resume_args, check_sync_bn,
                            epochs_type, freeze_words, json_form, missing_pretrained, parse_with_defaults)
from training.launch import run_cli, run_on_device
from training.resume import (curves_path, last_checkpoint_path, load_training_checkpoint, log_path,
                             restore_training_state, save_training_state, seed_everything)
from training.run_files import (append_log, check_save_path, check_training_images, dry_run_line, ensure_demo_data,
                                evaluate_command, remove_earlier_run, save_model, saved_state)
from training.run_state import (MAX_SKIPPED, EpochTotals, Interrupted, StopFlag, UsageError, batch_has_images,
                                reduce_step, waiting_for_data, warn_if_waiting_for_data)
from training.schedule import averaging_start, build_scheduler
from utils import distributed
from utils.cli import BooleanFlag, HelpFormatter
from utils.console import show_warnings_as_lines

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
    g.add_argument("--num-workers", default=None, type=int,
                   help="data loading processes (0: in the main process). Default: with CUDA 4, or the available "
                        "cores if fewer; on the CPU 0, since loader processes take the cores the training's own "
                        "threads use (see docs/performance.md)")

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
    add_amp_flags(g)
    add_compile_flag(g)
    g.add_argument("--seed", default=613, type=int, help="seeds weights, data order, augmentation, erasing")
    add_hardware_flags(parser)

    g = parser.add_argument_group("run")
    g.add_argument("--save-path", default=os.path.join("params", "ema.pth"),
                   help="where the averaged weights go; <stem>_last.pth (resumable checkpoint) and "
                        "<stem>_log.jsonl (one JSON line per epoch) are written beside it")
    g.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from a <stem>_last.pth checkpoint; auto: from --save-path's <stem>_last.pth when it "
                        "exists, else start a new run (torchrun --max-restarts; see docs/distributed.md)")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run even if --save-path already holds one (its files are replaced); "
                        "without it a new run there is refused (--demo replaces its own params/demo.pth)")
    g.add_argument("--eval", default=True, action=BooleanFlag,
                   help="evaluate the averaged model on the test split at the end")
    g.add_argument("--eval-period", default=0, type=int, metavar="N",
                   help="also evaluate the weights being trained every N epochs and after the last, logging the "
                        "metrics; the best go to <stem>_best.pth. 0: only the averaged model at the end. It does not "
                        "change the training, so a resumed run may change it")
    g.add_argument("--dry-run", action="store_true",
                   help="check the flags, the dataset layout and the model, print their sizes and exit")
    g.add_argument("--demo", action="store_true",
                   help=f"generate a small synthetic Market-1501 under {DEMO['dataset_root']} (once) and train "
                        "LEViT-S from scratch on the CPU; flags given explicitly still apply")
    return parser


def parse_args(argv=None):
    """Parse argv; --demo and --resume supply the defaults of the flags not given, then validate."""
    return parse_with_defaults(get_args_parser(), argv)


# --- setup ------------------------------------------------------------------------------------

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


def build_train_set(dataset, args):
    return ImageDataset(dataset.train, dataset.train_transform(args.img_height, args.img_width))


def build_sampler(dataset, args, dist_info):
    try:
        return PKSampler([item[1] for item in dataset.train], args.batch_size, args.instance_num, seed=args.seed,
                         rank=dist_info.rank, world_size=dist_info.world_size, views=dataset.sampler_views())
    except ValueError as err:  # a batch that does not split over the processes, too few identities: usage
        hint = regenerate_hint(dataset.root, args.batch_size // args.instance_num)
        raise UsageError(f"--batch-size {args.batch_size} --instance-num {args.instance_num} on "
                         f"{dist_info.world_size} process(es): {err}{hint}") from None


def build_loader(train_set, sampler, args, epoch, dist_info, device, skip=0):
    """Loader of one epoch (0-based `epoch`), starting at batch `skip`: same batches and augmentation
    for a given seed and epoch whatever --num-workers (see datasets.seeded.SeededBatches)."""
    return seeded_loader(train_set, sampler, args.seed, epoch, dist_info.rank, args.num_workers,
                         pin_memory=device.type == "cuda", skip=skip)


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
        for imgs, labels, _, skipped in waiting_for_data(loader, totals):  # counts the wait for each batch
            if not batch_has_images(imgs, skipped, totals, epoch, step, planned_images, saved, MAX_SKIPPED):
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
            mean_loss, stopping = reduce_step(loss, terms, stop, totals, epoch, step, steps, args.lr,
                                              amp_settings(args, device)[0], saved, imgs.shape[0])
            step += 1
            elapsed = totals.seconds + time.perf_counter() - start
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{totals.images * distributed.get_world_size() / max(elapsed, 1e-9):.0f}",
                            wait=f"{totals.data_wait_share(elapsed):.0%}")
            bar.update(1)
            if stopping:  # some process was asked to stop
                break
    finally:
        bar.close()
    totals.seconds += time.perf_counter() - start
    return step


def main(args):
    return run_on_device(args, train_and_evaluate)


def train_and_evaluate(args, device, dist_info, dp_ids):
    main_rank = dist_info.rank == 0
    check_sync_bn(args, dist_info.distributed, device)
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
    if device.type == "cpu":  # the stride-1 grouped 3x3 convolutions train in the native CPU kernels
        training_form(model)
    sampler = build_sampler(dataset, args, dist_info)
    if main_rank:
        print(f"train: {dataset.num_classes} identities, {len(dataset.train)} images")
        print(model_summary(model, args.net, args.img_height, args.img_width))
    # --eval-period: the test split is checked now, before any training
    evaluations = PeriodicEvaluation(dataset, args, args.epochs[1] + args.ema_extra, main_rank, bool(args.resume))
    check_save_path(args, lock=main_rank)
    if args.dry_run:  # a check of the command and the data: the images' headers too
        check_training_images(dataset.train, None, MAX_SKIPPED)
        if main_rank:
            print(dry_run_line(sampler, args))
        return None

    checkpoint = load_training_checkpoint(args.resume) if args.resume else None
    epochs_total, start_avg = args.epochs[1] + args.ema_extra, averaging_start(args.epochs[1], args.ema_ratio)
    changed = check_resume_args(checkpoint["args"], args, main_rank) if checkpoint is not None else []
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
    # --compile: the forward (of the DDP module under torchrun) through torch.compile (training/compile.py)
    per_rank = args.batch_size // dist_info.world_size
    forward = model if args.compile == "off" else CompiledStep(model, args.compile, per_rank)

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
        start_epoch, start_step, totals, note = restore_training_state(
            checkpoint, optimizer, scheduler, scaler, averaged, lr=args.lr if "lr" in changed else None,
            rank=dist_info.rank, world_size=dist_info.world_size)
        saved = (args.resume, start_epoch, start_step)
        if main_rank:
            append_log(log_file, None, completed_epochs=start_epoch)
            print((f"resume: {note}\n" if note else "") + f"resume: {args.resume}, {start_epoch} epochs done" +
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
                steps = train_one_epoch(forward, criterion, optimizer, scaler, loader, device, epoch, args, autocast,
                                        totals, stop, start_step, saved)
                if steps < len(sampler):  # interrupted: a mid-epoch checkpoint, exact to resume
                    save_training_state(last_path, model_without_ddp, optimizer, scheduler, scaler, averaged,
                                        epoch, steps, totals, args)
                    raise Interrupted(stop.signum or signal.SIGINT,
                                      f"interrupted in epoch {epoch + 1} after batch {steps}; resume with "
                                      f"--resume {last_path}")
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                if epoch + 1 >= start_avg:
                    averaged.update_parameters(model_without_ddp)
                metrics = evaluations(model_without_ddp, epoch)  # every --eval-period epochs, on rank 0
                if main_rank:
                    append_log(log_file, totals.log_record(epoch, lr, dist_info.world_size, metrics))
                    draw_run_curves(log_file, curves_path(args.save_path))
                    warn_if_waiting_for_data(totals, args.num_workers, device)
                    if totals.skipped:
                        print(f"epoch {epoch + 1}: {totals.skipped} unreadable images skipped (named in the "
                              "warnings above)", file=sys.stderr, flush=True)
                start_step, totals = 0, EpochTotals()
                save_training_state(last_path, model_without_ddp, optimizer, scheduler, scaler, averaged,
                                    epoch + 1, 0, totals, args)
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


def untrained_copy(model):
    return copy.deepcopy(model).eval()


def final_evaluation(model, untrained, dataset, args, device):
    options = dict(image_size=(args.img_height, args.img_width), batch_size=args.batch_size,
                   num_workers=args.num_workers)  # the protocol's own defaults (the test scripts')
    # the inference form, as the test scripts evaluate (BatchNorm folded, CPU kernels): the same features
    metrics, line = evaluate(prepare_for_inference(model.eval()), dataset, **options)
    if "mINP" in metrics:  # the trained model's, before the comparison with the untrained one
        print(MINP_LINE.format(**metrics))
    if untrained is not None:
        base, _ = evaluate(prepare_for_inference(untrained.to(device).eval()), dataset, **options)
        print(f"untrained (random init) mAP:{base['mAP']:f} top1:{base['top1']:f} | "
              f"trained mAP:{metrics['mAP']:f} top1:{metrics['top1']:f}")
        metrics["untrained"] = base
    print(line, flush=True)
    return metrics


def cli(argv=None):
    """`python train.py ...`: parse, run, and turn the known failures into a message and an exit status
    (2: usage, data or checkpoint; 1: training stopped; 128 + signal: interrupted), no traceback."""
    show_warnings_as_lines()
    run_cli("train.py", main, parse_args(argv))


if __name__ == "__main__":
    cli()
