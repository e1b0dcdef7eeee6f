"""One run per --save-path: the lock file beside it (training/run_files.py) names its owner, refuses a
second run (--overwrite and --resume included) and is cleared when its owner is gone."""
import json
import os
import socket
import subprocess
import sys

import pytest

import train
from tests.helpers import ROOT, tiny_run
from training import run_files
from training.run_state import UsageError

IMAGES_PER_ID = 8  # of the training_root fixture (tests/conftest.py)


@pytest.fixture
def live_pid():
    """The pid of a process that runs for the length of the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def gone_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(save_path, pid, host=None):
    with open(run_files.lock_path(str(save_path)), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-02 03:04:05"}, f)


def test_the_lock_records_its_owner_and_is_released(tmp_path):
    save = str(tmp_path / "ema.pth")
    path = run_files.acquire_run_lock(save)
    try:
        assert path == str(tmp_path / "ema.lock")
        owner = json.load(open(path))
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    finally:
        run_files.release_run_lock()
    assert not os.path.exists(path)


def test_a_live_owner_is_named_and_a_second_run_refused(tmp_path, live_pid):
    save = str(tmp_path / "ema.pth")
    write_lock(save, live_pid)
    with pytest.raises(UsageError) as info:
        run_files.acquire_run_lock(save)
    message = str(info.value)
    assert message.startswith(f"--save-path {save}: another run is writing there (pid {live_pid} on "
                              f"{socket.gethostname()}, started 2026-01-02 03:04:05; lock file {tmp_path / 'ema.lock'})")
    assert "--overwrite and --resume do not take over a running run" in message
    assert json.load(open(tmp_path / "ema.lock"))["pid"] == live_pid  # the owner's lock stays


def test_a_lock_of_another_host_is_respected(tmp_path):
    save = str(tmp_path / "ema.pth")
    write_lock(save, gone_pid(), host="another-machine")
    with pytest.raises(UsageError, match="on another-machine"):
        run_files.check_run_lock(save)


def test_a_stale_lock_is_replaced(tmp_path):
    save = str(tmp_path / "ema.pth")
    write_lock(save, gone_pid())
    path = run_files.acquire_run_lock(save)
    try:
        assert json.load(open(path))["pid"] == os.getpid()
    finally:
        run_files.release_run_lock()


def test_overwrite_does_not_delete_a_running_runs_files(training_root, tmp_path, live_pid):
    save = tmp_path / "ema.pth"
    for name in ("ema.pth", "ema_last.pth", "ema_log.jsonl"):
        (tmp_path / name).write_bytes(b"run A's")
    write_lock(save, live_pid)
    args = train.parse_args(tiny_run(training_root, save, "--overwrite", batch_size=8, epochs="1,2", ema_ratio=0.5,
                                     ema_extra=0))
    with pytest.raises(UsageError, match=f"another run is writing there \\(pid {live_pid} "):
        train.main(args)
    assert sorted(os.listdir(tmp_path)) == ["ema.lock", "ema.pth", "ema_last.pth", "ema_log.jsonl"]
    assert all((tmp_path / n).read_bytes() == b"run A's" for n in ("ema.pth", "ema_last.pth", "ema_log.jsonl"))


@pytest.mark.slow
def test_train_py_refuses_a_locked_save_path_with_exit_2(training_root, tmp_path, live_pid):
    save = tmp_path / "ema.pth"
    write_lock(save, live_pid)
    argv = tiny_run(training_root, save, "--dry-run", batch_size=8, epochs="1,2", ema_ratio=0.5, ema_extra=0)
    proc = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr
    assert f"train.py: error: --save-path {save}: another run is writing there (pid {live_pid}" in proc.stderr
    assert "Traceback" not in proc.stderr
