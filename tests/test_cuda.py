"""The GPU paths (marked `cuda`; each skips without CUDA, saying so): a float16 AMP training step with
its GradScaler, bfloat16 autocast, channels_last, DataParallel over 2 GPUs, torchrun on NCCL with
--sync-bn, a test script, an exported file (export.py exports on the CPU), and --eval-period on the GPU.
`python gpu_check.py` runs them, then a timed training (see its docstring)."""
import functools
import json
import os
import subprocess
import sys

import pytest
import torch

from datasets.synthetic import generate
from losses import ReIDLoss
from network import DBN
from tests.helpers import ROOT, tiny_run

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
tiny = functools.partial(tiny_run, batch_size=16, epochs="1,2", ema_ratio=0.5, ema_extra=0)
TIMEOUT = 300


@pytest.fixture(scope="module")
def gpu_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gpu_data"))
    generate("market1501", root, ids=8, images_per_id=16, cameras=2, seed=0)
    return root


def batch(n=16, size=(64, 32)):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, *size, generator=g).cuda(), torch.arange(n // 4).repeat_interleave(4).cuda()


def model(num_classes=4):
    torch.manual_seed(0)
    return DBN(num_classes=num_classes, net="small", pretrained=None).cuda()


def run(argv, timeout=TIMEOUT):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_float16_amp_step_with_grad_scaler():
    net, (imgs, labels) = model(), batch()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    before = net.class_list[0].weight.detach().clone()
    with torch.autocast("cuda", dtype=torch.float16):
        logits, embeddings = net.train()(imgs)
    loss, _ = ReIDLoss()(logits, embeddings, labels)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss) and scaler.get_scale() > 0
    assert not torch.equal(before, net.class_list[0].weight)


def test_bfloat16_autocast_matches_float32():
    net, (imgs, _) = model(), batch()
    with torch.no_grad():
        reference = net.eval()(imgs)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = net(imgs)
    assert torch.nn.functional.cosine_similarity(low.float(), reference, dim=1).min() > 0.99


def test_channels_last_gives_the_same_features():
    net, (imgs, _) = model(), batch()
    with torch.no_grad():
        reference = net.eval()(imgs)
        last = net.to(memory_format=torch.channels_last)(imgs.to(memory_format=torch.channels_last))
    torch.testing.assert_close(last, reference, rtol=1e-3, atol=1e-4)


@two_gpus
def test_dataparallel_over_two_gpus_trains(gpu_root, tmp_path):
    run(["train.py", *tiny(gpu_root, tmp_path / "ema.pth", "--device", "cuda", "--gpus", "0,1", "--no-eval")])
    assert (tmp_path / "ema.pth").exists()


@two_gpus
def test_torchrun_on_nccl_with_sync_bn(gpu_root, tmp_path):
    out = run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py",
               *tiny(gpu_root, tmp_path / "ema.pth", "--device", "cuda", "--sync-bn", "--no-eval")])
    assert out.count("saved the average of 2 epochs' weights (1..2)") == 1
    assert torch.load(tmp_path / "ema_last.pth", weights_only=True)["world_size"] == 2


def test_eval_period_on_the_gpu_then_test_script_and_export(gpu_root, tmp_path):
    save = tmp_path / "ema.pth"
    out = run(["train.py", *tiny(gpu_root, save, "--device", "cuda", "--eval-period", "1")])
    records = [json.loads(line) for line in open(tmp_path / "ema_log.jsonl")]
    assert all(0 <= r["metrics"]["mAP"] <= 1 for r in records) and (tmp_path / "ema_best.pth").exists()
    final = out.strip().splitlines()[-1]
    script = run(["test_market1501.py", "--weights", str(save), "--net", "small", "--img-height", "32",
                  "--img-width", "16", "--dataset-root", gpu_root, "--device", "cuda"])
    assert script.strip().splitlines()[-1] == final  # the test script on the GPU gives train.py's numbers
    # export.py exports on the CPU (with its parity check); the exported file then runs on the GPU
    exported = run(["export.py", "--weights", str(save), "--format", "torchscript", "--out", str(tmp_path / "dbn.ts")])
    assert "vs eager PyTorch" in exported and "): ok" in exported
    program = torch.jit.load(str(tmp_path / "dbn.ts"), map_location="cpu")
    imgs = torch.rand(3, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = program(imgs)
        on_gpu = torch.jit.load(str(tmp_path / "dbn.ts"), map_location="cuda")(imgs.cuda()).cpu()
    torch.testing.assert_close(on_gpu, reference, rtol=1e-3, atol=1e-4)
