"""Export a DBN checkpoint for deployment: TorchScript, torch.export, ONNX or OpenVINO, BatchNorm folded, any batch size.

    python export.py --weights params/ema.pth --format onnx --out dbn.onnx
    python export.py --weights params/ema.pth --format openvino --out dbn.xml
    python export.py --weights params/ema.pth --format exported --out dbn.pt2
    python export.py --weights params/ema.pth --format torchscript --out dbn.ts

The exported model maps a float32 (B, 3, H, W) batch of RGB images in [0, 1], already resized by
the test transform, to the test-time features: the five embeddings of the image plus those of its
horizontal flip, L2-normalised (a drop-in for the test scripts' features). --no-flip and
--no-normalize leave either step out. FILE.json, written beside FILE, records the input size, the
preprocessing (the test transform, as built by datasets.transforms), the output and the checkpoint.

ONNX and OpenVINO files hold the export form of network/fast/export.py: standard operators arranged
for ONNX Runtime (--format onnx) and for OpenVINO (--format openvino: FILE.xml and FILE.bin, its IR,
converted from ONNX). The ONNX file is also checked against what TensorRT's ONNX parser reads (its
opset and operators; TensorRT itself is not run). Both need the optional packages of
requirements-export.txt.

A parity check runs the exported file (in ONNX Runtime, OpenVINO or torch) on a random batch against
eager PyTorch (the unfused model) and prints the max relative error: max |exported - eager| / max
|eager|; above 1e-4 the exit status is 1. With --dtype bfloat16 (a CPU with AVX512-BF16 or AMX;
TorchScript and torch.export) the network but its stem and last BatchNorm1d runs in bfloat16 (input
and output stay float32) and the check is the smallest cosine similarity of the features to
float32's, at least 0.999. Exit status 2 on a usage error.
"""
import argparse
import importlib.util
import json
import os
import sys
import warnings

import torch

from evaluation import features
from network.fast import export as exporting
from utils.cli import HelpFormatter, check_output
from utils.console import show_warnings_as_lines

FORMATS = ("torchscript", "exported", "onnx", "openvino")
# the optional packages each format needs to be written (requirements-export.txt)
PACKAGES = {"onnx": ("onnx", "onnxscript"), "openvino": ("onnx", "onnxscript", "openvino")}
SUFFIXES = {"exported": (".pt2", "torch.export.load reads files ending in .pt2", "dbn.pt2"),
            "openvino": (".xml", "OpenVINO's IR is FILE.xml (the graph) and FILE.bin (the weights)", "dbn.xml")}
TOLERANCE = 1e-4  # parity: the largest max relative error accepted
MIN_COSINE = 0.999  # parity of a bfloat16 export: the smallest cosine similarity to float32 accepted
RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}  # the runtime whose export form each format holds
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # traced with one batch size, checked with another (the batch is dynamic)


def get_args_parser():
    parser = argparse.ArgumentParser(
        "export.py", parents=[features.get_args_parser(running=False)],
        formatter_class=HelpFormatter,
        description="Export a DBN checkpoint (BatchNorm folded, dynamic batch) that maps a (B, 3, H, W) float "
                    "batch in [0, 1] to the test-time features; prints a parity check against eager PyTorch.")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="torchscript (torch.jit.trace, torch.jit.load), exported (torch.export, "
                             "torch.export.load), onnx (torch.onnx.export with dynamo=True, arranged for ONNX "
                             "Runtime) or openvino (OpenVINO IR: FILE.xml and FILE.bin)")
    parser.add_argument("--out", required=True, help="the file to write; FILE.json is written beside it")
    parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                        help="leave out the L2 normalisation of the features")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the flags and the checkpoint, print what would be written and exit")
    return parser


def missing_packages(fmt):
    """The optional packages format `fmt` needs and this environment lacks."""
    return exporting.missing_packages(PACKAGES.get(fmt, ()))


def export(head, example, fmt, out):
    """Write `head` (a FeatureHead in eval mode) to `out` in format `fmt`, batch dimension dynamic."""
    if fmt == "onnx":
        return exporting.save_onnx(head, example, out)
    if fmt == "openvino":
        return exporting.module_to_openvino(head, example, out)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():
                # torch.jit is deprecated in favour of torch.export, and the tracer warns about Python
                # values computed from shapes (the window padding); the parity check at another batch
                # size shows the trace generalises
                warnings.simplefilter("ignore", category=FutureWarning)
                warnings.simplefilter("ignore", category=DeprecationWarning)
                warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
                traced = torch.jit.trace(head, example)
                torch.jit.save(traced, out)
        else:
            torch.export.save(torch.export.export(head, (example,), dynamic_shapes=({0: batch},)), out)


def run_exported(fmt, out, x):
    """Features of batch `x` from the exported file, or None when the runtime is not installed."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            model = torch.jit.load(out)
        with torch.no_grad():
            return model(x)
    if fmt == "exported":
        with torch.no_grad():
            return torch.export.load(out).module()(x)
    if fmt == "openvino":
        return torch.from_numpy(exporting.openvino_session(out)(x.numpy()))
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    return torch.from_numpy(exporting.onnxruntime_session(out)(x.numpy()))


def sidecar(info, transform, args, feature_dim):
    """What FILE.json records: input, preprocessing, output and source of the exported model."""
    return {
        "format": args.format,
        "input": {"name": "images", "shape": ["batch", 3, info["img_height"], info["img_width"]],
                  "dtype": "float32", "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0],
                  "mean_std": None},
        "preprocessing": {"family": info["transform"], "img_height": info["img_height"],
                          "img_width": info["img_width"], "test_transform": repr(transform),
                          "note": "decode to RGB, apply the test transform (it resizes and scales to [0, 1]); "
                                  "no mean/std normalisation"},
        "output": {"name": "features", "shape": ["batch", feature_dim], "dtype": "float32",
                   "flip_averaged": args.flip, "l2_normalised": args.normalize,
                   "similarity": "dot product" if args.normalize else "cosine of the features"},
        "model": {"variant": info["variant"], "compute_dtype": args.dtype, "weights": os.path.abspath(info["source"]),
                  "dataset": info["dataset"], "batchnorm_folded": True, "metrics": info["metrics"]},
    }


def main(argv=None):
    show_warnings_as_lines()
    parser = get_args_parser()
    args = parser.parse_args(argv)
    features.check_args(args, parser)
    if args.format in SUFFIXES:
        suffix, why, example = SUFFIXES[args.format]
        if not args.out.endswith(suffix):
            parser.error(f"--out {args.out}: {why}; name it e.g. {example}")
    check_output(parser, "--out", args.out)
    if args.format in PACKAGES and args.dtype != "float32":
        parser.error(f"--dtype {args.dtype}: {args.format} export is float32 only (its runtimes choose their own "
                     "precision); use --format torchscript or exported for a bfloat16 file")
    missing = missing_packages(args.format)
    if missing:
        parser.error(exporting.packages_error(f"--format {args.format}", PACKAGES[args.format], missing))
    from datasets.transforms import build_transform
    from network import DBN, CheckpointError
    from network.fast import to_inference_dtype
    try:
        model, info = features.load_for_inference(args.weights, args.net, args.img_height, args.img_width,
                                                  args.transform, device="cpu")
        eager, _ = DBN.from_checkpoint(args.weights, info["variant"], info["img_height"], info["img_width"])
    except CheckpointError as err:
        print(f"export.py: error: {err}", file=sys.stderr)
        return 2
    height, width = info["img_height"], info["img_width"]
    steps = [s for s, on in (("flip-averaged", args.flip), ("L2-normalised", args.normalize)) if on]
    print(f"model: DBN LEViT-{info['variant']} from {args.weights}, BatchNorm folded; input (B, 3, {height}, "
          f"{width}) float32 RGB in [0, 1]; output (B, {model.feature_dim}) features"
          f"{', ' + ', '.join(steps) if steps else ''}")
    meta_path = f"{args.out}.json"
    if args.dry_run:
        extra = f", {exporting.openvino_weights(args.out)}" if args.format == "openvino" else ""
        print(f"dry run: would write {args.out}{extra} ({args.format}) and {meta_path}")
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # plain NCHW weights: the exported graph then has no layout conversions (channels_last is a CPU
    # speed-up for eager PyTorch; runtimes choose their own layouts)
    model = model.to(memory_format=torch.contiguous_format)
    if args.format in PACKAGES:
        model = exporting.export_form(model, RUNTIME[args.format])
    if args.dtype != "float32":
        model = to_inference_dtype(model, features.DTYPES[args.dtype])
    head = features.FeatureHead(model, args.flip, args.normalize).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(EXAMPLE_BATCH, 3, height, width, generator=generator)
    export(head, example, args.format, args.out)
    transform = build_transform(info["transform"], height, width, train=False)
    with open(meta_path, "w") as f:
        json.dump(sidecar(info, transform, args, model.feature_dim), f, indent=2)
    written = [args.out] + ([exporting.openvino_weights(args.out)] if args.format == "openvino" else [])
    size = sum(os.path.getsize(path) for path in written) / 2 ** 20
    print(f"wrote {' and '.join(written)} ({size:.1f} MiB) and {meta_path}")
    if args.format == "onnx":
        problems = exporting.tensorrt_problems(args.out)
        print("TensorRT: " + ("; ".join(problems) if problems else f"opset {exporting.ONNX_OPSET}, every operator in "
                              "the list TensorRT 10's ONNX parser supports (TensorRT itself not run)"))

    x = torch.rand(CHECK_BATCH, 3, height, width, generator=generator)
    with torch.no_grad():
        expected = features.FeatureHead(eager, args.flip, args.normalize).eval()(x)
    got = run_exported(args.format, args.out, x)
    if got is None:
        print("parity: skipped, onnxruntime is not installed (pip install -r requirements-export.txt)")
        return 0
    if args.dtype != "float32":
        cosine = torch.nn.functional.cosine_similarity(got.float(), expected, dim=1).min().item()
        verdict = "ok" if cosine >= MIN_COSINE else f"FAILED (at least {MIN_COSINE:g})"
        print(f"parity: smallest cosine similarity {cosine:.5f} ({args.format} in {args.dtype} vs eager PyTorch "
              f"float32, unfused, on a random batch of {CHECK_BATCH}): {verdict}")
        return 0 if cosine >= MIN_COSINE else 1
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    verdict = "ok" if error <= TOLERANCE else f"FAILED (tolerance {TOLERANCE:g})"
    print(f"parity: max relative error {error:.2e} ({args.format} vs eager PyTorch, unfused, on a random batch "
          f"of {CHECK_BATCH}): {verdict}")
    return 0 if error <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
