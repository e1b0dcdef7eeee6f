"""Benchmarks. `--what model`: parameters, FLOPs and CPU throughput of LEViT / DBN next to
torchvision's ResNet-50; `--what eval`: the evaluation benchmark (utils/bench_eval.py);
`--what all` (default): both.

    python -m utils.bench --what model [--quick] [--batch 32] [--threads 2] [--malloc tuned|default]

Throughput is measured in one process, alternating the models run by run (so a busy machine
slows them all alike), and the median over repeats is reported. Ratios are images/s of the model
over images/s of ResNet-50 (torchvision, weights=None) on the same 256x128 input.

`--malloc tuned` (default) makes glibc keep freed memory in the process, so that no model pays
page faults for fresh memory on every run; with `--malloc default` glibc hands every block above
its 32 MiB mmap threshold back to the system when it is freed, and ResNet-50 (whose batch-32
activations are above it, ours are not) faults its memory in again on every run, losing 20-45%
of its speed here. The page faults of each run are printed.
"""
import argparse
import ctypes
import ctypes.util
import os
import statistics
import sys
import time

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch
import torch.nn.functional as F
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from network import DBN, LEViT, VARIANTS


def count_params(model):
    """All parameters, trainable and frozen (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model, height, width):
    """FLOPs of one eval-mode forward of a 1-image batch (2 per multiply-add), as counted by
    torch.utils.flop_counter. Attention runs through SDPA's math backend here so that its two
    matrix products are counted (the fused CPU kernel has no FLOP formula). A model built on
    the meta device is counted without computing anything."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model.eval()(torch.rand(1, 3, height, width, device=device))
    return counter.get_total_flops()


def plain(model):
    """The unoptimised path: BN not folded, NCHW layout."""
    return model.to(memory_format=torch.contiguous_format)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def configure_malloc(mode):
    """'tuned': glibc keeps freed memory for reuse (mmap threshold 1 GiB, no trimming), so no
    model faults in fresh pages on every step; 'default': glibc's own settings. Returns a line
    saying what is in effect."""
    if mode == "default":
        return "malloc: the C library's defaults"
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return "malloc: not glibc, left at its defaults"
    ok = (libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(1 << 30))
          and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2 ** 31 - 1)))
    if not ok:
        return "malloc: glibc refused the settings, left at its defaults"
    return "malloc: glibc tuned (mmap threshold 1 GiB, no trimming): no model pays page faults for fresh memory"


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def time_alternating(runs, repeats, warmup=1, faults=None):
    """Median seconds per call of each zero-argument callable, calling them in turn. When a
    dict is given as `faults`, it receives the median number of page faults per call."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runs}
    counts = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            faults_before = minor_faults()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            counts[name].append(minor_faults() - faults_before)
    if faults is not None:
        faults.update({name: statistics.median(c) for name, c in counts.items()})
    return {name: statistics.median(t) for name, t in times.items()}


def inference_runs(batch, height, width, num_classes):
    torch.manual_seed(0)
    x = torch.rand(batch, 3, height, width)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    models = {
        "ResNet-50": (torchvision.models.resnet50(), x),
        "ResNet-50 channels_last": (torchvision.models.resnet50().to(memory_format=torch.channels_last), x_cl),
        "LEViT-S unoptimised": (plain(LEViT(**VARIANTS["small"])), x),
        "LEViT-S fused, channels_last": (LEViT(**VARIANTS["small"]).eval().fuse(), x_cl),
        "DBN-S unoptimised": (plain(DBN(num_classes, net="small", pretrained=None)), x),
        "DBN-S fused, channels_last": (DBN(num_classes, net="small", pretrained=None).eval().fuse(), x_cl),
    }

    def run(model, inp):
        def fn():
            with torch.inference_mode():
                model(inp)
        return fn
    return {name: run(model.eval(), inp) for name, (model, inp) in models.items()}


def training_runs(batch, height, width, num_classes):
    """forward + backward + SGD step; cross-entropy on every logit the model returns."""
    torch.manual_seed(0)
    x = torch.rand(batch, 3, height, width)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,))
    models = {
        "ResNet-50": (torchvision.models.resnet50(num_classes=num_classes), x),
        "ResNet-50 channels_last": (torchvision.models.resnet50(num_classes=num_classes).to(
            memory_format=torch.channels_last), x_cl),
        "LEViT-S unoptimised": (plain(LEViT(num_classes, **VARIANTS["small"])), x),
        "LEViT-S channels_last": (LEViT(num_classes, **VARIANTS["small"]), x_cl),
        "DBN-S unoptimised": (plain(DBN(num_classes, net="small", pretrained=None)), x),
        "DBN-S channels_last": (DBN(num_classes, net="small", pretrained=None), x_cl),
    }

    def run(model, inp):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

        def fn():
            out = model(inp)
            logits = out[0] if isinstance(out, tuple) else [out]
            loss = sum(F.cross_entropy(z, y) for z in logits) / len(logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return fn
    return {name: run(model, inp) for name, (model, inp) in models.items()}


def print_throughput(title, seconds, batch, faults):
    base, base_cl = seconds["ResNet-50"], seconds["ResNet-50 channels_last"]
    print(f"\n{title}")
    print(f"{'model':30s} {'images/s':>9s} {'x ResNet-50':>12s} {'x ResNet-50 channels_last':>26s} "
          f"{'page faults/run':>16s}")
    for name, t in seconds.items():
        print(f"{name:30s} {batch / t:9.1f} {base / t:11.2f}x {base_cl / t:25.2f}x {faults[name]:16,.0f}")


def bench_model(args):
    torch.set_num_threads(args.threads)
    malloc = configure_malloc(args.malloc)  # before any model allocates
    h, w = 256, 128
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible; "
          f"batch {args.batch}, {h}x{w} input")
    print(malloc)

    print("\nFLOPs: torch.utils.flop_counter, one image, 2 FLOPs per multiply-add, window attention included")
    print(f"{'model':28s} {'params':>12s} {'GFLOPs':>8s} {'G mult-adds':>12s}")
    rows = [("LEViT-S backbone", lambda: LEViT(**VARIANTS["small"]), [(256, 128), (256, 256)]),
            ("LEViT-L backbone", lambda: LEViT(**VARIANTS["large"]), [(256, 128), (384, 128), (256, 256)]),
            ("DBN-S (751 classes)", lambda: DBN(751, net="small", pretrained=None), [(256, 128)]),
            ("DBN-L (751 classes)", lambda: DBN(751, net="large", pretrained=None), [(256, 128), (384, 128)]),
            ("ResNet-50", lambda: torchvision.models.resnet50(), [(256, 128)])]
    for name, build, sizes in rows:
        with torch.device("meta"):  # shapes only: nothing is allocated or computed
            model = build()
        params = f"{count_params(model):,}"
        for size in sizes:
            flops = count_flops(model, *size)
            print(f"{name + f' {size[0]}x{size[1]}':28s} {params:>12s} {flops / 1e9:8.3f} {flops / 2e9:12.3f}")
            params = ""

    print("\nunoptimised: BN not folded, NCHW layout; ResNet-50: torchvision, weights=None, as shipped (NCHW)")
    repeats = 3 if args.quick else args.repeats
    faults = {}
    seconds = time_alternating(inference_runs(args.batch, h, w, 751), repeats + 2, faults=faults)
    print_throughput(f"inference, eval mode (median of {repeats + 2} alternating runs)", seconds, args.batch, faults)
    seconds = time_alternating(training_runs(args.batch, h, w, 751), repeats, faults=faults)
    print_throughput(f"training step: forward + backward + SGD (median of {repeats} alternating runs)",
                     seconds, args.batch, faults)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--what", choices=("model", "eval", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (3)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (training; inference +2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="tuned: glibc keeps freed memory, no model pays page faults on every step "
                             "(a fair comparison); default: glibc's settings, under which ResNet-50 does")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.what == "model":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.what in ("model", "all"):
        bench_model(args)
    if args.what in ("eval", "all"):
        from utils import bench_eval
        bench_eval.main((["--quick"] if args.quick else []) + rest)


if __name__ == "__main__":
    sys.exit(main())
