"""gpu_check.py on a machine without CUDA: the cuda tests skip, it says no GPU was found and what it
skipped, and exits with status 0."""
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
    assert "the timed training at 256x128 batch 64 and `python -m benchmarks --what model --device cuda` were " \
           "not run" in proc.stdout
