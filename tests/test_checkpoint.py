"""training/resume.py: atomic writes, weights_only reads, random states."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from network import CheckpointError
from training.resume import last_checkpoint_path, load_training_checkpoint, log_path, rng_state, set_rng_state
from utils.files import atomic_save


def test_paths_beside_save_path():
    assert last_checkpoint_path(os.path.join("params", "ema.pth")) == os.path.join("params", "ema_last.pth")
    assert log_path(os.path.join("params", "ema.pth")) == os.path.join("params", "ema_log.jsonl")
    assert last_checkpoint_path("run") == "run_last.pth"


def test_atomic_save_round_trip(tmp_path):
    path = tmp_path / "sub" / "a.pth"
    obj = {"x": torch.arange(5), "epoch": 3, "args": {"lr": 0.1, "epochs": [5, 75], "amp": None}}
    atomic_save(obj, str(path))
    back = torch.load(path, weights_only=True)
    assert torch.equal(back["x"], obj["x"]) and back["epoch"] == 3 and back["args"] == obj["args"]
    assert os.listdir(path.parent) == ["a.pth"]


def test_failed_save_keeps_previous_file_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "a.pth"
    atomic_save({"v": torch.tensor([1.0])}, str(path))

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"v": torch.tensor([2.0])}, str(path))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["a.pth"]  # no temporary file left
    assert torch.load(path, weights_only=True)["v"].item() == 1.0
    # and a failure before any previous version leaves no file at all
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"v": torch.tensor([3.0])}, str(tmp_path / "b.pth"))
    assert os.listdir(tmp_path) == ["a.pth"]


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from utils.files import atomic_save
i = 0
while True:
    atomic_save({{"i": i, "w": torch.full((4_000_000,), float(i))}}, {path!r})
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_kill_during_writes_never_leaves_a_torn_file(tmp_path, repo_root):
    path = str(tmp_path / "ckpt.pth")
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=repo_root, path=path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # a few complete writes first
            assert proc.stdout.readline()
        time.sleep(random.uniform(0.0, 0.3))  # then kill it at a random moment, most likely mid-write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(path, weights_only=True)
    assert torch.all(state["w"] == float(state["i"]))


def test_load_training_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_training_checkpoint(str(tmp_path / "missing_last.pth"))
    bare = tmp_path / "ema.pth"
    torch.save({"stem.0.conv.weight": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match=r"not a training checkpoint.*_last\.pth"):
        load_training_checkpoint(str(bare))


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(3), np.random.rand(2), random.random(), np.random.randn()  # gauss cache filled
    path = str(tmp_path / "rng.pth")
    atomic_save({"rng": rng_state()}, path)
    expected = (torch.rand(4), np.random.rand(3), random.random(), np.random.randn())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    got = (torch.rand(4), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]
