"""The command line of the test_<dataset>.py scripts: parse, load --weights, evaluate, print the
result line last. The evaluation itself is evaluation.evaluator.evaluate; each dataset's default input
size and protocol options come from its class (datasets.dataset_class).
"""
import argparse
import json
import os
import sys

import torch

from datasets import DATASET_NAMES, DATASET_ROOT_HELP, DatasetError, build_dataset, dataset_class
from datasets.university1652 import DIRECTIONS
from datasets.vehicleid import TEST_SIZES
from evaluation.evaluator import MINP_LINE, EvaluationError, evaluate
from evaluation.features import (add_compile_arg, add_dtype_arg, check_dtype, load_for_inference, prepare_for_inference,
                                 provenance)
from network import CheckpointError
from utils.cli import HelpFormatter, check_gpu, check_output, default_workers, require_at_least
from utils.console import show_warnings_as_lines
from utils.device import pick_device
from utils.malloc import tune_allocator


def _size_table():
    rows = {}
    for name in DATASET_NAMES:
        rows.setdefault(dataset_class(name).image_size, []).append(name)
    return "; ".join(f"{h}x{w}: {', '.join(names)}" for (h, w), names in rows.items())


# the flags of some datasets only, and which (refused by the others' scripts)
SPECIFIC_FLAGS = {"ap": "the ranking datasets", "rerank": "query/gallery rankings", "test_size": "vehicleid",
                  "trials": "vehicleid", "kmeans": "car196 and cub200", "direction": "university1652"}


def get_args_parser(add_help=False, dataset=None):
    """The test scripts' flags; for a `dataset`, the flags of other datasets (SPECIFIC_FLAGS) are hidden
    from --help and left at None, so that main() refuses them."""
    parser = argparse.ArgumentParser("DBN evaluation", add_help=add_help)
    parser.add_argument("--net", default=None, choices=["small", "large"],
                        help="model variant: small (LEViT-S) or large (LEViT-L) (default: what --weights holds)")
    parser.add_argument("--img-height", default=None, type=int,
                        help=f"input height (default: the size --weights was trained at; for a bare state_dict "
                             f"per dataset: {_size_table()})")
    parser.add_argument("--img-width", default=None, type=int, help="input width (default per dataset, as above)")
    parser.add_argument("--weights", default="params/ema.pth",
                        help="DBN checkpoint: the file train.py writes to --save-path (or its _last.pth "
                             "checkpoint) or the release's params/ema.pth")
    parser.add_argument("--dataset-root", default="data", help=DATASET_ROOT_HELP)
    parser.add_argument("--batch-size", default=64, type=int, help="images per forward pass")
    parser.add_argument("--num-workers", default=default_workers(), type=int,
                        help="data loading processes (4, or the available cores if fewer)")
    parser.add_argument("--device", default="auto", type=device_type, metavar="{auto,cpu,cuda,cuda:N}",
                        help="auto: cuda when available, otherwise cpu; cuda:N picks GPU N")
    parser.add_argument("--gpus", default=None, type=gpu_type, metavar="ID",
                        help="GPU id to evaluate on, as train.py's --gpus (one id; same as --device cuda:ID)")
    add_dtype_arg(parser)
    add_compile_arg(parser)
    def specific(flag, applies, **kwargs):  # a flag of some datasets only: hidden and refused for the others
        if dataset is not None and dataset not in applies:
            kwargs.update(default=None, help=argparse.SUPPRESS)
        parser.add_argument(flag, **kwargs)

    rank = [name for name in DATASET_NAMES if dataset_class(name).scoring == "rank"]
    retrieval = [name for name in DATASET_NAMES if dataset_class(name).scoring == "retrieval"]
    specific("--ap", rank, default="trapezoid", choices=["trapezoid", "plain"],
             help="average precision: trapezoid (the release's numbers) or plain (torchreid, fast-reid)")
    specific("--rerank", rank, action="store_true", default=False,
             help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) before scoring")
    parser.add_argument("--vis", default=0, type=int, metavar="N",
                        help="write rank-list pictures of N queries to <vis-dir>/<dataset>_rank_<query>.png")
    parser.add_argument("--vis-dir", default="figs", metavar="DIR", help="folder of the --vis pictures")
    # the protocol options of VehicleID and University-1652, with the defaults their classes give
    vehicleid, university = dataset_class("vehicleid").protocol_options, dataset_class("university1652").protocol_options
    specific("--test-size", ["vehicleid"], default=vehicleid["test_size"], type=int, choices=TEST_SIZES,
             help="vehicleid: test list (test_list_<N>.txt)")
    specific("--trials", ["vehicleid"], default=vehicleid["trials"], type=int,
             help="vehicleid: number of seeded gallery draws")
    specific("--kmeans", retrieval, default="release", choices=["release", "kmeans++"],
             help="car196/cub200: the k-means behind NMI: release (faiss's, seed 1234, 20 iterations; the "
                  "release's numbers) or kmeans++ (run to convergence; usually higher, not comparable)")
    specific("--direction", ["university1652"], default=university["direction"], choices=tuple(DIRECTIONS),
             help="university1652: query view -> gallery view")
    parser.add_argument("--save-features", default=None, metavar="FILE.npz",
                        help="also write the test features: <split>_features (N, D) float32 L2-normalised, "
                             "<split>_paths, <split>_pids and <split>_camids for each split (query, gallery; "
                             "test for vehicleid, car196, cub200)")
    parser.add_argument("--metrics-json", default=None, metavar="FILE",
                        help="also write every metric printed (and the per-trial ones of vehicleid) as JSON")
    return parser


def load_model(weights, device, *, default_size, net=None, img_height=None, img_width=None, default_net=None,
               dtype="float32", compile=False):
    """(DBN of the `weights` checkpoint on `device`, prepared for inference in `dtype` / `compile` by
    evaluation.features.prepare_for_inference (BatchNorm folded); what the file said (load_for_inference's
    info: "variant", "weights_id", ...); its input size (height, width)).

    The variant and the input size come from the file where it records them (train.py's
    --save-path format, or the args of a _last.pth); `net`, `img_height` and `img_width` (the
    flags) fill in what it does not say and must agree with what it does. Where neither gives the
    size it is `default_size` (the script's), with a warning (a bare state_dict does not say what
    size it was trained at); `default_net` is the variant where neither says (weights of no
    released width). Raises network.CheckpointError (missing or unreadable file, a backbone, a
    flag that contradicts it).
    """
    if os.path.isdir(weights):
        raise CheckpointError(f"--weights {weights} is a folder; give the checkpoint file in it (the file train.py "
                              "wrote to --save-path, its _last.pth checkpoint, or the release's params/ema.pth)")
    if not os.path.isfile(weights):
        raise CheckpointError(f"weights file not found: {weights} (pass --weights PATH: the file train.py "
                              "wrote to --save-path, its _last.pth checkpoint, or the release's params/ema.pth)")
    model, info = load_for_inference(weights, net, img_height, img_width, device=device, default_size=default_size,
                                     default_net=default_net)
    size = info["img_height"], info["img_width"]
    if info["size_assumed"]:
        print(f"warning: {weights} holds bare weights, which do not record the input size they were trained at; "
              f"evaluating at {size[0]}x{size[1]} (this dataset's default). If it was trained at "
              "another size (python train.py --demo: 128x64), pass --img-height H --img-width W",
              file=sys.stderr)
    # prepare_for_inference folds conv+BN (same features, faster) and builds the inference form
    return prepare_for_inference(model, dtype, compile), info, size


def device_type(text):
    """--device: auto, cpu, cuda or cuda:N."""
    if text in ("auto", "cpu", "cuda"):
        return text
    name, _, index = str(text).partition(":")
    if name == "cuda" and index.isdigit():
        return f"cuda:{int(index)}"
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N (a GPU id), got {text!r}")


def gpu_type(text):
    if not str(text).strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected one GPU id (an integer >= 0): evaluation runs on one GPU; "
                                         f"got {text!r}")
    return int(text)


def _device(args, parser):
    """torch.device of --device / --gpus (--gpus ID is --device cuda:ID)."""
    name = args.device
    if args.gpus is not None:
        if name not in ("auto", "cuda", f"cuda:{args.gpus}"):
            parser.error(f"--gpus {args.gpus} and --device {name} disagree; give one of them")
        name = f"cuda:{args.gpus}"
    if name.startswith("cuda"):
        check_gpu(parser, f"--gpus {args.gpus}" if args.gpus is not None else f"--device {name}",
                  torch.device(name).index)
    return pick_device(name)


def main(dataset, argv=None, *, weights="params/ema.pth", net=None, img_height=None, img_width=None):
    """Entry point of test_<dataset>.py: parse argv, load --weights, evaluate, print the result line last
    (the ranking datasets' mINP line just above it).

    `weights`, `net`, `img_height`, `img_width` are the script's own defaults (the constants at the top of
    each test_<dataset>.py): --weights when the flag is not given; the variant and the input size when
    neither the flags nor the checkpoint say (None: the dataset's own default size).
    A missing or malformed dataset or checkpoint prints the reason to stderr and exits with status 2.
    Returns the metrics dict.
    """
    if dataset not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASET_NAMES)}")
    show_warnings_as_lines()
    cls = dataset_class(dataset)
    height, width = img_height or cls.image_size[0], img_width or cls.image_size[1]
    parser = argparse.ArgumentParser(f"test_{dataset}.py", parents=[get_args_parser(dataset=dataset)], formatter_class=HelpFormatter,
                                     description=f"Evaluate a DBN checkpoint on {dataset} (default input "
                                                 f"{height}x{width}); the last line printed is the result "
                                                 "in the release's format.")
    parser.set_defaults(weights=weights)
    args = parser.parse_args(argv)
    require_at_least(parser, args, 1, "batch_size", "trials")
    shown = (height if args.img_height is None else args.img_height,  # a flag left out: the script's default
             width if args.img_width is None else args.img_width)
    if min(shown) < 16:  # as train.py
        parser.error(f"--img-height/--img-width must be at least 16 (output stride 16), got "
                     f"{shown[0]}x{shown[1]}")
    require_at_least(parser, args, 0, "num_workers", "vis")
    if args.save_features is not None and not args.save_features.endswith(".npz"):
        parser.error(f"--save-features {args.save_features}: give a file name ending in .npz")
    for flag, path in (("--save-features", args.save_features), ("--metrics-json", args.metrics_json)):
        if path is not None and os.path.isdir(path):
            parser.error(f"{flag} {path} is a folder; give a file name")
        if path is not None:
            check_output(parser, flag, path)
    if args.vis:
        check_output(parser, "--vis-dir", args.vis_dir, folder=True)
    # a flag of other datasets has the default None here (get_args_parser): given, it is refused
    given = [name for name in SPECIFIC_FLAGS if parser.get_default(name) is None and getattr(args, name) is not None]
    if "rerank" in given:
        parser.error(f"--rerank applies to query/gallery rankings; {dataset} is scored by Recall@K and NMI")
    if given:
        parser.error(f"--{given[0].replace('_', '-')} applies to {SPECIFIC_FLAGS[given[0]]} only, not to {dataset}")
    device = _device(args, parser)
    try:
        check_dtype(args.dtype, device)
    except ValueError as err:
        parser.error(f"--dtype {err}")
    tune_allocator(device)

    try:
        # the variant and the input size recorded in --weights, else the flags, else the script's
        model, info, (args.img_height, args.img_width) = load_model(
            args.weights, device, default_size=(height, width), net=args.net, img_height=args.img_height,
            img_width=args.img_width, default_net=net, dtype=args.dtype, compile=args.compile)
        args.net = info["variant"]
        print(f"test_{dataset}: " + " ".join(f"{k}={v}" for k, v in vars(args).items()))
        data = build_dataset(dataset, args.dataset_root)
        print(data.summary())
        metrics, line = evaluate(model, data, image_size=(args.img_height, args.img_width),
                                 batch_size=args.batch_size, num_workers=args.num_workers, ap=args.ap or "trapezoid",
                                 rerank=bool(args.rerank), kmeans=args.kmeans or "release", vis=args.vis, vis_dir=args.vis_dir,
                                 save_features=args.save_features,
                                 provenance=provenance(info["weights_id"], args.net, args.img_height, args.img_width,
                                                       data.family, True, args.dtype),
                                 **{name: getattr(args, name) for name in cls.protocol_options})
    except (DatasetError, CheckpointError, EvaluationError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"test_{dataset}.py: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    if args.metrics_json is not None:
        os.makedirs(os.path.dirname(os.path.abspath(args.metrics_json)), exist_ok=True)
        with open(args.metrics_json, "w") as f:
            json.dump({"dataset": dataset, "weights": args.weights, "net": args.net,
                       "img_height": args.img_height, "img_width": args.img_width, "metrics": metrics}, f, indent=1)
        print(f"metrics written to {args.metrics_json}")
    if "mINP" in metrics:
        print(MINP_LINE.format(**metrics))
    print(line)
    return metrics
