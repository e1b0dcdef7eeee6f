"""export.py: each format (TorchScript, torch.export, ONNX through onnxruntime, OpenVINO) maps a batch of any
size to the test-time features, the sidecar describes the input, the parity check prints, usage errors."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import export
from network import DBN
from evaluation.features import cpu_has_native_bfloat16, dbn_features


@pytest.fixture(scope="module")
def batch():
    return torch.rand(5, 3, 64, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def expected(dbn_checkpoint, batch):
    model, _ = DBN.from_checkpoint(dbn_checkpoint)
    with torch.no_grad():
        return {(flip, norm): dbn_features(model, batch, flip, norm) for flip in (True, False) for norm in (True, False)}


def check_export(capsys, weights, fmt, out, *flags):
    code = export.main(["--weights", weights, "--format", fmt, "--out", out, *flags])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    if fmt == "onnx":
        assert "TensorRT: opset 20, every operator in the list TensorRT 10's ONNX parser supports" in stdout
    assert f"({fmt} vs eager PyTorch, unfused, on a random batch of 3): ok" in stdout
    error = float(stdout.split("parity: max relative error ")[1].split()[0])
    assert error < 1e-4
    meta = json.load(open(f"{out}.json"))
    assert meta["input"]["shape"] == ["batch", 3, 64, 32] and meta["input"]["range"] == [0.0, 1.0]
    assert meta["preprocessing"]["family"] == "reid"
    assert "Resize(size=[64, 32]" in meta["preprocessing"]["test_transform"]
    assert meta["output"]["shape"] == ["batch", 1920] and meta["model"]["batchnorm_folded"]
    return meta


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt,name", [("torchscript", "dbn.ts"), ("exported", "dbn.pt2")])
def test_torch_formats_give_the_test_time_features_for_any_batch(capsys, dbn_checkpoint, batch, expected, tmp_path, fmt,
                                                                 name):
    out = str(tmp_path / name)
    check_export(capsys, dbn_checkpoint, fmt, out)
    loaded = torch.jit.load(out) if fmt == "torchscript" else torch.export.load(out).module()
    with torch.no_grad():
        got = loaded(batch)  # batch 5: traced with 2, checked with 3
    assert got.shape == (5, 1920)
    assert torch.allclose(got, expected[True, True], atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(5), atol=1e-5)


def test_flip_and_normalisation_can_be_left_out(capsys, dbn_checkpoint, batch, expected, tmp_path):
    out = str(tmp_path / "raw.pt2")
    meta = check_export(capsys, dbn_checkpoint, "exported", out, "--no-flip", "--no-normalize")
    assert (meta["output"]["flip_averaged"], meta["output"]["l2_normalised"]) == (False, False)
    with torch.no_grad():
        got = torch.export.load(out).module()(batch)
    def relative_error(a, b):  # unnormalised features of a random DBN are large (about 1e6)
        return ((a - b).abs().max() / b.abs().max()).item()
    assert relative_error(got, expected[False, False]) < 1e-5
    assert relative_error(got, expected[True, False]) > 1e-2


@pytest.mark.slow
def test_onnx_through_onnxruntime(capsys, dbn_checkpoint, batch, expected, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = str(tmp_path / "dbn.onnx")
    meta = check_export(capsys, dbn_checkpoint, "onnx", out)
    assert meta["format"] == "onnx"
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    got = session.run(["features"], {"images": batch.numpy()})[0]
    assert got.shape == (5, 1920) and got.dtype == np.float32
    assert np.allclose(got, expected[True, True].numpy(), atol=1e-5)


@pytest.mark.slow
def test_openvino_ir_through_openvino(dbn_checkpoint, batch, expected, repo_root, tmp_path):
    # in subprocesses: OpenVINO loaded into the test process crashed a later torch.compile there
    if export.missing_packages("openvino"):
        pytest.skip("needs onnx, onnxscript and openvino")
    out = str(tmp_path / "dbn.xml")
    proc = subprocess.run([sys.executable, "export.py", "--weights", dbn_checkpoint, "--format", "openvino", "--out",
                           out], capture_output=True, text=True, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr
    assert "(openvino vs eager PyTorch, unfused, on a random batch of 3): ok" in proc.stdout
    meta = json.load(open(f"{out}.json"))
    assert meta["format"] == "openvino" and os.path.isfile(tmp_path / "dbn.bin")
    assert meta["input"]["shape"] == ["batch", 3, 64, 32] and meta["output"]["shape"] == ["batch", 1920]
    np.save(tmp_path / "batch.npy", batch.numpy())  # batch 5: exported with 2, checked with 3
    run = ("import sys, numpy as np; from network.fast.export import openvino_session; "
           "np.save(sys.argv[3], openvino_session(sys.argv[1])(np.load(sys.argv[2])))")
    subprocess.run([sys.executable, "-c", run, out, str(tmp_path / "batch.npy"), str(tmp_path / "got.npy")],
                   check=True, cwd=repo_root)
    got = np.load(tmp_path / "got.npy")
    assert got.shape == (5, 1920) and got.dtype == np.float32
    assert np.allclose(got, expected[True, True].numpy(), atol=1e-5)


def usage_error(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        export.main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


def test_onnx_without_its_packages_says_what_to_install(capsys, dbn_checkpoint, tmp_path, monkeypatch):
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    err = usage_error(capsys, "--weights", dbn_checkpoint, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert "--format onnx needs the onnx and onnxscript packages (missing: onnxscript); install them with: " \
           "pip install -r requirements-export.txt" in err
    assert not os.path.exists(tmp_path / "m.onnx")
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    err = usage_error(capsys, "--weights", dbn_checkpoint, "--format", "openvino", "--out", str(tmp_path / "m.xml"))
    assert "--format openvino needs the onnx, onnxscript and openvino packages (missing: openvino); install them " \
           "with: pip install -r requirements-export.txt" in err


def test_usage_errors_and_dry_run(capsys, dbn_checkpoint, tmp_path):
    assert "argument --format: invalid choice: 'tflite'" in usage_error(
        capsys, "--weights", dbn_checkpoint, "--format", "tflite", "--out", "m")
    assert "--out m.pt: torch.export.load reads files ending in .pt2; name it e.g. dbn.pt2" in usage_error(
        capsys, "--weights", dbn_checkpoint, "--format", "exported", "--out", "m.pt")
    assert "--out m.onnx: OpenVINO's IR is FILE.xml (the graph) and FILE.bin (the weights); name it e.g. dbn.xml" in \
        usage_error(capsys, "--weights", dbn_checkpoint, "--format", "openvino", "--out", "m.onnx")
    assert "--dtype bfloat16: openvino export is float32 only" in usage_error(
        capsys, "--weights", dbn_checkpoint, "--format", "openvino", "--out", "m.xml", "--dtype", "bfloat16")
    missing = str(tmp_path / "none.pth")
    assert f"--weights {missing}: file not found" in usage_error(
        capsys, "--weights", missing, "--format", "torchscript", "--out", "m.ts")
    assert export.main(["--weights", dbn_checkpoint, "--format", "torchscript", "--out", str(tmp_path / "m.ts"),
                        "--img-height", "128"]) == 2
    assert "was trained at 64x32 (height x width) but the flags ask for 128x32" in capsys.readouterr().err
    assert export.main(["--weights", dbn_checkpoint, "--format", "torchscript", "--out", str(tmp_path / "m.ts"),
                        "--dry-run"]) == 0
    assert f"dry run: would write {tmp_path / 'm.ts'} (torchscript) and {tmp_path / 'm.ts'}.json" in \
        capsys.readouterr().out
    assert not os.path.exists(tmp_path / "m.ts")


def test_bfloat16_usage_errors(capsys, dbn_checkpoint, tmp_path, monkeypatch):
    assert "--dtype bfloat16: onnx export is float32 only" in usage_error(
        capsys, "--weights", dbn_checkpoint, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--dtype",
        "bfloat16")
    monkeypatch.setattr(export.features, "cpu_has_native_bfloat16", lambda: False)
    assert "--dtype bfloat16: this CPU has neither AVX512-BF16 nor AMX" in usage_error(
        capsys, "--weights", dbn_checkpoint, "--format", "torchscript", "--out", str(tmp_path / "m.ts"), "--dtype",
        "bfloat16")


@pytest.mark.skipif(not cpu_has_native_bfloat16(), reason="bfloat16 is offered on CPUs with AVX512-BF16 or AMX")
def test_bfloat16_torchscript_export_checks_the_cosine(capsys, dbn_checkpoint, batch, expected, tmp_path):
    out = str(tmp_path / "m.ts")
    assert export.main(["--weights", dbn_checkpoint, "--format", "torchscript", "--out", out, "--dtype",
                        "bfloat16"]) == 0
    assert re.search(r"parity: smallest cosine similarity 0\.9\d+ \(torchscript in bfloat16 vs eager PyTorch float32, "
                     r"unfused, on a random batch of 3\): ok", capsys.readouterr().out)
    got = export.run_exported("torchscript", out, batch)
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, expected[(True, True)], dim=1).min() > 0.999
    with open(out + ".json") as f:
        assert json.load(f)["model"]["compute_dtype"] == "bfloat16"


def test_parity_failure_sets_the_exit_status(capsys, dbn_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "run_exported", lambda fmt, out, x: torch.ones(3, 1920))
    assert export.main(["--weights", dbn_checkpoint, "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 1
    assert ": FAILED (tolerance 0.0001)" in capsys.readouterr().out


def test_bare_state_dict_takes_the_size_flags(capsys, tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "release_ema.pth")
    torch.save(DBN(num_classes=751, net="large", pretrained=None).state_dict(), path)
    argv = ["--weights", path, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--dry-run"]
    if export.missing_packages("onnx"):
        pytest.skip("onnx / onnxscript not installed")
    assert export.main([*argv, "--img-height", "384", "--img-width", "128"]) == 0
    out = capsys.readouterr().out
    assert "DBN LEViT-large" in out and "input (B, 3, 384, 128)" in out and "output (B, 3840) features" in out
    assert export.main(argv) == 0
    assert "input (B, 3, 256, 128)" in capsys.readouterr().out  # the default for a bare state_dict
