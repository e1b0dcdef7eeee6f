"""`--what deploy`: DBN-S as export.py writes it for ONNX Runtime and OpenVINO, against OSNet x1_0
(benchmarks/peers.py) exported the same way, in both runtimes on the CPU, float32.

Every network is exported by network/fast/export.py's writers (torch.onnx, dynamo, opset 20; OpenVINO
IR converted from that ONNX file) from random weights, DBN-S as `export.py --no-flip` writes it (the
five L2-normalised embeddings of a 256x128 batch), OSNet x1_0 its 512-d feature. DBN-S runs in both
export forms (network.fast.export_form): the one export.py writes for the runtime being timed and the
other one, so that each table also shows why each runtime gets its form. The last table times DBN-S's
ONNX Runtime file against this repository's own PyTorch path (network.fast.inference_form with the
native kernels, what FeatureExtractor runs) at the largest batch.

In each table the networks alternate call by call (time_alternating), so a busy machine slows them
alike; ms per call and images/s are medians, the ratio is DBN-S's images/s over OSNet x1_0's.
"""
import os
import tempfile

import torch

from benchmarks import time_alternating
from benchmarks.peers import OSNet
from evaluation.features import FeatureHead
from network import DBN
from network.fast import RUNTIMES
from network.fast import export as exporting
from network.fast import export_form, inference_form

BATCHES = (1, 8, 32)
SIZE = (256, 128)
PACKAGES = ("onnx", "onnxscript", "onnxruntime", "openvino")
IMAGES_PER_RUN = 32  # a timed run calls a network until it has seen this many images (at least once)


def missing_packages():
    return exporting.missing_packages(PACKAGES)


def write_files(folder):
    """{network name: {runtime: file}}: DBN-S in each export form and OSNet x1_0, ONNX and OpenVINO IR."""
    torch.manual_seed(0)
    dbn = DBN(751, net="small", pretrained=None).eval()
    networks = {f"DBN-S, {runtime} form": FeatureHead(export_form(dbn, runtime), flip=False).eval()
                for runtime in RUNTIMES}
    networks["OSNet x1_0"] = OSNet().eval()
    example = torch.rand(2, 3, *SIZE)
    files = {}
    for i, (name, module) in enumerate(networks.items()):
        onnx_path, xml_path = (os.path.join(folder, f"network{i}.{suffix}") for suffix in ("onnx", "xml"))
        exporting.save_onnx(module, example, onnx_path)
        exporting.save_openvino(onnx_path, xml_path)
        files[name] = {"onnxruntime": onnx_path, "openvino": xml_path}
    return files, dbn


def repeated(run, x):
    calls = max(1, IMAGES_PER_RUN // x.shape[0])
    return lambda: [run(x) for _ in range(calls)], calls


def table(runtime, files, threads, repeats):
    sessions = {name: (exporting.onnxruntime_session if runtime == "onnxruntime" else exporting.openvino_session)(
        paths[runtime], threads) for name, paths in files.items()}
    print(f"\n{runtime}, float32, {threads} threads: ms per call (images/s); x: images/s against OSNet x1_0 "
          f"(median of {repeats} alternating runs)")
    print(f"{'network':28s}" + "".join(f"{f'batch {b}':>24s}" for b in BATCHES))
    results = {}
    for batch in BATCHES:
        x = torch.rand(batch, 3, *SIZE).numpy()
        runs = {name: repeated(session, x) for name, session in sessions.items()}
        seconds = time_alternating({name: fn for name, (fn, _) in runs.items()}, repeats, warmup=2)
        results[batch] = {name: seconds[name] / runs[name][1] for name in runs}
    for name in sessions:
        cells = []
        for batch in BATCHES:
            t, base = results[batch][name], results[batch]["OSNet x1_0"]
            cells.append(f"{1000 * t:8.1f} ({batch / t:6.1f}/s) {base / t:4.2f}x")
        print(f"{name:28s}" + "".join(f"{c:>24s}" for c in cells))
    return results


def against_pytorch(files, dbn, threads, repeats, batch=BATCHES[-1]):
    """DBN-S's ONNX Runtime file against the repository's PyTorch inference form, same features."""
    session = exporting.onnxruntime_session(files["DBN-S, onnxruntime form"]["onnxruntime"], threads)
    pytorch = FeatureHead(inference_form(dbn), flip=False).eval()
    x = torch.rand(batch, 3, *SIZE)
    numpy_x = x.numpy()

    def eager():
        with torch.no_grad():
            pytorch(x)
    seconds = time_alternating({"ort": lambda: session(numpy_x), "pytorch": eager}, repeats, warmup=2)
    print(f"\nDBN-S at batch {batch}, {threads} threads: ONNX Runtime (its export form) against this repository's "
          f"PyTorch inference form (native kernels), median of {repeats} alternating runs")
    for name, label in (("pytorch", "PyTorch inference form"), ("ort", "ONNX Runtime, onnxruntime form")):
        print(f"{label:32s} {1000 * seconds[name]:8.1f} ms ({batch / seconds[name]:6.1f}/s)")
    print(f"ONNX Runtime / PyTorch: {seconds['pytorch'] / seconds['ort']:.2f}x")


def bench(args):
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    import onnxruntime
    import openvino
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}; "
          f"{SIZE[0]}x{SIZE[1]} input, random weights; exporting ...")
    with tempfile.TemporaryDirectory() as folder:
        files, dbn = write_files(folder)
        for runtime in RUNTIMES:
            table(runtime, files, args.threads, repeats)
        against_pytorch(files, dbn, args.threads, repeats)
