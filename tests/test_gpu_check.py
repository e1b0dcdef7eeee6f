"""gpu_check.py: on a machine without CUDA the cuda tests skip, it says no GPU was found and what it
skipped, and exits with status 0; its comparison of eager and compiled training against the targets."""
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without CUDA")
def test_without_a_gpu_it_says_so_and_exits_0():
    proc = subprocess.run([sys.executable, "gpu_check.py"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CUDA is not available on this machine" in proc.stdout and "skipped" in proc.stdout
    assert "gpu_check: no GPU found" in proc.stdout
    assert "the timed training at 256x128 batch 64, the eager and compiled training steps (float16 AMP, 32 and " \
           "64 images per GPU) and `python -m benchmarks --what model --device cuda` were not run" in proc.stdout


def test_compare_training_runs_both_batches_in_float16_and_reports_the_targets(monkeypatch):
    """benchmarks.model's training table at 32 and 64 images, float16 autocast, compiled rows included;
    the line gives the compiled DBN-S at 32 images against its eager twin and ResNet-50 compiled."""
    import benchmarks.model as bench_model
    import gpu_check
    calls = []

    def training_table(batch, device, repeats, compiled, amp):
        calls.append((batch, device, repeats, compiled, amp))
        return {"DBN-S channels_last": 0.25 * batch / 32, "DBN-S compiled": 0.1 * batch / 32,
                "ResNet-50 channels_last compiled": 0.4 * batch / 32}
    monkeypatch.setattr(bench_model, "training_table", training_table)
    line = gpu_check.compare_training("cuda")
    assert calls == [(32, "cuda", 3, True, torch.float16), (64, "cuda", 3, True, torch.float16)]
    assert line == ("compiled DBN-S training at 32 images per GPU, float16 AMP: 320 img/s, 2.50x its eager img/s "
                    "(target 2x), 4.00x ResNet-50 channels_last compiled (target 3x)")
