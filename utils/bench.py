"""Benchmarks. `--what model`: parameters, FLOPs and CPU throughput of LEViT / DBN next to
torchvision's ResNet-50; `--what eval`: the evaluation benchmark (utils/bench_eval.py);
`--what extract`: DBN-S test-time feature extraction (image + flipped copy, the evaluation's
default batch of 64) under glibc's default malloc settings and tuned, each in a fresh process;
`--what loader`: images/s of the training transforms, file to float tensor, in one process with one
thread (what one loader worker does on one core), on generated JPEGs of the real datasets' sizes,
next to a Pillow pipeline (Pillow decode and antialiased resize, as the code before torchvision.io);
`--what all` (default): model and eval.

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
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from network import DBN, LEViT, VARIANTS
from utils.malloc import keep_freed_memory, minor_faults


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


def configure_malloc(mode):
    """'tuned': glibc keeps freed memory for reuse (utils.malloc.keep_freed_memory), so no model
    faults in fresh pages on every run; 'default': the C library's own settings. Returns a line
    saying what is in effect."""
    if mode == "default":
        return "malloc: the C library's defaults"
    if not keep_freed_memory():
        return "malloc: not glibc (or it refused the settings), left at its defaults"
    return "malloc: glibc tuned (mmap threshold 1 GiB, no trimming): no model pays page faults for fresh memory"


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


def extract_worker(args):
    """In a fresh process: seconds per batch of DBN-S feature extraction (fused, eval, image plus
    its flip) and page faults per batch, medians of --repeats, printed as one JSON line."""
    torch.set_num_threads(args.threads)
    malloc = configure_malloc(args.malloc)
    height, width = args.size
    model = DBN(751, net="small", pretrained=None).eval().fuse()
    x = torch.rand(args.batch, 3, height, width)

    def batch():
        with torch.no_grad():
            return torch.cat(model(x), 1) + torch.cat(model(torch.flip(x, dims=[3])), 1)
    faults = {}
    seconds = time_alternating({"extract": batch}, args.repeats, faults=faults)["extract"]
    print(json.dumps({"malloc": malloc, "seconds": seconds, "faults": faults["extract"]}))


def bench_extract(args, batch=64, rounds=2):
    """Feature extraction with glibc's default malloc settings and tuned (as train.py and the test
    scripts run on the CPU), one fresh process per run, the two alternating; medians of `rounds`."""
    print(f"\nDBN-S feature extraction (fused, image + flip), batch {batch}, {args.threads} threads; "
          f"a fresh process per run, {rounds} runs each, medians")
    print(f"{'input':8s} {'default s/batch':>16s} {'faults':>9s} {'tuned s/batch':>14s} {'faults':>7s} {'speed-up':>9s}")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for height, width in ((256, 128), (256, 256)):
        runs = {"default": [], "tuned": []}
        for _ in range(rounds):
            for mode in runs:
                cmd = [sys.executable, "-m", "utils.bench", "--worker", "extract", "--malloc", mode,
                       "--size", f"{height}x{width}", "--batch", str(batch), "--threads", str(args.threads),
                       "--repeats", "3"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=repo_root).stdout
                runs[mode].append(json.loads(out.strip().splitlines()[-1]))
        d, t = ({key: statistics.median(r[key] for r in runs[mode]) for key in ("seconds", "faults")}
                for mode in ("default", "tuned"))
        print(f"{height}x{width:<5d} {d['seconds']:16.3f} {d['faults']:9,.0f} {t['seconds']:14.3f} "
              f"{t['faults']:7,.0f} {d['seconds'] / t['seconds']:8.2f}x")


# --- loader: one worker's training transforms ----------------------------------------------------

# (name, family, view, output (height, width), source sizes (height, width) drawn from [low, high]
# each side): the real data sets' image sizes and the release's input sizes
LOADER_SETTINGS = [
    ("Market-1501", "reid", None, (256, 128), ((128, 128), (64, 64))),
    ("VeRi-776", "reid", None, (256, 256), ((230, 270), (230, 270))),
    ("University-1652 drone", "university", "drone", (384, 384), ((512, 512), (512, 512))),
    ("University-1652 satellite", "university", "satellite", (384, 384), ((512, 512), (512, 512))),
]


def write_loader_jpegs(folder, family, sizes, count, seed=0):
    """`count` JPEGs (quality 90, as datasets.synthetic writes them) of drawn persons, vehicles or
    sites, each of a size drawn from `sizes` = ((low, high) height, (low, high) width)."""
    import numpy as np
    from datasets import drawing
    rng = np.random.default_rng(seed)
    cam = drawing.Camera(rng, 0)
    paths = []
    for i in range(count):
        height, width = (int(rng.integers(low, high + 1)) for low, high in sizes)
        if family == "university":
            site, _ = drawing.draw_site(rng, size=max(height, width))
            img = drawing.drone_view(site, cam, rng, size=(width, height))
        elif width < height:
            img = drawing.draw_person(drawing.person_identity(rng), cam, rng, size=(width, height))
        else:
            img, _ = drawing.draw_vehicle(drawing.vehicle_identity(rng), cam, rng, size=(width, height))
        path = os.path.join(folder, f"{i:05d}.jpg")
        img.convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def loader_pipelines(family, view, height, width):
    """{name: path -> float32 (3, height, width)}: the training transform on torchvision.io's uint8
    tensor, and the same steps on a Pillow image (Pillow's antialiased resize and rotation)."""
    from PIL import Image
    from torchvision.transforms import v2
    from datasets.image_dataset import read_image
    from datasets.transforms import build_transform, geometric_steps, to_float
    tensor_transform = build_transform(family, height, width, train=True, view=view)
    pil_transform = v2.Compose(geometric_steps(family, height, width, True, view) + [v2.ToImage()] + to_float())

    def tensor_route(path):
        return tensor_transform(read_image(path))

    def pil_route(path):
        with Image.open(path) as img, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Anti-alias option is always applied for PIL")
            return pil_transform(img.convert("RGB"))
    return {"decode_image + uint8 tensor": tensor_route, "Pillow": pil_route}


def bench_loader(args):
    import tempfile
    torch.set_num_threads(1)
    count, repeats = args.images, (3 if args.quick else args.repeats)
    print(f"\nloader: training transforms, file -> float32 tensor, one process, 1 thread (one loader worker on "
          f"one core); {count} generated JPEGs per setting, median of {repeats} alternating runs")
    names = list(loader_pipelines("reid", None, 16, 16))
    print(f"{'setting':26s} {'source':>9s} {'output':>8s} {names[0] + ' img/s':>33s} {names[1] + ' img/s':>14s} "
          f"{'ratio':>6s}")
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as folder:
        for i, (name, family, view, (height, width), sizes) in enumerate(LOADER_SETTINGS):
            sub = os.path.join(folder, str(i))
            os.makedirs(sub)
            paths = write_loader_jpegs(sub, family, sizes, count, seed=i)
            runs = {}
            for route, fn in loader_pipelines(family, view, height, width).items():
                def run(fn=fn):
                    torch.manual_seed(0)
                    for path in paths:
                        fn(path)
                runs[route] = run
            seconds = time_alternating(runs, repeats)
            ours, pil = (count / seconds[route] for route in names)
            (h0, h1), (w0, w1) = sizes
            source = f"{h0}x{w0}" if (h0, w0) == (h1, w1) else f"~{(h0 + h1) // 2}x{(w0 + w1) // 2}"
            print(f"{name:26s} {source:>9s} {height}x{width:<4d} {ours:33.0f} {pil:14.0f} {ours / pil:5.2f}x")


def height_by_width(text):
    """Parse "256x128" as (256, 128); utils.evaluation.image_size is the per-dataset default, not this."""
    height, _, width = text.partition("x")
    return int(height), int(width)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--what", choices=("model", "eval", "extract", "loader", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (3)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (training; inference +2)")
    parser.add_argument("--images", type=int, default=200, help="loader: JPEGs per setting")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="tuned: glibc keeps freed memory, no model pays page faults on every step "
                             "(a fair comparison); default: glibc's settings, under which ResNet-50 does")
    parser.add_argument("--worker", choices=("extract",), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=height_by_width, default=(256, 128), help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    parser = get_args_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.what in ("model", "extract", "loader"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.worker == "extract":
        return extract_worker(args)
    if args.what in ("model", "all"):
        bench_model(args)
    if args.what == "extract":
        bench_extract(args)
    if args.what == "loader":
        bench_loader(args)
    if args.what in ("eval", "all"):
        from utils import bench_eval
        bench_eval.main((["--quick"] if args.quick else []) + rest)


if __name__ == "__main__":
    sys.exit(main())
