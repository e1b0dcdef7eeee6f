"""train.py on generated data: flag checks, a short real run, exact resume after SIGKILL and
Ctrl-C, a non-finite loss, unreadable images. (The README's commands: tests/test_readme.py.)"""
import functools
import json
import math
import os
import signal
import sys
import time

import pytest
import torch

import train
import training.flags
from training.run_state import TrainingError, UnreadableImages
from tests import helpers
from tests.helpers import ROOT, assert_same_state, load, start, tiny_run
from utils import files, malloc
from training import bn_pass

# LEViT-S from scratch at 32x16 on 8 ids x 8 images: 2 passes x 4 batches of 2 ids x 4 images per epoch
IMAGES_PER_ID = 8  # of the training_root fixture (tests/conftest.py)
EPOCHS = 4  # T + ema_extra
BATCHES = 8
tiny = functools.partial(tiny_run, batch_size=8, epochs="1,3", ema_ratio=0.67, ema_extra=1)


def run_script(argv, **kwargs):
    return start([sys.executable, os.path.join(ROOT, "train.py"), *argv], **kwargs)


def finish(proc, timeout=300):
    return helpers.finish(proc, timeout)


def parse_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        train.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


# --- flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--epochs", "5"], "expected two integers W,T"),
    (["--epochs", "75,5"], "expected 0 <= W < T"),
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
    (["--drop-path", "1"], "--drop-path must be in [0, 1) (0 = off), got 1.0"),
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


def test_batch_of_partial_identities_is_a_usage_error_before_training(training_root, tmp_path):
    # the sampler's rule (datasets/sampler.py), checked once the number of processes is known
    with pytest.raises(train.UsageError, match=r"--batch-size 30 --instance-num 4 on 1 process\(es\): batch_size 30 "
                                               r"must be a multiple of num_instances \(K\) x world_size = 4 x 1 = 4"):
        train.main(train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--batch-size", "30", "--no-eval")))
    assert not (tmp_path / "ema_last.pth").exists()


def test_freeze_word_must_match_a_parameter(capsys):
    err = parse_error(capsys, ["--freeze", "stem,nosuchlayer"])
    assert "--freeze 'nosuchlayer' matches no parameter name" in err


def test_help_groups_flags_and_states_defaults():
    parser = train.get_args_parser()
    groups = {group.title: {action.dest for action in group._group_actions} for group in parser._action_groups}
    assert {"net", "pretrained", "erasing", "freeze"} <= groups["model"]
    assert {"dataset", "dataset_root", "instance_num", "num_workers"} <= groups["data"]
    assert {"batch_size", "lr", "epochs", "ema_ratio", "seed"} <= groups["optimisation"]
    assert {"device", "gpus", "dist_timeout"} == groups["hardware"]
    assert {"save_path", "resume", "eval", "dry_run", "demo"} <= groups["run"]
    text = parser.format_help()
    for group in ("model:", "data:", "optimisation:", "hardware:", "run:"):
        assert f"\n{group}\n" in text
    assert "(default: 5,75)" in text and "(5, 75)" not in text  # as it is typed
    assert "{market1501,dukemtmc,msmt17" in text


@pytest.mark.parametrize("argv, values", [
    ([], (True, None, True)),
    (["--norm", "false", "--amp", "--eval", "false"], (False, True, False)),  # the release's --norm false
    (["--no-norm", "--no-amp", "--no-eval"], (False, False, False)),
    (["--norm", "--amp", "true", "--eval"], (True, True, True)),
])
def test_on_off_flags_take_no_and_true_false(argv, values):
    args = train.parse_args(argv)
    assert (args.norm, args.amp, args.eval) == values


def test_a_no_flag_takes_no_value(capsys):
    assert "--no-eval takes no value (or give --eval true|false)" in parse_error(capsys, ["--no-eval", "true"])


def test_num_workers_default_is_at_most_the_available_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU run keeps its loader processes
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert train.parse_args([]).num_workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert train.parse_args([]).num_workers == 4
    assert train.parse_args(["--num-workers", "3"]).num_workers == 3


def test_num_workers_default_is_0_on_the_cpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert train.parse_args(["--device", "cpu"]).num_workers == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.parse_args([]).num_workers == 0
    assert train.parse_args(["--device", "cpu", "--num-workers", "2"]).num_workers == 2


def test_defaults_match_the_release():
    args = train.parse_args([])
    assert (args.seed, args.erasing, args.norm, args.pretrained) == (613, 0.45, True, "auto")
    assert (args.net, args.img_height, args.img_width, args.batch_size, args.lr) == ("small", 256, 128, 64, 0.12)
    assert (args.epochs, args.ema_ratio, args.ema_extra, args.instance_num) == ((5, 75), 0.8, 25, 4)


def test_drop_path_defaults_per_variant_and_reaches_the_model():
    assert train.parse_args([]).drop_path == 0.05
    assert train.parse_args(["--net", "large"]).drop_path == 0.10  # the backbone file's value (see docs/recipe.md)
    args = train.parse_args(["--net", "large", "--drop-path", "0.15"])
    assert args.drop_path == 0.15
    args.pretrained = "none"
    with torch.device("meta"):
        model = train.build_model(args, num_classes=4)
    assert model.drop_path == 0.15 and model.branch_1.layers[-1].drop_path.p == pytest.approx(0.15)


def test_missing_dataset_names_the_path(tmp_path):
    proc = run_script(tiny(str(tmp_path), tmp_path / "ema.pth", "--dry-run"))
    code, _, err = finish(proc)
    assert code == 2
    assert os.path.join(str(tmp_path), "market1501") in err
    assert "bounding_box_train" in err and "Traceback" not in err


# --- --pretrained auto ------------------------------------------------------------------------------

def test_pretrained_auto_without_the_backbone_stops_before_any_work(tmp_path, monkeypatch):
    absent = tmp_path / "network" / "released_small.pth"
    monkeypatch.setattr(train, "released_path", lambda net: str(absent))
    monkeypatch.setattr(training.flags, "released_path", lambda net: str(absent))
    # no dataset there either: the backbone is checked first, nothing is read or written
    args = train.parse_args(tiny(str(tmp_path / "no_data"), tmp_path / "out" / "ema.pth", "--pretrained", "auto"))
    with pytest.raises(train.UsageError) as info:
        train.main(args)
    message = str(info.value)
    assert message.startswith("--pretrained auto: the released ImageNet backbone of LEViT-small, "
                              "stem16_dim96_ratio1_layers474_heads124_ss777_dp005_vit110.pth, is not in "
                              f"{tmp_path / 'network'} (network/ of this repository)")
    assert "or --pretrained none to train from scratch on purpose" in message
    assert not (tmp_path / "out").exists()


def test_pretrained_auto_without_the_backbone_exits_2_naming_the_file(tmp_path):
    from network import RELEASED_FILES, released_path
    if os.path.isfile(released_path("small")):
        pytest.skip("the released LEViT-S backbone is in network/")
    code, out, err = finish(run_script(tiny(str(tmp_path), tmp_path / "ema.pth", "--pretrained", "auto")))
    assert code == 2
    assert f"train.py: error: --pretrained auto: the released ImageNet backbone of LEViT-small, " \
           f"{RELEASED_FILES['small']}, is not in {os.path.dirname(released_path('small'))}" in err
    assert "--pretrained none to train from scratch on purpose" in err and "Traceback" not in err
    assert "args: " not in out


def test_dry_run_reports_the_missing_backbone_and_succeeds(capsys, training_root, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "released_path", lambda net: str(tmp_path / f"{net}.pth"))
    monkeypatch.setattr(training.flags, "released_path", lambda net: str(tmp_path / f"{net}.pth"))
    assert train.main(train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--pretrained", "auto",
                                            "--net", "large", "--dry-run"))) is None
    out = capsys.readouterr().out.splitlines()
    line = [x for x in out if "--pretrained auto" in x]
    assert len(line) == 1 and line[0].startswith("dry run: a real run stops here (exit status 2): --pretrained "
                                                 "auto: the released ImageNet backbone of LEViT-large, stem16_dim192")
    assert f"dry run: {BATCHES} batches of 8 per epoch" in out[-1]


def test_pretrained_auto_loads_the_backbone_and_demo_needs_none(tmp_path, monkeypatch):
    from network import LEViT, VARIANTS
    torch.manual_seed(1)
    backbone = LEViT(**VARIANTS["small"]).state_dict()
    torch.save(backbone, tmp_path / "small.pth")
    monkeypatch.setattr(train, "released_path", lambda net: str(tmp_path / f"{net}.pth"))
    monkeypatch.setattr(training.flags, "released_path", lambda net: str(tmp_path / f"{net}.pth"))
    args = train.parse_args(["--pretrained", "auto"])
    assert train.missing_pretrained(args) is None
    model = train.build_model(args, num_classes=4)
    assert torch.equal(model.layer2.layers[0].q[0].weight, backbone["stage2.layers.0.q.0.weight"])
    demo = train.parse_args(["--demo"])  # the demo trains from scratch on purpose, as before
    assert demo.pretrained == "none" and train.missing_pretrained(demo) is None
    monkeypatch.setattr(train, "released_path", lambda net: str(tmp_path / "absent.pth"))
    monkeypatch.setattr(training.flags, "released_path", lambda net: str(tmp_path / "absent.pth"))
    assert train.missing_pretrained(train.parse_args(["--net", "small"])) is not None


def test_gpus_without_cuda_warn_once_and_use_the_cpu(capsys, training_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the machine has CUDA")
    args = train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--dry-run", "--gpus", "0,1", "--device", "auto"))
    train.main(args)
    captured = capsys.readouterr()
    assert captured.err.count("CUDA is not available") == 1
    assert "train: 8 identities, 64 images" in captured.out
    assert f"dry run: {BATCHES} batches of 8 per epoch, {EPOCHS} epochs" in captured.out
    assert not os.path.exists(tmp_path / "ema.pth")



def test_dry_run_names_the_partial_last_batch(capsys, training_root, tmp_path):
    # 8 ids x 8 images, K 4: 2 passes, 64 items; batches of 12: 5 full and the release's partial one of 4
    train.main(train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--dry-run", "--batch-size", "12")))
    assert f"dry run: 6 batches of 12 per epoch (the last of 4), {EPOCHS} epochs; nothing trained" in \
        capsys.readouterr().out


def test_a_partial_last_batch_trains(capsys, training_root, tmp_path):
    train.main(train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--no-eval", "--batch-size", "12",
                                     "--epochs", "1,2", "--ema-ratio", "0.5", "--ema-extra", "0")))
    records = [json.loads(line) for line in open(tmp_path / "ema_log.jsonl")]
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    last = load(tmp_path / "ema_last.pth")
    assert last["epoch"] == 2 and last["meter"]["steps"] == 0  # both epochs ran to their end
    assert "saved the average of 2 epochs' weights" in capsys.readouterr().out


def test_cpu_runs_keep_freed_memory(capsys, training_root, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append("cpu") or True)
    train.main(train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--dry-run")))
    assert calls == ["cpu"]

# --- a real run ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(training_root, tmp_path_factory):
    """An uninterrupted run: (folder, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("reference")
    code, out, err = finish(run_script(tiny(training_root, folder / "ema.pth", "--no-eval")))
    assert code == 0, err
    return folder, out, err


def test_run_writes_the_averaged_model_checkpoint_and_log(reference_run):
    folder, out, _ = reference_run
    from network import DBN
    saved = load(folder / "ema.pth")
    model = DBN(num_classes=8, net="small", pretrained=None)
    model.load_state_dict(saved["state_dict"])  # strict: the release's DBN keys
    assert {k: saved[k] for k in ("format_version", "variant", "mlp_ratio", "num_classes", "num_parts", "img_height",
                                  "img_width", "dataset", "transform", "metrics")} == {
        "format_version": 1, "variant": "small", "mlp_ratio": 1.0, "num_classes": 8, "num_parts": [1, 2],
        "img_height": 32, "img_width": 16, "dataset": "market1501", "transform": "reid", "metrics": None}
    assert saved["args"]["seed"] == 3 and saved["args"]["save_path"] == str(folder / "ema.pth")
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


def test_same_seed_same_weights(reference_run, training_root, tmp_path):
    folder, _, _ = reference_run
    code, _, err = finish(run_script(tiny(training_root, tmp_path / "ema.pth", "--no-eval")))
    assert code == 0, err
    assert_same_state(load(folder / "ema.pth"), load(tmp_path / "ema.pth"))


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(reference_run, training_root, tmp_path):
    folder, _, _ = reference_run
    argv = tiny(training_root, tmp_path / "ema.pth", "--no-eval")
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
def test_ctrl_c_checkpoints_mid_epoch_and_resumes_exactly(reference_run, training_root, tmp_path):
    folder, _, _ = reference_run
    proc = run_script(tiny(training_root, tmp_path / "ema.pth", "--no-eval"))
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
    args = train.parse_args(["--resume", str(folder / "ema_last.pth"), "--erasing", "0.2", "--no-eval"])
    with pytest.raises(train.UsageError, match=r"these differ: --erasing 0.2 \(checkpoint: 0.3\)"):
        train.main(args)


# --- BatchNorm pass after averaging -------------------------------------------------------------

class FakeDataParallel(torch.nn.Module):
    """What DataParallel does to BatchNorm buffers on GPUs (not reproducible on the CPU, where
    torch's DataParallel just calls the module): the batch is split over `device_ids`, the replica on
    the first device shares the module's buffers, the other replicas update copies that are dropped."""
    calls = []

    def __init__(self, module, device_ids):
        super().__init__()
        self.module, self.device_ids = module, list(device_ids)

    def forward(self, x):
        import copy
        FakeDataParallel.calls.append((len(x), self.device_ids))
        chunks = x.chunk(len(self.device_ids))
        outputs = [self.module(chunks[0])] + [copy.deepcopy(self.module)(c) for c in chunks[1:]]
        return outputs[0]


def bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2))


def test_bn_pass_with_several_gpus_runs_through_dataparallel(monkeypatch):
    import contextlib
    from torch.optim.swa_utils import update_bn
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(8, 3, 4, 2, generator=g) * (i + 1), torch.zeros(8), torch.zeros(8), 0) for i in range(3)]
    batches.insert(1, (torch.zeros(0, 3, 4, 2), torch.zeros(0), torch.zeros(0), 8))  # all unreadable: skipped
    monkeypatch.setattr(train.nn, "DataParallel", FakeDataParallel)
    FakeDataParallel.calls = []
    model = bn_net()
    train.recompute_bn(model, batches, torch.device("cpu"), [0, 1], contextlib.nullcontext())
    assert FakeDataParallel.calls == [(8, [0, 1])] * 3  # update_bn ran the DataParallel-wrapped model
    first_halves = bn_net()
    update_bn([b[0][:4] for b in batches if len(b[0])], first_halves)  # GPU 0's share of every batch
    whole = bn_net()
    update_bn([b[0] for b in batches if len(b[0])], whole)
    for name, value in model.state_dict().items():
        assert torch.allclose(value.float(), first_halves.state_dict()[name].float(), rtol=1e-6, atol=1e-7), name
    assert not torch.allclose(model[1].running_var, whole[1].running_var)
    assert int(model[1].num_batches_tracked) == 3 and model.training

    # one GPU, the CPU, or torchrun (dp_ids None): the model itself sees the whole of every batch
    FakeDataParallel.calls = []
    single = bn_net()
    train.recompute_bn(single, batches, torch.device("cpu"), None, contextlib.nullcontext())
    assert FakeDataParallel.calls == []
    for name, value in single.state_dict().items():
        assert torch.equal(value, whole.state_dict()[name]), name


# --- failures during training -----------------------------------------------------------------

class NaNAfter(train.ReIDLoss):
    """The real loss, but NaN from the `after`-th call on."""
    calls = 0
    after = 10

    def forward(self, logits, embeddings, labels):
        loss, terms = super().forward(logits, embeddings, labels)
        NaNAfter.calls += 1
        return (loss * float("nan"), terms) if NaNAfter.calls >= NaNAfter.after else (loss, terms)


def test_non_finite_loss_stops_with_epoch_and_step(monkeypatch, training_root, tmp_path):
    monkeypatch.setattr(train, "ReIDLoss", NaNAfter)
    NaNAfter.calls = 0
    args = train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--no-eval"))
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 2, step 2 of 8"):
        train.main(args)
    last = load(tmp_path / "ema_last.pth")
    assert last["epoch"] == 1 and last["step"] == 0  # the last good checkpoint, valid for --resume
    assert not (tmp_path / "ema.pth").exists()


def break_one_identity(training_root, tmp_path):
    """A copy of the data with every image of one identity (drawn in every pass) unreadable:
    (dataset root, the broken file names)."""
    import shutil
    root = tmp_path / "data"
    shutil.copytree(training_root, root)
    train_dir = root / "market1501" / "bounding_box_train"
    first_id = sorted(os.listdir(train_dir))[0][:4]
    names = sorted(n for n in os.listdir(train_dir) if n.startswith(first_id))
    for name in names:
        (train_dir / name).write_bytes(b"not a jpeg")
    return root, names


def test_unreadable_images_are_all_listed_before_epoch_1(training_root, tmp_path, capsys):
    root, names = break_one_identity(training_root, tmp_path)
    args = train.parse_args(tiny(str(root), tmp_path / "ema.pth", "--no-eval", "--epochs", "1,2",
                                 "--ema-ratio", "0.5", "--ema-extra", "0"))
    with pytest.raises(TrainingError, match=r"^8 of the 64 training images cannot be read \(more than 1%; "
                                                  r"listed above\); fix or remove them and rerun$"):
        train.main(args)
    err = capsys.readouterr().err
    assert "8 of the 64 training images cannot be read:" in err
    assert all(name in err for name in names)  # every one, not only those read before a stop
    assert not (tmp_path / "ema_last.pth").exists()


def test_a_dry_run_reads_the_image_headers_and_unreadable_data_exits_2(training_root, tmp_path):
    root, names = break_one_identity(training_root, tmp_path)
    argv = tiny(str(root), tmp_path / "ema.pth", "--no-eval", "--epochs", "1,2", "--ema-ratio", "0.5", "--ema-extra", "0")
    with pytest.raises(UnreadableImages, match=r"^8 of the 64 training images cannot be read"):
        train.main(train.parse_args([*argv, "--dry-run"]))
    code, _, err = finish(run_script(argv), 300)  # the user's data: exit status 2, as a missing dataset
    assert code == 2 and "train.py: error: 8 of the 64 training images cannot be read (more than 1%" in err
    assert all(name in err for name in names) and "Traceback" not in err
    assert not (tmp_path / "ema_last.pth").exists()


def test_unreadable_images_are_skipped_then_stop_the_run(training_root, tmp_path, recwarn, monkeypatch):
    """Images that break after the check before epoch 1 (which is left out here): skipped with a
    warning, then the run stops; in epoch 1 there is nothing to resume."""
    root, names = break_one_identity(training_root, tmp_path)
    monkeypatch.setattr(train, "check_training_images", lambda items, saved, max_skipped: None)
    args = train.parse_args(tiny(str(root), tmp_path / "ema.pth", "--no-eval", "--epochs", "1,2",
                                 "--ema-ratio", "0.5", "--ema-extra", "0"))
    with pytest.raises(TrainingError, match=r"images could not be read \(more than 1% of the epoch's 64\); "
                                                  r"the warnings above name them; fix or remove them and rerun "
                                                  r"\(no epoch had finished, nothing to resume\)"):
        train.main(args)
    warned = " ".join(str(w.message) for w in recwarn)
    assert "skipping unreadable image" in warned and any(name in warned for name in names)


def test_a_few_unreadable_images_are_skipped_counted_and_training_goes_on(training_root, tmp_path, monkeypatch,
                                                                          capsys, recwarn):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(training_root, root)
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
    # named before epoch 1 too, and the run goes on (1 of 64 is within the bound patched above)
    assert "1 of the 64 training images cannot be read:" in err and bad in err
    assert "warning: training goes on without them (at most 50% may be unreadable)" in err


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_amp_run_trains_and_saves(amp_dtype, capsys, training_root, tmp_path):
    """--amp end to end on the CPU: bfloat16 autocast (the CPU default) and float16 with a
    GradScaler (the CUDA default, so the GPU path's scaler code runs here too)."""
    save = tmp_path / "ema.pth"
    train.main(train.parse_args(tiny(training_root, save, "--amp", "--amp-dtype", amp_dtype, "--no-eval")))
    assert "saved the average of 3 epochs' weights (2..4)" in capsys.readouterr().out
    state = load(save)["state_dict"]
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


def test_saved_model_holds_the_final_metrics(capsys, training_root, tmp_path):
    save = tmp_path / "ema.pth"
    metrics = train.main(train.parse_args(tiny(training_root, save, "--epochs", "1,2", "--ema-extra", "0")))
    saved = load(save)
    assert saved["metrics"] == metrics and 0 <= saved["metrics"]["mAP"] <= 1
    assert saved["img_height"] == 32 and saved["args"]["eval"] is True


# --- the save location, earlier runs, finished runs ------------------------------------------------

def unfinished_copy(reference_run, folder, epoch):
    """The reference run's checkpoint, marked as written after `epoch` epochs, alone in `folder`."""
    checkpoint = load(reference_run[0] / "ema_last.pth")
    checkpoint["epoch"] = epoch
    path = folder / "ema_last.pth"
    torch.save(checkpoint, path)
    return path


def test_save_path_under_a_file_is_refused_before_training(training_root, tmp_path):
    (tmp_path / "README.md").write_text("notes\n")
    save = tmp_path / "README.md" / "ema.pth"
    with pytest.raises(train.UsageError, match=r"cannot write there, .*README.md is a file, not a folder"):
        train.main(train.parse_args(tiny(training_root, save, "--dry-run")))


def test_unwritable_save_folder_is_refused_before_training(training_root, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(files.tempfile, "TemporaryFile", refuse)  # the probe of utils.files.check_writable
    with pytest.raises(train.UsageError, match=r"cannot write in .* \(Permission denied\); choose a writable"):
        train.main(train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--no-eval")))
    assert not (tmp_path / "ema_last.pth").exists()
    # a dry run is refused the same way (the check creates nothing that stays)
    with pytest.raises(train.UsageError, match=r"cannot write in .* \(Permission denied\)"):
        train.main(train.parse_args(tiny(training_root, tmp_path / "new" / "ema.pth", "--dry-run")))
    assert not (tmp_path / "new").exists()


def test_new_run_over_a_finished_run_is_refused(reference_run, training_root):
    folder, _, _ = reference_run
    with pytest.raises(train.UsageError) as err:
        train.main(train.parse_args(tiny(training_root, folder / "ema.pth", "--dry-run")))
    assert f"a finished run is there ({folder / 'ema.pth'}); add --overwrite to start a new run" in str(err.value)


def test_new_run_over_an_unfinished_run_points_to_resume(reference_run, training_root, tmp_path):
    last = unfinished_copy(reference_run, tmp_path, epoch=2)
    with pytest.raises(train.UsageError) as err:
        train.main(train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--dry-run")))
    assert f"an unfinished run is there (2 epochs done in {last}); continue it with --resume {last}" in str(err.value)


def test_overwrite_replaces_the_earlier_run(reference_run, training_root, tmp_path):
    import shutil
    shutil.copytree(reference_run[0], tmp_path / "run")
    save = tmp_path / "run" / "ema.pth"
    argv = tiny(training_root, save, "--no-eval", "--overwrite", "--epochs", "1,2", "--ema-ratio", "0.5",
                "--ema-extra", "0")
    train.main(train.parse_args(argv))
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "run" / "ema_log.jsonl")] == [1, 2]
    assert load(tmp_path / "run" / "ema_last.pth")["epoch"] == 2


def test_demo_replaces_only_its_own_files():
    assert train.parse_args(["--demo"]).overwrite
    assert not train.parse_args(["--demo", "--save-path", os.path.join("params", "ema.pth")]).overwrite


def test_resuming_a_finished_run_touches_nothing(reference_run, capsys):
    folder, _, _ = reference_run
    before = {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
              for name in ("ema.pth", "ema_last.pth", "ema_log.jsonl")}
    assert train.main(train.parse_args(["--resume", str(folder / "ema_last.pth"), "--no-eval"])) is None
    out = capsys.readouterr().out
    assert (f"resume: {folder / 'ema_last.pth'} is a finished run (all 4 epochs done) and its averaged weights "
            f"are in {folder / 'ema.pth'}; nothing to do, nothing rewritten") in out
    assert "saved the average" not in out
    for name, (content, mtime) in before.items():
        assert (folder / name).read_bytes() == content and (folder / name).stat().st_mtime_ns == mtime, name


# --- the demo's untrained baseline -----------------------------------------------------------------

class Recorded(Exception):
    """Stops main() right after the demo's untrained copy was made."""


def test_demo_baseline_is_the_seeded_initial_weights_after_resume(reference_run, training_root, tmp_path, monkeypatch):
    copies = []

    def record(model):
        copies.append({k: v.clone() for k, v in model.state_dict().items()})
        raise Recorded

    monkeypatch.setattr(train, "untrained_copy", record)
    with pytest.raises(Recorded):  # a new demo-style run: the seeded initial weights
        train.main(train.parse_args(tiny(training_root, tmp_path / "new" / "ema.pth", "--demo", "--no-eval")))
    last = unfinished_copy(reference_run, tmp_path, epoch=3)
    with pytest.raises(Recorded):
        train.main(train.parse_args(["--resume", str(last), "--demo", "--no-eval"]))
    assert_same_state(copies[0], copies[1])
    trained = load(last)["model"]
    assert not torch.equal(copies[1]["class_list.0.weight"], trained["class_list.0.weight"])


# --- stopping: non-finite loss, Ctrl-C, failed evaluation ----------------------------------------

SHORT = ["--epochs", "1,2", "--ema-ratio", "0.5", "--ema-extra", "0"]  # 2 epochs at lr 0.05 (no warm-up, held)


def test_non_finite_loss_in_epoch_1_says_rerun(monkeypatch, training_root, tmp_path):
    monkeypatch.setattr(train, "ReIDLoss", NaNAfter)
    monkeypatch.setattr(NaNAfter, "after", 1)
    NaNAfter.calls = 0
    args = train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--no-eval", *SHORT))
    with pytest.raises(TrainingError, match=r"at epoch 1, step 1 of 8; training stopped. No epoch had "
                                                  r"finished, so there is nothing to resume: rerun with a lower "
                                                  r"--lr, e.g. --lr 0.025$"):
        train.main(args)


def test_non_finite_loss_then_resume_with_a_lower_lr(monkeypatch, training_root, tmp_path, capsys):
    real_loss = train.ReIDLoss
    monkeypatch.setattr(train, "ReIDLoss", NaNAfter)
    NaNAfter.calls = 0
    save = tmp_path / "ema.pth"
    last = tmp_path / "ema_last.pth"
    with pytest.raises(TrainingError) as err:
        train.main(train.parse_args(tiny(training_root, save, "--no-eval", *SHORT)))
    suggested = f"--resume {last} --lr 0.025"
    assert f"The checkpoint {last} (1 finished epochs) is kept: resume it with a lower --lr, e.g. {suggested}" \
        in str(err.value)
    monkeypatch.setattr(train, "ReIDLoss", real_loss)
    capsys.readouterr()
    train.main(train.parse_args([*suggested.split(), "--no-eval"]))
    err = capsys.readouterr().err
    assert "warning: resuming with --lr 0.025 (checkpoint: 0.05): from here on the run follows another recipe" in err
    assert [json.loads(line)["lr"] for line in open(tmp_path / "ema_log.jsonl")] == pytest.approx([0.05, 0.025])
    assert save.exists()


def cli_exit(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train.cli(argv)
    return info.value.code, capsys.readouterr().err


class InterruptAt(train.ReIDLoss):
    """A second Ctrl-C at the `at`-th loss (StopFlag raises KeyboardInterrupt at once)."""
    calls = 0
    at = 1

    def forward(self, logits, embeddings, labels):
        InterruptAt.calls += 1
        if InterruptAt.calls == InterruptAt.at:
            raise KeyboardInterrupt
        return super().forward(logits, embeddings, labels)


@pytest.mark.parametrize("at, said", [
    (1, "stopped at once in epoch 1; no epoch had finished, so nothing was saved: rerun the same command to start again"),
    (10, "stopped at once in epoch 2; the checkpoint {last} holds 1 finished epochs: resume with --resume {last}"),
])
def test_second_ctrl_c_says_what_was_saved_and_exits_130(monkeypatch, training_root, tmp_path, capsys, at, said):
    monkeypatch.setattr(train, "ReIDLoss", InterruptAt)
    monkeypatch.setattr(InterruptAt, "at", at)
    InterruptAt.calls = 0
    code, err = cli_exit(tiny(training_root, tmp_path / "ema.pth", "--no-eval", *SHORT), capsys)
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "train.py: " + said.format(last=tmp_path / "ema_last.pth")


def test_ctrl_c_in_the_final_evaluation_says_the_weights_are_saved(monkeypatch, training_root, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "final_evaluation", interrupted)
    save = tmp_path / "ema.pth"
    code, err = cli_exit(tiny(training_root, save, *SHORT), capsys)
    assert code == 130 and "Traceback" not in err
    assert f"train.py: interrupted during the final evaluation; the averaged weights are saved in {save} " \
           f"(evaluate them with python test_market1501.py --weights {save} --net small --img-height 32 " \
           f"--img-width 16 --dataset-root {training_root})" in err
    assert save.exists()


def test_unscorable_test_data_after_training_keeps_the_weights(training_root, tmp_path, capsys):
    import re
    import shutil
    root = tmp_path / "data"
    shutil.copytree(training_root, root)
    gallery = root / "market1501" / "bounding_box_test"
    for i, name in enumerate(sorted(os.listdir(gallery))):  # every gallery image becomes a distractor (id 0)
        camera = re.match(r"-?\d+_c(\d+)", name).group(1)
        os.rename(gallery / name, gallery / f"0000_c{camera}s9_{i:06d}_00.jpg")
    save = tmp_path / "ema.pth"
    code, err = cli_exit(tiny(str(root), save, *SHORT), capsys)
    assert code == 2 and "Traceback" not in err
    assert "train.py: error: none of the" in err and "queries has a correct gallery item" in err
    assert f"Training finished and its averaged weights are saved in {save}; once the test data is fixed, " \
           "evaluate them with python test_market1501.py" in err
    assert save.exists()


def test_pretrained_of_the_other_variant_speaks_train_py_flags(capsys, tmp_path):
    from network import DBN, LEViT, VARIANTS
    path = tmp_path / "large_backbone.pth"
    torch.save(LEViT(**VARIANTS["large"]).state_dict(), path)
    err = parse_error(capsys, ["--net", "small", "--pretrained", str(path)])
    assert f"--pretrained {path} is a LEViT-large backbone (embed_dim 192) but --net small was given; " \
           "pass --net large" in err and "net='large'" not in err
    reid = tmp_path / "ema.pth"
    torch.save(DBN(num_classes=3, pretrained=None).state_dict(), reid)
    err = parse_error(capsys, ["--pretrained", str(reid)])
    assert f"--pretrained {reid} is a trained DBN ReID model, not an ImageNet backbone" in err


def test_one_ctrl_c_is_announced_once_whatever_the_workers(monkeypatch, capsys):
    with train.StopFlag() as stop:
        main_pid = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: main_pid + 1)  # as seen in a forked loader worker
        stop.handle(signal.SIGINT, None)
        assert stop.signum == 0 and capsys.readouterr().err == ""
        monkeypatch.setattr(os, "getpid", lambda: main_pid)
        stop.handle(signal.SIGINT, None)
    assert stop.signum == signal.SIGINT
    assert capsys.readouterr().err.count("SIGINT: stopping after this step") == 1


def test_warnings_are_one_clean_line(capsys):
    from utils.console import warning_line
    warning_line("skipping unreadable image a.jpg: truncated", UserWarning, "training/resume.py", 151,
                 line="    return self.dataset[index]")
    assert capsys.readouterr().err == "warning: skipping unreadable image a.jpg: truncated\n"


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_with_workers_prints_one_message(training_root, tmp_path):
    """A terminal's Ctrl-C reaches every process of the group, the loader workers too."""
    proc = run_script(tiny(training_root, tmp_path / "ema.pth", "--no-eval", "--num-workers", "2"), start_new_session=True)
    last = tmp_path / "ema_last.pth"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130 and "Traceback" not in err, err
    assert err.count("SIGINT: stopping after this step") == 1
    assert "interrupted in epoch" in err


def test_unreadable_pretrained_file_is_a_usage_error(capsys, tmp_path):
    path = tmp_path / "backbone.pth"
    path.write_bytes(b"KKK")
    err = parse_error(capsys, ["--pretrained", str(path)])
    assert f"--pretrained: cannot read {path} as a torch checkpoint" in err


def test_save_path_that_is_a_folder_or_holds_only_a_log(training_root, tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(train.UsageError, match=r"--save-path .*run is a folder; give a file name, e.g. .*ema.pth"):
        train.main(train.parse_args(tiny(training_root, tmp_path / "run", "--dry-run")))
    (tmp_path / "ema_log.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(train.UsageError) as err:
        train.main(train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--dry-run")))
    assert f"files of an earlier run are there ({tmp_path / 'ema_log.jsonl'}); add --overwrite" in str(err.value)


def test_ctrl_c_in_the_batchnorm_pass_points_to_resume(monkeypatch, training_root, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(bn_pass, "update_bn", interrupted)
    save = tmp_path / "ema.pth"
    code, err = cli_exit(tiny(training_root, save, "--no-eval", *SHORT), capsys)
    last = tmp_path / "ema_last.pth"
    assert code == 130 and "Traceback" not in err and not save.exists()
    assert f"train.py: interrupted during the BatchNorm pass after the last epoch, before {save} was written; " \
           f"every epoch is in {last}: --resume {last} redoes the pass and saves" in err


# --- --resume auto ---------------------------------------------------------------------------------

def test_resume_auto_takes_the_runs_last_checkpoint_or_starts_a_new_run(reference_run, training_root, tmp_path):
    folder, _, _ = reference_run
    args = train.parse_args(["--resume", "auto", "--save-path", str(folder / "ema.pth"), "--no-eval"])
    assert args.resume == str(folder / "ema_last.pth") and args.seed == 3 and args.img_height == 32
    args = train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--resume", "auto"))
    assert args.resume is None and not args.overwrite
    (tmp_path / "ema_log.jsonl").write_text("")  # a run killed before its first checkpoint: replaced
    args = train.parse_args(tiny(training_root, tmp_path / "ema.pth", "--resume", "auto"))
    assert args.resume is None and args.overwrite


def test_resume_auto_refuses_another_recipe_as_resume_does(reference_run):
    folder, _, _ = reference_run
    messages = []
    for resume in (str(folder / "ema_last.pth"), "auto"):
        args = train.parse_args(["--resume", resume, "--save-path", str(folder / "ema.pth"), "--erasing", "0.2",
                                 "--no-eval"])
        with pytest.raises(train.UsageError) as info:
            train.main(args)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "these differ: --erasing 0.2 (checkpoint: 0.3)" in messages[0]
