"""train.py on generated data: flag checks, a short real run, exact resume after SIGKILL and
Ctrl-C, a non-finite loss, unreadable images. (The README's commands: tests/test_readme.py.)"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from conftest import ROOT

# LEViT-S from scratch at 32x16 on 8 ids x 8 images: 2 passes x 4 batches of 2 ids x 4 images per epoch
TINY = ["--dataset", "market1501", "--net", "small", "--pretrained", "none", "--img-height", "32",
        "--img-width", "16", "--batch-size", "8", "--instance-num", "4", "--lr", "0.05", "--epochs", "1,3",
        "--ema-ratio", "0.67", "--ema-extra", "1", "--erasing", "0.3", "--device", "cpu", "--num-workers", "0",
        "--seed", "3"]
EPOCHS = 4  # T + ema_extra
BATCHES = 8


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from datasets.synthetic import generate
    root = str(tmp_path_factory.mktemp("data"))
    generate("market1501", root, ids=8, images_per_id=8, cameras=2, seed=0)
    return root


def tiny(root, save_path, *extra):
    return [*TINY, "--dataset-root", root, "--save-path", str(save_path), *extra]


def run_script(argv, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def parse_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        train.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--epochs", "5"], "expected two integers W,T"),
    (["--epochs", "75,5"], "expected 0 <= W < T"),
    (["--batch-size", "30", "--instance-num", "4"], "--batch-size 30 is not divisible by --instance-num 4"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--net", "huge"], "invalid choice: 'huge'"),
    (["--ema-ratio", "1.5"], "--ema-ratio must be in (0, 1]"),
    (["--erasing", "0.01"], "--erasing is the largest erased area fraction"),
    (["--gpus", "a,b"], "expected comma-separated GPU ids"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--img-height", "8"], "must be at least 16"),
    (["--epochs", "0,1", "--ema-ratio", "1"], "every averaged epoch would train at lr 0"),
    (["--epochs", "5,75", "--ema-ratio", "1"], "use a ratio below 1"),
    (["--pretrained", "no/such/file.pth"], "--pretrained no/such/file.pth: file not found"),
    (["--resume", "no/such/run_last.pth"], "--resume no/such/run_last.pth: file not found"),
])
def test_invalid_flags_are_rejected_with_the_rule(capsys, argv, message):
    assert message in parse_error(capsys, argv)


@pytest.mark.parametrize("content", [b"KKK", b"hello world\n"], ids=["index-error", "key-error"])
def test_unreadable_resume_file_is_a_usage_error(capsys, tmp_path, content):
    path = tmp_path / "run_last.pth"
    path.write_bytes(content)
    err = parse_error(capsys, ["--resume", str(path)])
    assert f"cannot read {path} as a torch checkpoint" in err and "Traceback" not in err


def test_freeze_word_must_match_a_parameter(capsys):
    err = parse_error(capsys, ["--freeze", "stem,nosuchlayer"])
    assert "--freeze 'nosuchlayer' matches no parameter name" in err


def test_help_groups_flags_and_states_defaults():
    text = train.get_args_parser().format_help()
    for group in ("model:", "data:", "optimisation:", "hardware:", "run:"):
        assert group in text
    assert "(default: 5,75)" in text and "(5, 75)" not in text  # as it is typed
    assert "{market1501,dukemtmc,msmt17" in text


def test_num_workers_default_is_at_most_the_available_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert train.parse_args([]).num_workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert train.parse_args([]).num_workers == 4


def test_seed_is_stored_and_defaults_match_the_release():
    args = train.parse_args([])
    assert (args.net, args.img_height, args.img_width, args.batch_size, args.lr) == ("small", 256, 128, 64, 0.12)
    assert (args.epochs, args.ema_ratio, args.ema_extra, args.instance_num) == ((5, 75), 0.8, 25, 4)


def test_missing_dataset_names_the_path(tmp_path):
    proc = run_script(tiny(str(tmp_path), tmp_path / "ema.pth", "--dry-run"))
    code, _, err = finish(proc)
    assert code == 2
    assert os.path.join(str(tmp_path), "market1501") in err
    assert "bounding_box_train" in err and "Traceback" not in err


def test_gpus_without_cuda_warn_once_and_use_the_cpu(capsys, data_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the machine has CUDA")
    args = train.parse_args(tiny(data_root, tmp_path / "ema.pth", "--dry-run", "--gpus", "0,1", "--device", "auto"))
    train.main(args)
    captured = capsys.readouterr()
    assert captured.err.count("CUDA is not available") == 1
    assert "train: 8 identities, 64 images" in captured.out
    assert f"dry run: {BATCHES} batches of 8 per epoch, {EPOCHS} epochs" in captured.out
    assert not os.path.exists(tmp_path / "ema.pth")



def test_cpu_runs_keep_freed_memory(capsys, data_root, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append("cpu") or True)
    train.main(train.parse_args(tiny(data_root, tmp_path / "ema.pth", "--dry-run")))
    assert calls == ["cpu"]

# --- a real run ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory):
    """An uninterrupted run: (folder, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("reference")
    code, out, err = finish(run_script(tiny(data_root, folder / "ema.pth", "--no-eval")))
    assert code == 0, err
    return folder, out, err


def test_run_writes_the_averaged_model_checkpoint_and_log(reference_run):
    folder, out, _ = reference_run
    from network import DBN
    state = load(folder / "ema.pth")
    model = DBN(num_classes=8, net="small", pretrained=None)
    model.load_state_dict(state)  # strict: the release's DBN keys
    assert "saved the average of 3 epochs' weights (2..4)" in out
    last = load(folder / "ema_last.pth")
    assert last["epoch"] == EPOCHS and last["n_averaged"] == 3 and last["args"]["seed"] == 3
    records = [json.loads(line) for line in open(folder / "ema_log.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert set(r) >= {"epoch", "loss", "terms", "lr", "img_per_s", "seconds", "skipped"}
        assert len(r["terms"]) == 7 and r["skipped"] == 0
    # W=1: epoch 1 at lr * (0.01 + 0.99 * 1/1); held from epoch S = floor(3 * 0.67) = 2 at the cosine's
    # value there, lr * 0.5 * (1 + cos(pi * (2 - 1) / (3 - 1))) = lr / 2
    assert [r["lr"] for r in records] == pytest.approx([0.05, 0.025, 0.025, 0.025])


def test_same_seed_same_weights(reference_run, data_root, tmp_path):
    folder, _, _ = reference_run
    code, _, err = finish(run_script(tiny(data_root, tmp_path / "ema.pth", "--no-eval")))
    assert code == 0, err
    assert_same_state(load(folder / "ema.pth"), load(tmp_path / "ema.pth"))


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(reference_run, data_root, tmp_path):
    folder, _, _ = reference_run
    argv = tiny(data_root, tmp_path / "ema.pth", "--no-eval")
    proc = run_script(argv)
    last = tmp_path / "ema_last.pth"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.4)  # into the second epoch or later, somewhere mid-step
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load(last)["epoch"]
    assert 1 <= killed_at < EPOCHS and not (tmp_path / "ema.pth").exists()

    code, out, err = finish(run_script(["--resume", str(last), "--no-eval", "--num-workers", "0"]))
    assert code == 0, err
    assert f"{killed_at} epochs done" in out
    assert_same_state(load(folder / "ema.pth"), load(tmp_path / "ema.pth"))
    epochs = [json.loads(line)["epoch"] for line in open(tmp_path / "ema_log.jsonl")]
    assert epochs == [1, 2, 3, 4]


@pytest.mark.slow
def test_ctrl_c_checkpoints_mid_epoch_and_resumes_exactly(reference_run, data_root, tmp_path):
    folder, _, _ = reference_run
    proc = run_script(tiny(data_root, tmp_path / "ema.pth", "--no-eval"))
    last = tmp_path / "ema_last.pth"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 128 + signal.SIGINT, err
    assert "interrupted in epoch" in err and f"--resume {last}" in err
    code, _, err = finish(run_script(["--resume", str(last), "--no-eval"]))
    assert code == 0, err
    assert_same_state(load(folder / "ema.pth"), load(tmp_path / "ema.pth"))


def test_resume_refuses_a_changed_recipe(reference_run, capsys):
    folder, _, _ = reference_run
    args = train.parse_args(["--resume", str(folder / "ema_last.pth"), "--lr", "0.3", "--no-eval"])
    with pytest.raises(train.UsageError, match=r"--lr 0.3 \(checkpoint: 0.05\)"):
        train.main(args)


# --- failures during training -----------------------------------------------------------------

class NaNAfter(train.ReIDLoss):
    """The real loss, but NaN from the `after`-th call on."""
    calls = 0
    after = 10

    def forward(self, logits, embeddings, labels):
        loss, terms = super().forward(logits, embeddings, labels)
        NaNAfter.calls += 1
        return (loss * float("nan"), terms) if NaNAfter.calls >= NaNAfter.after else (loss, terms)


def test_non_finite_loss_stops_with_epoch_and_step(monkeypatch, data_root, tmp_path):
    monkeypatch.setattr(train, "ReIDLoss", NaNAfter)
    NaNAfter.calls = 0
    args = train.parse_args(tiny(data_root, tmp_path / "ema.pth", "--no-eval"))
    with pytest.raises(train.TrainingError, match=r"non-finite loss \(nan\) at epoch 2, step 2 of 8"):
        train.main(args)
    last = load(tmp_path / "ema_last.pth")
    assert last["epoch"] == 1 and last["step"] == 0  # the last good checkpoint, valid for --resume
    assert not (tmp_path / "ema.pth").exists()


def test_unreadable_images_are_skipped_then_stop_the_run(data_root, tmp_path, recwarn):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    train_dir = root / "market1501" / "bounding_box_train"
    first_id = sorted(os.listdir(train_dir))[0][:4]
    names = sorted(n for n in os.listdir(train_dir) if n.startswith(first_id))
    for name in names:  # every image of one identity: drawn in every pass
        (train_dir / name).write_bytes(b"not a jpeg")
    args = train.parse_args(tiny(str(root), tmp_path / "ema.pth", "--no-eval", "--epochs", "1,2",
                                 "--ema-ratio", "0.5", "--ema-extra", "0"))
    with pytest.raises(train.TrainingError, match=r"images could not be read \(more than 1% of the epoch's 64\)"):
        train.main(args)
    warned = " ".join(str(w.message) for w in recwarn)
    assert "skipping unreadable image" in warned and any(name in warned for name in names)


def test_a_few_unreadable_images_are_skipped_counted_and_training_goes_on(data_root, tmp_path, monkeypatch,
                                                                          capsys, recwarn):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    train_dir = root / "market1501" / "bounding_box_train"
    bad = sorted(os.listdir(train_dir))[5]
    (train_dir / bad).write_bytes(b"\xff\xd8\xff truncated")
    monkeypatch.setattr(train, "MAX_SKIPPED", 0.5)  # this tiny epoch has 64 images: 1% would be 0.64
    args = train.parse_args(tiny(str(root), tmp_path / "ema.pth", "--no-eval", "--epochs", "1,2",
                                 "--ema-ratio", "0.5", "--ema-extra", "0"))
    train.main(args)
    records = [json.loads(line) for line in open(tmp_path / "ema_log.jsonl")]
    skipped = [r["skipped"] for r in records]
    assert sum(skipped) >= 1 and (tmp_path / "ema.pth").exists()
    err = capsys.readouterr().err
    for record in records:
        if record["skipped"]:
            assert f"epoch {record['epoch']}: {record['skipped']} unreadable images skipped" in err
    assert any(bad in str(w.message) for w in recwarn)


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_amp_run_trains_and_saves(amp_dtype, capsys, data_root, tmp_path):
    """--amp end to end on the CPU: bfloat16 autocast (the CPU default) and float16 with a
    GradScaler (the CUDA default, so the GPU path's scaler code runs here too)."""
    save = tmp_path / "ema.pth"
    train.main(train.parse_args(tiny(data_root, save, "--amp", "--amp-dtype", amp_dtype, "--no-eval")))
    assert "saved the average of 3 epochs' weights (2..4)" in capsys.readouterr().out
    state = load(save)
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    records = [json.loads(line) for line in open(tmp_path / "ema_log.jsonl")]
    assert len(records) == EPOCHS and all(math.isfinite(r["loss"]) for r in records)
    scaler = load(tmp_path / "ema_last.pth")["scaler"]
    if amp_dtype == "float16":
        assert scaler["scale"] > 0  # loss scaling ran
    else:
        assert not scaler  # bfloat16 needs none


def test_amp_dtype_defaults_follow_the_device():
    args = train.parse_args([])
    assert train.amp_settings(args, torch.device("cuda")) == (True, torch.float16)
    assert train.amp_settings(args, torch.device("cpu")) == (False, torch.bfloat16)
    args = train.parse_args(["--amp", "--amp-dtype", "float16"])
    assert train.amp_settings(args, torch.device("cpu")) == (True, torch.float16)
