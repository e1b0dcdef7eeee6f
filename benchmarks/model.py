"""`--what model`: parameters and FLOPs; images/s of LEViT and DBN at one batch size next to
torchvision's ResNet-50 and the peers of benchmarks/peers.py, with the matrix-multiply peak of the
same run; latency (ms per call) at batch 1, 8 and 32 of DBN-S in float32 (eager, fused, with and
without network.fast's inference form), in bfloat16 and compiled, next to ResNet-50 in the same settings; the
test-time features of one, two and four crops (images and flips as one batch or two calls);
training steps as train.py runs them (DBN-S and LEViT-S channels_last on the CPU in network.fast's
training form; on CUDA under float16 autocast with a GradScaler), eager and, for DBN-S and ResNet-50,
compiled as train.py --compile compiles them, each with the count of the aten operators it dispatches.

Every table is measured in one process, alternating the models run by run (so a busy machine slows
them all alike), medians reported; a compiled model's first call (the compile) is made before the
timed runs. On CUDA (--device cuda) the half precision is float16 and every timed call ends with a
synchronisation.
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F
import torchvision

import evaluation.features
from benchmarks import configure_malloc, time_alternating
from benchmarks.peers import OSNet, release_style
from evaluation.features import DTYPES, check_dtype, compile_model, dbn_features, prepare_for_inference
from network import DBN, VARIANTS, LEViT
from network.fast import kernels, training_form
from network.fast.cpu import amx_tile
from network.flops import count_flops, count_params
from training.compile import CompiledStep
from training.flags import amp_settings

PEAK_SIZE = 2048  # the peak is the speed of a PEAK_SIZE^3 matrix product
LATENCY_BATCHES = (1, 8, 32)
SIZE = (256, 128)


def plain(model):
    """The unoptimised path: BN not folded, NCHW layout."""
    return model.to(memory_format=torch.contiguous_format)


def half_dtype(device):
    """The half precision benchmarked on `device`, or None where it is not offered (evaluation.features.check_dtype)."""
    name = "float16" if torch.device(device).type == "cuda" else "bfloat16"
    try:
        check_dtype(name, device)
    except ValueError:
        return None
    return name


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype, device, repeats):
    """GFLOP/s (2 per multiply-add) of the faster of two dense products in `dtype`, medians of
    `repeats`: a PEAK_SIZE^3 torch.mm (BLAS) and a 1x1 convolution of 512 -> 512 channels over a
    (32, 512, 32, 32) channels_last batch (oneDNN's GEMM, the kernels the networks run on)."""
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE, device=device).to(dtype) for _ in range(2))
    conv = torch.nn.Conv2d(512, 512, 1, bias=False).to(device, dtype, memory_format=torch.channels_last)
    x = torch.randn(32, 512, 32, 32, device=device).to(dtype).contiguous(memory_format=torch.channels_last)

    def product(fn):
        def run():
            with torch.no_grad():
                fn()
            synchronize(device)
        return run
    seconds = time_alternating({"mm": product(lambda: a @ b), "conv": product(lambda: conv(x))}, repeats, warmup=2)
    return max(2 * PEAK_SIZE ** 3 / seconds["mm"], 2 * x.numel() * 512 / seconds["conv"]) / 1e9


def dbn_small(device, dtype="float32", compile=False, fused=True, num_classes=751, optimize=True):
    """DBN-S, random weights, eval mode, on `device`: BN folded (`fused`), in network.fast's inference
    form (`optimize`), in `dtype`, compiled (`compile`): the path FeatureExtractor runs."""
    model = DBN(num_classes, net="small", pretrained=None).eval()
    if not fused:
        return model.to(device)
    return prepare_for_inference(model.fuse().to(device), dtype, compile, optimize)


def folded_only(device, dtype="float32"):
    """DBN-S with BN folded only, in oneDNN and torch's operators: the path before network.fast's inference
    form and the native kernels, which the 'not optimized' rows and the features of one crop are compared with."""
    return without_native_kernels(dbn_small(device, dtype, optimize=False))


def without_native_kernels(model):
    """`model` with its grouped convolutions sent to oneDNN and its attention to torch's operators
    instead of network/fast/kernels.py's kernels (the path of a machine without a C++ compiler, or with
    LEVIT_KERNELS=0)."""
    if isinstance(model, evaluation.features.CompiledModel):
        model = model.model  # its eager model
    for m in model.modules():
        if getattr(m, "group4", False):
            m.group4 = False
        if getattr(m, "native_kernel", False):
            m.native_kernel = False
    return model


def resnet50(device, dtype="float32", compile=False, channels_last=True):
    """torchvision's ResNet-50 (weights=None), eval mode, in `dtype` (the input is cast by the runner)."""
    model = torchvision.models.resnet50().eval().to(device, DTYPES[dtype])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return compile_model(model) if compile else model


def runner(model, batch, device, input_dtype=torch.float32, channels_last=True, calls=1):
    """A zero-argument callable: `calls` eval forwards of `model` on a fixed random batch, synchronised."""
    x = torch.rand(batch, 3, *SIZE, generator=torch.Generator().manual_seed(0)).to(device, input_dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def fn():
        with torch.no_grad():
            for _ in range(calls):
                model(x)
        synchronize(device)
    return fn


def flops_per_image():
    """{name: FLOPs of one 256x128 image} of the networks in the tables, counted on the meta device."""
    with torch.device("meta"):
        builds = {"LEViT-S": LEViT(**VARIANTS["small"]), "DBN-S": DBN(751, net="small", pretrained=None),
                  "ResNet-50": torchvision.models.resnet50(), "OSNet x1_0": OSNet(751)}
        return {name: count_flops(model, *SIZE) for name, model in builds.items()}


def print_flop_table():
    print("\nFLOPs: torch.utils.flop_counter, one image, 2 FLOPs per multiply-add, window attention included; "
          "OSNet without its classifier, as published")
    print(f"{'model':28s} {'params':>12s} {'GFLOPs':>8s} {'G mult-adds':>12s}")
    rows = [("LEViT-S backbone", lambda: LEViT(**VARIANTS["small"]), [(256, 128), (256, 256)]),
            ("LEViT-L backbone", lambda: LEViT(**VARIANTS["large"]), [(256, 128), (384, 128), (256, 256)]),
            ("DBN-S (751 classes)", lambda: DBN(751, net="small", pretrained=None), [(256, 128)]),
            ("DBN-L (751 classes)", lambda: DBN(751, net="large", pretrained=None), [(256, 128), (384, 128)]),
            ("ResNet-50", lambda: torchvision.models.resnet50(), [(256, 128)]),
            ("OSNet x1_0", lambda: OSNet(751), [(256, 128)])]
    for name, build, sizes in rows:
        with torch.device("meta"):  # shapes only: nothing is allocated or computed
            model = build()
        params = count_params(model)
        if isinstance(model, OSNet):
            params -= count_params(model.classifier)  # as the paper counts it
        params = f"{params:,}"
        for size in sizes:
            flops = count_flops(model, *size)
            print(f"{name + f' {size[0]}x{size[1]}':28s} {params:>12s} {flops / 1e9:8.3f} {flops / 2e9:12.3f}")
            params = ""


def inference_table(batch, device, repeats, peak):
    """images/s at `batch` of the DBN-S paths and their peers, with GFLOP/s and the share of `peak`."""
    half = half_dtype(device)
    flops = flops_per_image()
    dbn = DBN(751, net="small", pretrained=None).eval().to(device)
    models = {  # name: (model, FLOP key, input dtype, channels_last input)
        "ResNet-50": (plain(torchvision.models.resnet50().eval().to(device)), "ResNet-50", torch.float32, False),
        "ResNet-50 channels_last": (resnet50(device), "ResNet-50", torch.float32, True),
        "OSNet x1_0 channels_last": (OSNet(751).eval().to(device, memory_format=torch.channels_last), "OSNet x1_0",
                                     torch.float32, True),
        "LEViT-S unoptimised": (plain(LEViT(**VARIANTS["small"]).eval().to(device)), "LEViT-S", torch.float32, False),
        "LEViT-S fused, channels_last": (LEViT(**VARIANTS["small"]).eval().fuse().to(device), "LEViT-S",
                                         torch.float32, True),
        "DBN-S release-style": (release_style(dbn), "DBN-S", torch.float32, False),
        "DBN-S unoptimised": (plain(DBN(751, net="small", pretrained=None).eval().to(device)), "DBN-S",
                              torch.float32, False),
        "DBN-S fused, not optimized": (folded_only(device), "DBN-S", torch.float32, True),
        "DBN-S fused, channels_last": (dbn_small(device), "DBN-S", torch.float32, True),
    }
    if kernels.available():
        models["DBN-S fused, CL, no native"] = (without_native_kernels(dbn_small(device)), "DBN-S",
                                                torch.float32, True)
    # compiled against compiled (torch.compile, inductor, frozen weights: evaluation.features.compile_model)
    models["OSNet x1_0 CL compiled"] = (compile_model(OSNet(751).eval().to(device, memory_format=torch.channels_last)),
                                        "OSNet x1_0", torch.float32, True)
    models["DBN-S compiled, float32"] = (dbn_small(device, compile=True), "DBN-S", torch.float32, True)
    if half:
        models[f"DBN-S fused, {half}"] = (dbn_small(device, half), "DBN-S", torch.float32, True)
        if kernels.available():
            models[f"DBN-S {half}, no native"] = (without_native_kernels(dbn_small(device, half)), "DBN-S",
                                                      torch.float32, True)
    runs = {name: runner(m, batch, device, dtype, cl) for name, (m, _, dtype, cl) in models.items()}
    faults = {}
    seconds = time_alternating(runs, repeats, faults=faults)
    base, release, osnet = (seconds[k] for k in ("ResNet-50 channels_last", "DBN-S release-style",
                                                 "OSNet x1_0 channels_last"))
    print(f"\ninference, eval mode, batch {batch} (median of {repeats} alternating runs); unoptimised: BN not "
          "folded, NCHW; not optimized: BN folded, no native kernels; release-style: also attention as explicit "
          "normalize/matmul/softmax (benchmarks/peers.py)")
    print(f"{'model':30s} {'images/s':>9s} {'x ResNet-50 CL':>15s} {'x release-style':>16s} {'x OSNet':>8s} "
          f"{'GFLOP/s':>8s} {'of fp32 peak':>13s} {'faults/run':>11s}")
    for name, t in seconds.items():
        gflops = flops[models[name][1]] * batch / t / 1e9
        print(f"{name:30s} {batch / t:9.1f} {base / t:14.2f}x {release / t:15.2f}x {osnet / t:7.2f}x "
              f"{gflops:8.1f} {100 * gflops / peak:12.0f}% {faults[name]:11,.0f}")
    print(f"float32 DBN-S against the peers: eager {release / seconds['DBN-S fused, channels_last']:.2f}x the "
          f"release-style and {osnet / seconds['DBN-S fused, channels_last']:.2f}x OSNet x1_0; compiled "
          f"{seconds['OSNet x1_0 CL compiled'] / seconds['DBN-S compiled, float32']:.2f}x OSNet x1_0 compiled")


def compile_first(models, batches, device):
    """Runs each compiled model once per batch size, largest first; returns {name: {batch: seconds}}
    of those first calls (compiling included)."""
    times = {}
    for name, (model, dtype) in models.items():
        times[name] = {}
        for batch in sorted(batches, reverse=True):
            fn = runner(model, batch, device, DTYPES[dtype])
            start = time.perf_counter()
            fn()
            times[name][batch] = time.perf_counter() - start
    return times


def latency_table(device, repeats):
    """ms per call and images/s at batch 1, 8 and 32: DBN-S float32 eager fused, half precision and
    compiled, ResNet-50 (channels_last) in the same settings. A run is 32 images at every batch size."""
    half = half_dtype(device)
    # dynamo keeps the code it compiled for the inference table's models and would reuse it for another
    # model of the same class and shapes (parameters are graph inputs): forget it, so the compile
    # times below are from cold
    torch._dynamo.reset()
    models = {}  # name: (model, input dtype); DBN casts its input itself
    compiled = {}  # compiled name: its eager twin
    models["DBN-S fused, not optimized, float32"] = (folded_only(device), "float32")
    if half:
        models[f"DBN-S fused, not optimized, {half}"] = (folded_only(device, half), "float32")
    for dtype in ("float32",) + ((half,) if half else ()):
        for net, build, input_dtype in (("DBN-S", dbn_small, "float32"), ("ResNet-50 CL", resnet50, dtype)):
            eager = f"{net}{' fused' if net == 'DBN-S' else ''}, {dtype}"
            models[eager] = (build(device, dtype), input_dtype)
            models[f"{net} compiled, {dtype}"] = (build(device, dtype, compile=True), input_dtype)
            compiled[f"{net} compiled, {dtype}"] = eager
    models = dict(sorted(models.items(), key=lambda item: not item[0].startswith("DBN")))
    first = compile_first({name: models[name] for name in compiled}, LATENCY_BATCHES, device)
    largest = max(LATENCY_BATCHES)
    seconds = {}
    for batch in LATENCY_BATCHES:
        runs = {name: runner(m, batch, device, DTYPES[dtype], calls=largest // batch)
                for name, (m, dtype) in models.items()}
        seconds[batch] = {name: t / (largest // batch) for name, t in time_alternating(runs, repeats).items()}
    print(f"\nlatency: ms per call (images/s), 256x128, eval mode, median of {repeats} alternating runs of "
          f"{largest} images; CL: channels_last")
    print("DBN-S fused: BN folded and network.fast's inference form (the path FeatureExtractor runs); not optimized: BN folded only, "
          "no native kernels")
    print(f"{'model':36s}" + "".join(f"{'batch ' + str(b):>20s}" for b in LATENCY_BATCHES)
          + f"{'x not optimized fp32 at 1':>27s}")
    eager_1 = seconds[1]["DBN-S fused, not optimized, float32"]
    for name in models:
        cells = "".join(f"{1000 * seconds[b][name]:9.1f} ({b / seconds[b][name]:6.1f}/s)" for b in LATENCY_BATCHES)
        print(f"{name:36s}{cells} {eager_1 / seconds[1][name]:25.2f}x")
    print("\ncompiling (torch.compile, inductor, frozen weights, one graph per power-of-two batch: "
          "first call of a graph, compile included, inductor's graph caches off)")
    print(f"{'model':32s} {'batch 32 graph s':>17s} {'batch 8 graph s':>16s} {'batch 1 graph s':>16s} "
          f"{'pays off after (images)':>24s}")
    for name, eager in compiled.items():
        compile_s = first[name][largest] - seconds[largest][name] + first[name][1] - seconds[1][name]
        saved = seconds[largest][eager] / largest - seconds[largest][name] / largest  # per image at batch 32
        pays = f"{compile_s / saved:,.0f}" if saved > 0 else "never (not faster)"
        print(f"{name:32s} {first[name][largest]:17.1f} {first[name][8]:16.1f} {first[name][1]:16.1f} {pays:>24s}")


def features_table(device, repeats, crops=(1, 2, 4)):
    """ms per call of the test-time features (flip-averaged, evaluation.features.dbn_features) of a few
    crops, as a tracker asks for them: the images and their flips as one batch (what dbn_features
    does up to JOINT_FLIP_BATCH images) against two calls, eager DBN-S in float32 and half precision."""
    half = half_dtype(device)
    models = {dtype: dbn_small(device, dtype) for dtype in ("float32",) + ((half,) if half else ())}

    def run(model, x, joint):
        def fn():
            saved = evaluation.features.JOINT_FLIP_BATCH
            evaluation.features.JOINT_FLIP_BATCH = saved if joint else 0
            try:
                with torch.no_grad():
                    dbn_features(model, x)
            finally:
                evaluation.features.JOINT_FLIP_BATCH = saved
            synchronize(device)
        return fn
    runs = {}
    for n in crops:
        x = torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(0)).to(device)
        for dtype, model in models.items():
            runs[(dtype, n, "one batch")] = run(model, x, True)
            runs[(dtype, n, "two calls")] = run(model, x, False)
    # one crop, as a tracker with one target asks: the path before the inference form and the joint batch
    # (BN folded only, image and flip as two calls) against each path of FeatureExtractor
    one = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(1)).to(device)
    paths = {"float32, BN folded only, two calls": run(folded_only(device), one, False)}
    for dtype in models:
        paths[f"{dtype}, optimized, one batch"] = run(models[dtype], one, True)
        compiled = dbn_small(device, dtype, compile=True)
        run(compiled, one, True)()  # compiles the batch-2 graph before timing
        paths[f"{dtype}, compiled, one batch"] = run(compiled, one, True)
    runs.update({("crop", name): fn for name, fn in paths.items()})
    seconds = time_alternating(runs, repeats)
    print(f"\ntest-time features (image + flip) of a few crops, DBN-S eager: ms per call, median of {repeats} "
          "alternating runs")
    print(f"{'dtype':10s} {'crops':>6s} {'two calls':>10s} {'one batch':>10s} {'speed-up':>9s}")
    for dtype in models:
        for n in crops:
            two, one = seconds[(dtype, n, "two calls")], seconds[(dtype, n, "one batch")]
            print(f"{dtype:10s} {n:6d} {1000 * two:10.1f} {1000 * one:10.1f} {two / one:8.2f}x")
    base = seconds[("crop", "float32, BN folded only, two calls")]
    print("\nfeatures of one crop (image + flip), ms per call, same runs; x: against BN folded only (no native "
          "kernels), two calls")
    for name in paths:
        print(f"{name:42s} {1000 * seconds[('crop', name)]:7.1f}  {base / seconds[('crop', name)]:5.2f}x")


def cpu_training_form(model, device):
    """`model` in network.fast's training form on the CPU, as train.py trains it there."""
    return training_form(model) if device.type == "cpu" else model


# the training table's compiled rows: {compiled row: its eager twin}
COMPILED_TRAINING = {"DBN-S compiled": "DBN-S channels_last",
                     "ResNet-50 channels_last compiled": "ResNet-50 channels_last"}


def training_precision(device):
    """train.py's default autocast dtype on `device` (training.flags.amp_settings): float16 on CUDA, None
    (float32, no autocast) on the CPU."""
    use_amp, dtype = amp_settings(argparse.Namespace(amp=None, amp_dtype="auto"), device)
    return dtype if use_amp else None


def count_operators(fn):
    """The top-level aten operators one call of `fn` dispatches, counted by torch.profiler: the events
    named aten::* with no aten::* event above them (aten::addmm called by aten::linear is part of
    aten::linear; the backward's operators, under autograd's nodes, and the optimizer's, under its
    step, are top-level). Other namespaces (the native kernels' levit_kernels::*) and inductor's
    generated kernels are not aten operators and are not counted."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()

    def under_aten(event):
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and not under_aten(e))


def training_runs(batch, device, num_classes=751, compiled=False, amp=None):
    """{name: (one training step, its GradScaler)}: forward, cross-entropy on every logit the model returns,
    backward, SGD step, as train.py's step. `amp`: the forward's autocast dtype (None: float32); under
    float16 a GradScaler scales the loss (train.py's --amp). `compiled`: also the rows of COMPILED_TRAINING,
    a new model of their eager twin with its forward through training.compile.CompiledStep (mode
    default), as train.py --compile runs it."""
    torch.manual_seed(0)
    y = torch.randint(0, num_classes, (batch,), device=device)
    builds = {  # name: a new model and whether its input is channels_last
        "ResNet-50": lambda: (plain(torchvision.models.resnet50(num_classes=num_classes)), False),
        "ResNet-50 channels_last": lambda: (torchvision.models.resnet50(num_classes=num_classes).to(
            memory_format=torch.channels_last), True),
        "LEViT-S unoptimised": lambda: (plain(LEViT(num_classes, **VARIANTS["small"])), False),
        "LEViT-S channels_last": lambda: (cpu_training_form(LEViT(num_classes, **VARIANTS["small"]), device), True),
        "DBN-S unoptimised": lambda: (plain(DBN(num_classes, net="small", pretrained=None)), False),
        "DBN-S channels_last": lambda: (cpu_training_form(DBN(num_classes, net="small", pretrained=None), device),
                                        True),
    }
    rows = {name: (name, False) for name in builds}  # name: (its build, compiled)
    if compiled:
        rows.update({name: (eager, True) for name, eager in COMPILED_TRAINING.items()})

    def run(model, channels_last, compiled):
        model.train().to(device)
        forward = CompiledStep(model, "default", batch, report=False) if compiled else model
        x = torch.rand(batch, 3, *SIZE, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        # as train.py: float16 needs loss scaling, the loss is computed outside autocast
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        autocast = torch.autocast(device.type, dtype=amp, enabled=amp is not None)

        def fn():
            with autocast:
                out = forward(x)
            logits = out[0] if isinstance(out, tuple) else [out]
            loss = sum(F.cross_entropy(z.float(), y) for z in logits) / len(logits)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            synchronize(device)
        return fn, scaler
    return {name: run(*builds[build](), compiled) for name, (build, compiled) in rows.items()}


def settle_loss_scale(step, scaler, tries=30):
    """Runs `step` until its GradScaler (when enabled) takes the SGD step: a float16 step whose gradients
    overflow is skipped and the scale halved, as in train.py's first steps; the timed steps are the
    steady state's."""
    if not scaler.is_enabled():
        return
    for _ in range(tries):
        scale = scaler.get_scale()
        step()
        if scaler.get_scale() >= scale:  # not halved: no overflow, the step was taken
            return
    raise RuntimeError(f"the loss scale fell {tries} times in a row, to {scaler.get_scale():g}: every float16 "
                       "step overflows")


def training_table(batch, device, repeats, compiled=True, amp=None):
    """images/s of the training steps of training_runs, their operators (count_operators), the compiled
    rows against their eager twins and DBN-S against ResNet-50 channels_last in the same setting. The
    compiled rows' first step (the compile) runs before the timed runs, and under float16 the steps until
    the loss scale settles (settle_loss_scale). Returns {name: seconds per step}."""
    if compiled:
        # dynamo would reuse what an earlier table compiled for these classes, and take a batch size other
        # than the one it compiled for as dynamic: one static graph for this batch, from cold
        torch._dynamo.reset()
    steps = training_runs(batch, device, compiled=compiled, amp=amp)
    runs = {name: step for name, (step, _) in steps.items()}
    first = {}
    for name in COMPILED_TRAINING if compiled else ():
        start = time.perf_counter()
        runs[name]()  # compiles the forward and, at its backward, the backward
        first[name] = time.perf_counter() - start
    for step, scaler in steps.values():
        settle_loss_scale(step, scaler)
    faults = {}
    seconds = time_alternating(runs, repeats, faults=faults)
    operators = {name: count_operators(fn) for name, fn in runs.items()}
    base, base_cl = seconds["ResNet-50"], seconds["ResNet-50 channels_last"]
    precision = "float32" if amp is None else f"{str(amp).removeprefix('torch.')} autocast" + (
        " with a GradScaler" if amp == torch.float16 else "")
    print(f"\ntraining step: forward + loss + backward + SGD, batch {batch}, {SIZE[0]}x{SIZE[1]}, {precision} "
          f"(median of {repeats} alternating runs)")
    print("operators: the top-level aten operators of one step (torch.profiler, benchmarks.model.count_operators)"
          + ("; compiled: the forward and its backward through torch.compile, mode default, as train.py "
             "--compile (training/compile.py); inductor's fused kernels are not aten operators, a compiled "
             "row counts what its step still dispatches (the operators the graphs call, the loss, the SGD "
             "step)" if compiled else ""))
    print(f"{'model':33s} {'images/s':>9s} {'x ResNet-50':>12s} {'x ResNet-50 channels_last':>26s} "
          f"{'operators':>10s} {'page faults/run':>16s}")
    for name, t in seconds.items():
        print(f"{name:33s} {batch / t:9.1f} {base / t:11.2f}x {base_cl / t:25.2f}x {operators[name]:10,d} "
              f"{faults[name]:16,.0f}")
    dbn = f"DBN-S / ResNet-50 channels_last, images/s: eager {base_cl / seconds['DBN-S channels_last']:.2f}x"
    if compiled:
        print("first step, compile included (not timed): "
              + ", ".join(f"{name} {s:.1f} s" for name, s in first.items()))
        print("compiled / eager, images/s: " + ", ".join(f"{eager} {seconds[eager] / seconds[name]:.2f}x"
                                                        for name, eager in COMPILED_TRAINING.items()))
        dbn += (f", compiled {seconds['ResNet-50 channels_last compiled'] / seconds['DBN-S compiled']:.2f}x "
                "(against ResNet-50 channels_last compiled)")
    print(dbn)
    return seconds


def native_kernels_line():
    """Whether network/fast/kernels.py's kernels (grouped convolutions, window attention) run here, and how."""
    elsewhere = "grouped convolutions in oneDNN, attention in torch's operators"
    if not kernels.enabled():
        return f"native kernels: off (LEVIT_KERNELS=0): {elsewhere}"
    if not kernels.available():
        return f"native kernels: not built (see the warning above): {elsewhere}"
    return (f"native kernels: built ({kernels.vector_lanes()} float32 lanes"
            + (", bfloat16 pair products" if kernels.bfloat16_dot() else "") + "): the grouped convolutions "
            "and the attention of every row in network.fast's inference form, the stride-1 grouped convolutions "
            "of the channels_last training rows (float32); the 'no native', 'not optimized' and 'unoptimised' "
            "rows run in oneDNN and torch's operators")


def compile_from_cold():
    """Turns inductor's and AOTAutograd's graph caches off (on disk and in memory), so that every
    compile time is measured from cold, whatever earlier runs or earlier tables compiled."""
    import torch._functorch.config
    import torch._inductor.config
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False


def setup(args):
    """Threads, cold compiles, malloc, the header lines; (device, repeats)."""
    torch.set_num_threads(args.threads)
    compile_from_cold()
    malloc = configure_malloc(args.malloc)  # before any model allocates
    device = torch.device(args.device)
    where = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible")
    print(f"torch {torch.__version__}, {where}; batch {args.batch}, {SIZE[0]}x{SIZE[1]} input")
    print(malloc)
    return device, 3 if args.quick else args.repeats


def bench_training(args):
    """`--what training`: the training table alone."""
    device, repeats = setup(args)
    training_table(args.batch, device, repeats, not args.no_compiled_training, training_precision(device))


def bench(args):
    device, repeats = setup(args)
    half = half_dtype(device)
    if device.type == "cpu":
        print("bfloat16: " + (f"native ({'AMX' if amx_tile() else 'AVX512-BF16'}), "
                              "benchmarked" if half else "not native on this CPU (it would be emulated, slower "
                              "than float32): left out"))
    if device.type == "cpu":
        print(native_kernels_line())
    print_flop_table()
    peak = matmul_peak(torch.float32, device, repeats + 2)
    line = (f"\nmatrix-multiply peak (the faster of torch.mm {PEAK_SIZE}^3 and a 512 -> 512 1x1 conv), float32: "
            f"{peak:.1f} GFLOP/s")
    if half:
        line += f"; {half}: {matmul_peak(DTYPES[half], device, repeats + 2):.1f} GFLOP/s"
    print(line)
    inference_table(args.batch, device, repeats + 2, peak)
    latency_table(device, repeats + 2)
    features_table(device, repeats + 2)
    if not args.no_training:
        training_table(args.batch, device, repeats, not args.no_compiled_training, training_precision(device))
