"""train.py under torchrun on the CPU (gloo, 2 processes): a run with weight averaging that the test
script evaluates, rank-0-only output, Ctrl-C and an exact resume, the first step's gradient against
a single process's, and a killed rank ending the run instead of hanging. (utils/distributed.py)"""
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests import ddp_first_step, helpers
from tests.helpers import ROOT, assert_same_state, load, start, tiny_run

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# LEViT-S from scratch at 32x16 on 8 ids x 16 images; global batch 4 ids x 4 images = 2 ids per
# process; 4 passes x 2 batches = 8 steps per epoch; epochs 1 and 2 both averaged
IMAGES_PER_ID = 16  # of the training_root fixture (tests/conftest.py)
STEPS = 8
TIMEOUT = 240
tiny = functools.partial(tiny_run, batch_size=16, epochs="1,2", ema_ratio=0.5, ema_extra=0)


def torchrun(argv, script="train.py"):
    """torchrun with 2 processes, in its own session so that a failed test can end the whole group."""
    return start([*TORCHRUN, os.path.join(ROOT, script), *argv], start_new_session=True)


def finish(proc, timeout=TIMEOUT):
    return helpers.finish(proc, timeout)


def wait_for(path, proc, timeout=TIMEOUT):
    deadline = time.time() + timeout
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    return os.path.exists(path) and proc.poll() is None


def workers(proc):
    """{rank: pid} of the processes torchrun started (its children whose environment has RANK)."""
    found = {}
    for task in os.listdir(f"/proc/{proc.pid}/task"):
        with open(f"/proc/{proc.pid}/task/{task}/children") as f:
            for pid in map(int, f.read().split()):
                with open(f"/proc/{pid}/environ", "rb") as env:
                    variables = dict(v.split(b"=", 1) for v in env.read().split(b"\0") if b"=" in v)
                if b"RANK" in variables:
                    found[int(variables[b"RANK"])] = pid
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def bars_started(err, desc):
    """How many progress bars `desc` were drawn (each draws its empty state once)."""
    return len(re.findall(re.escape(desc) + r":\s+0%\|[^|]*\| 0/\d+ \[00:00<\?, \?batch/s\](?=[\r\n])", err))


# --- a run with two processes ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_run(training_root, tmp_path_factory):
    """An uninterrupted 2-process run with the final evaluation: (folder, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("ddp")
    code, out, err = finish(torchrun(tiny(training_root, folder / "ema.pth")))
    assert code == 0, err
    return folder, out, err


@pytest.mark.slow
def test_torchrun_trains_averages_and_writes_an_evaluable_checkpoint(ddp_run, training_root):
    folder, out, _ = ddp_run
    assert "saved the average of 2 epochs' weights (1..2)" in out
    last = load(folder / "ema_last.pth")
    assert last["epoch"] == 2 and last["n_averaged"] == 2 and last["world_size"] == 2
    assert len(last["rng"]) == 2  # both processes' random states, for an exact resume
    assert last["sampler"] == {"seed": 3, "epoch": 2, "batches_done": 0, "world_size": 2}
    records = [json.loads(line) for line in open(folder / "ema_log.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert len(r["terms"]) == 7 and r["skipped"] == 0 and 0 < r["loss"] < 10

    # the test script evaluates the checkpoint to the numbers rank 0 printed at the end of training
    script = subprocess.run([sys.executable, os.path.join(ROOT, "test_market1501.py"), "--weights",
                             str(folder / "ema.pth"), "--net", "small", "--img-height", "32", "--img-width", "16",
                             "--dataset-root", training_root, "--device", "cpu", "--num-workers", "0"],
                            cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert script.returncode == 0, script.stderr
    assert "queries without a correct gallery item (left out of CMC and mAP): 0 of 16" in script.stdout
    result = script.stdout.strip().splitlines()[-1]
    metrics = dict((k, float(v)) for k, v in re.findall(r"(\w+):([\d.]+)", result))
    assert set(metrics) == {"top1", "top5", "top10", "mAP"}
    assert 0 < metrics["mAP"] <= 1 and metrics["top1"] <= metrics["top5"] <= metrics["top10"] <= 1
    line = re.search(r"top1:(\S+) top5:(\S+) top10:(\S+) mAP:(\S+)", out)
    assert float(line.group(4)) == pytest.approx(metrics["mAP"], abs=1e-6)
    assert float(line.group(1)) == pytest.approx(metrics["top1"], abs=1e-6)


@pytest.mark.slow
def test_only_rank_0_prints(ddp_run):
    _, out, err = ddp_run
    for start in ("args: ", "train: 8 identities, 128 images", "model: DBN LEViT-small", "saved the average",
                  "mINP:", "top1:"):
        assert sum(line.startswith(start) for line in out.splitlines()) == 1, start
    assert bars_started(err, "epoch 1/2") == 1 and bars_started(err, "epoch 2/2") == 1
    assert bars_started(err, "query") == 1  # the final evaluation runs on rank 0 only
    assert "Traceback" not in err and "FutureWarning" not in err


@pytest.mark.slow
def test_ctrl_c_under_torchrun_checkpoints_and_resumes_exactly(ddp_run, training_root, tmp_path):
    folder, _, _ = ddp_run
    proc = torchrun(tiny(training_root, tmp_path / "ema.pth", "--no-eval"))
    last = tmp_path / "ema_last.pth"
    assert wait_for(last, proc), "the run ended before its first checkpoint"
    proc.send_signal(signal.SIGINT)  # torchrun passes it on to both processes
    code, _, err = finish(proc)
    assert code != 0 and not (tmp_path / "ema.pth").exists()
    assert "interrupted in epoch 2 after batch" in err and f"--resume {last}" in err
    assert err.count("train.py: interrupted in epoch") == 1  # rank 0 speaks for both processes
    checkpoint = load(last)
    assert checkpoint["epoch"] == 1 and 1 <= checkpoint["step"] < STEPS and len(checkpoint["rng"]) == 2

    code, out, err = finish(torchrun(["--resume", str(last), "--no-eval", "--dataset-root", training_root,
                                      "--save-path", str(tmp_path / "ema.pth")]))
    assert code == 0, err
    assert sum(line.startswith("resume: ") for line in out.splitlines()) == 1
    assert f"resume: {last}, 1 epochs done, epoch 2 from batch {checkpoint['step'] + 1}" in out
    assert_same_state(load(folder / "ema.pth"), load(tmp_path / "ema.pth"))
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "ema_log.jsonl")] == [1, 2]


@pytest.mark.slow
def test_two_machines_with_c10d_rendezvous_match_one_machine(ddp_run, training_root, tmp_path):
    """Two torchrun agents ("machines", one process each) meeting at a c10d rendezvous on this host."""
    folder, _, _ = ddp_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-id", "test-run", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    argv = [os.path.join(ROOT, "train.py"), *tiny(training_root, tmp_path / "ema.pth", "--no-eval")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    nodes = [subprocess.Popen([*launcher, *argv], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True) for _ in range(2)]
    results = [finish(node) for node in nodes]
    for code, _, err in results:
        assert code == 0, err
    outs = [out for _, out, _ in results]
    assert sum(out.count("saved the average of 2 epochs' weights (1..2)") for out in outs) == 1  # global rank 0
    assert_same_state(load(folder / "ema.pth"), load(tmp_path / "ema.pth"))  # the same run as 2 local processes


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_resume_auto_ends_bit_identical(ddp_run, training_root, tmp_path):
    """torchrun --max-restarts 2 ... --resume auto: SIGKILL of rank 1 mid-epoch 2; torchrun restarts both
    processes, which replay from the first epoch's checkpoint to the uninterrupted run's weights."""
    folder, _, _ = ddp_run
    # a second restart in reserve: gloo's first connection of a restarted group may be refused on a loaded
    # machine, which costs torchrun one restart (the replay from the checkpoint is the same either way)
    proc = start([*TORCHRUN[:3], "--max-restarts", "2", *TORCHRUN[3:], os.path.join(ROOT, "train.py"),
                  *tiny(training_root, tmp_path / "ema.pth", "--no-eval", "--resume", "auto")], start_new_session=True)
    try:
        assert wait_for(tmp_path / "ema_last.pth", proc), "the run ended before its first checkpoint"
        time.sleep(0.3)  # into epoch 2
        pids = workers(proc)
        os.kill(pids[1], signal.SIGKILL)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, err
    assert "resume: " in out and "1 epochs done" in out  # the restarted rank 0 continued the run
    assert out.count("saved the average of 2 epochs' weights (1..2)") == 1
    assert_same_state(load(folder / "ema.pth"), load(tmp_path / "ema.pth"))
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "ema_log.jsonl")] == [1, 2]
    assert not (tmp_path / "ema.lock").exists()


@pytest.mark.slow
def test_torchrun_trains_the_compiled_ddp_module(training_root, tmp_path):
    # --compile compiles the DistributedDataParallel module (training/compile.py); the first step's time
    # is printed once, by rank 0, and the checkpoints hold the model's own keys
    code, out, err = finish(torchrun(tiny(training_root, tmp_path / "ema.pth", "--no-eval", "--compile")))
    assert code == 0, err
    assert out.count("--compile default: the first step, compile included, took") == 1
    assert "saved the average of 2 epochs' weights (1..2)" in out
    for state in (load(tmp_path / "ema.pth")["state_dict"], load(tmp_path / "ema_last.pth")["model"]):
        assert not [k for k in state if k.startswith(("_orig_mod.", "module."))]


@pytest.mark.slow
def test_demo_data_is_generated_once_and_every_rank_waits_for_it(tmp_path):
    code, out, err = finish(torchrun(["--demo", "--dry-run", "--dataset-root", str(tmp_path)]))
    assert code == 0, err
    assert out.count("demo: generating a synthetic Market-1501") == 1
    assert out.count("train: 48 identities, 384 images") == 1
    # 384 images // (48 ids x K 4) = 2 passes x 48 // 8 identities per global batch = 12 batches per rank
    assert out.count("dry run: 12 batches of 32 per epoch, 34 epochs; nothing trained") == 1
    assert len(os.listdir(tmp_path / "market1501" / "bounding_box_train")) == 384


@pytest.mark.slow
def test_sync_bn_on_the_cpu_is_refused_with_the_reason(training_root, tmp_path):
    code, out, err = finish(torchrun(tiny(training_root, tmp_path / "ema.pth", "--sync-bn")))
    assert code != 0
    codes = reported_exit_codes(err)  # the usage error's status; torchrun stops the other rank if it is slower
    assert 2 in codes.values() and set(codes.values()) <= {2, -signal.SIGTERM}, codes
    assert "train.py: error: --sync-bn synchronises BatchNorm statistics over GPUs (NCCL)" in err
    assert "Drop --sync-bn" in err and not re.search(r"\[rank\d\]: Traceback", err)
    assert "args: " not in out and not (tmp_path / "ema_last.pth").exists()


# --- sharding and reduction -------------------------------------------------------------------------

def test_a_batch_too_small_for_the_processes_is_a_usage_error(training_root):
    import train
    from datasets import build_dataset
    from utils.distributed import DistInfo
    args = train.parse_args(tiny(training_root, "unused.pth", "--batch-size", "8"))  # 2 ids x 4: valid in one process
    dataset = build_dataset("market1501", training_root)
    assert len(train.build_sampler(dataset, args, DistInfo())) == 16
    with pytest.raises(train.UsageError, match=r"--batch-size 8 --instance-num 4 on 2 process\(es\): a batch "
                                               r"needs at least 2 identities per process.*batch_size >= 16"):
        train.build_sampler(dataset, args, DistInfo(True, 0, 2, 0, "gloo"))
    args = train.parse_args(tiny(training_root, "unused.pth", "--batch-size", "12"))  # 3 ids x 4: not 2 x whole ids
    with pytest.raises(train.UsageError, match=r"--batch-size 12 --instance-num 4 on 2 process\(es\): batch_size 12 "
                                               r"must be a multiple of num_instances \(K\) x world_size = 4 x 2 = 8"):
        train.build_sampler(dataset, args, DistInfo(True, 0, 2, 0, "gloo"))

def test_ranks_split_the_global_batch():
    whole = ddp_first_step.first_batch(0, 1)
    halves = [ddp_first_step.first_batch(r, 2) for r in (0, 1)]
    assert halves[0] + halves[1] == whole and len(whole) == ddp_first_step.BATCH
    labels = [set(ddp_first_step.LABELS[h].tolist()) for h in halves]
    assert len(labels[0]) == len(labels[1]) == 2 and not labels[0] & labels[1]


@pytest.mark.slow
def test_ddp_gradient_is_the_dataparallel_loss_gradient(tmp_path):
    """Under torchrun the triplet terms mine over the global batch, as DataParallel's loss on the
    gathered outputs: the first step's DDP gradient equals one process's gradient of the loss on the
    whole batch with BatchNorm per half (no extra factor: see utils.distributed.all_gather_batch)."""
    code, _, err = finish(torchrun([str(tmp_path)], script=os.path.join("tests", "ddp_first_step.py")))
    assert code == 0, err
    ranks = [load(tmp_path / f"grad_rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world_size"] == 2

    single = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "ddp_first_step.py"), str(tmp_path),
                             "--reference"], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr
    reference = load(tmp_path / "reference.pt")
    expected, halves = reference["dataparallel"], reference["halves"]
    assert expected.keys() == ranks[0]["grads"].keys() == ranks[1]["grads"].keys() == halves[0].keys()
    with torch.device("meta"):
        assert len(expected) == sum(p.requires_grad for p in ddp_first_step.build_model().parameters())
    local = 0.0
    for name, g in expected.items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name  # one all-reduce result
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=1e-9, atol=1e-12, msg=name)
        # mining within each process's share (the mean of the halves' own gradients) is another gradient
        local = max(local, float((g - (halves[0][name] + halves[1][name]) / 2).abs().max()))
    assert local > 1e-4, local
    # the cross-entropy-only classifiers agree with the per-share mean: only the triplet terms changed
    for name in ("class_list.2.weight", "class_list.4.weight"):
        torch.testing.assert_close(expected[name], (halves[0][name] + halves[1][name]) / 2, rtol=1e-9, atol=1e-12)

    # all_gather_batch with shares of 2 and 3 rows: rank order, labels alike, gradient = 2 x the loss's
    rows = [torch.arange(3.0 * (r + 2), dtype=torch.float64).reshape(-1, 3) + 100 * r for r in (0, 1)]
    weights = torch.arange(15, dtype=torch.float64).reshape(5, 3)
    for r in (0, 1):
        assert torch.equal(ranks[r]["gathered"], torch.cat(rows))
        assert torch.equal(ranks[r]["gathered_labels"], torch.tensor([0, 0, 1, 1, 1]))
        assert torch.equal(ranks[r]["rows_grad"], 2 * weights[[0, 1]] if r == 0 else 2 * weights[2:])

    # BatchNorm statistics after update_bn: the mean over the ranks, on every rank
    for r in ranks:
        assert torch.equal(r["bn_mean"], torch.full((3,), 0.5)) and torch.equal(r["bn_var"], torch.full((3,), 2.0))


# --- failure ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_rank_ends_the_run_instead_of_hanging(training_root, tmp_path):
    argv = tiny(training_root, tmp_path / "ema.pth", "--no-eval", "--dist-timeout", "20")
    argv[argv.index("--epochs") + 1] = "1,20"  # long enough to be killed in the middle
    proc = torchrun(argv)
    try:
        assert wait_for(tmp_path / "ema_last.pth", proc), "the run ended before its first checkpoint"
        pids = workers(proc)
        assert sorted(pids) == [0, 1]
        killed = time.time()
        os.kill(pids[1], signal.SIGKILL)
        code, _, err = finish(proc, timeout=90)
        elapsed = time.time() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code != 0
    assert elapsed < 40, f"torchrun took {elapsed:.0f} s to end after a rank was killed"
    assert not alive(pids[0]), "rank 0 outlived torchrun"
    codes = reported_exit_codes(err)  # torchrun's report: rank 1 killed; rank 0 failed, then was stopped
    assert codes[1] == -signal.SIGKILL and codes[0] in (1, -signal.SIGTERM), codes
    # rank 0 saw the lost peer in its next collective (with SIGTERM from torchrun close behind)
    assert re.search(r"\[rank0\]: RuntimeError: .*gloo.*Connection (reset|closed) by peer", err)
    assert not (tmp_path / "ema.pth").exists()


@pytest.mark.slow
def test_a_stalled_rank_makes_the_others_fail_after_dist_timeout(training_root, tmp_path):
    argv = tiny(training_root, tmp_path / "ema.pth", "--no-eval", "--dist-timeout", "5")
    argv[argv.index("--epochs") + 1] = "1,20"
    proc = torchrun(argv)
    pids = {}
    try:
        assert wait_for(tmp_path / "ema_last.pth", proc), "the run ended before its first checkpoint"
        pids = workers(proc)
        stalled = time.time()
        os.kill(pids[1], signal.SIGSTOP)  # alive but silent: torchrun sees nothing wrong, only the timeout can
        while alive(pids[0]) and time.time() - stalled < 60:
            time.sleep(0.05)
        elapsed = time.time() - stalled
        os.kill(pids[1], signal.SIGCONT)  # let it receive torchrun's SIGTERM
        code, _, err = finish(proc, timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert 5 <= elapsed < 20, f"rank 0 failed {elapsed:.1f} s after rank 1 stalled (--dist-timeout 5)"
    assert code != 0
    assert "Timed out waiting 5000ms" in err
    assert reported_exit_codes(err)[0] == 1


def reported_exit_codes(err):
    """{rank: exit code} from torchrun's failure report."""
    return {int(rank): int(code) for rank, code in
            re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*: (-?\d+)", err)}
