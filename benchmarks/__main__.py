"""Benchmarks: `python -m benchmarks --what WHAT`.

`--what model`: parameters and FLOPs, throughput and latency of DBN-S (float32 eager fused,
bfloat16, compiled) next to torchvision's ResNet-50 and the peers (release-style DBN-S, OSNet x1_0),
the matrix-multiply peak measured in the same run, training steps eager and compiled with their
operator counts (benchmarks/model.py);
`--what training`: its training table alone; `--what eval`: the evaluation benchmark (benchmarks/eval.py); `--what extract`: DBN-S test-time
feature extraction under glibc's default malloc settings and tuned, each in a fresh process
(benchmarks/extract.py); `--what loader`: one loader worker's training transforms
(benchmarks/loader.py); `--what deploy`: DBN-S exported for ONNX Runtime and OpenVINO against OSNet
x1_0 exported the same way, batch 1, 8 and 32 (benchmarks/deploy.py; needs requirements-export.txt);
`--what all` (default): model and eval.

    python -m benchmarks --what model [--quick] [--batch 32] [--threads 2] [--malloc tuned|default]
                                       [--device cpu|cuda] [--no-training] [--no-compiled-training]

`--malloc tuned` (default) makes glibc keep freed memory in the process, so that no model pays
page faults for fresh memory on every run; with `--malloc default` glibc hands every block above
its 32 MiB mmap threshold back to the system when it is freed, and ResNet-50 (whose batch-32
activations are above it, ours are not) faults its memory in again on every run, losing 20-45%
of its speed here. The page faults of each run are printed.
"""
import argparse
import sys

import torch

from benchmarks import height_by_width


def get_args_parser():
    parser = argparse.ArgumentParser("python -m benchmarks", description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--what", choices=("model", "training", "eval", "extract", "loader", "deploy", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (3)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (training; inference +2)")
    parser.add_argument("--images", type=int, default=200, help="loader: JPEGs per setting")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="model: where the networks run (cuda: float32, float16, channels_last, compiled)")
    parser.add_argument("--no-training", action="store_true", help="model: leave out the training steps")
    parser.add_argument("--no-compiled-training", action="store_true",
                        help="model: leave out the training table's compiled rows (compiling a training step "
                             "takes minutes on a CPU)")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="tuned: glibc keeps freed memory, no model pays page faults on every step "
                             "(a fair comparison); default: glibc's settings, under which ResNet-50 does")
    parser.add_argument("--worker", choices=("extract",), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=height_by_width, default=(256, 128), help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    parser = get_args_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.what in ("model", "training", "extract", "loader", "deploy"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.what == "deploy":
        from benchmarks import deploy
        from network.fast.export import packages_error
        missing = deploy.missing_packages()
        if missing:
            parser.error(packages_error("--what deploy", deploy.PACKAGES, missing))
        return deploy.bench(args)
    if args.worker == "extract":
        from benchmarks import extract
        return extract.worker(args)
    if args.what in ("model", "all"):
        from benchmarks import model
        model.bench(args)
    if args.what == "training":
        from benchmarks import model
        model.bench_training(args)
    if args.what == "extract":
        from benchmarks import extract
        extract.bench(args)
    if args.what == "loader":
        from benchmarks import loader
        loader.bench(args)
    if args.what in ("eval", "all"):
        from benchmarks import eval as bench_eval
        bench_eval.main((["--quick"] if args.quick else []) + rest)
    return None


if __name__ == "__main__":
    sys.exit(main())
