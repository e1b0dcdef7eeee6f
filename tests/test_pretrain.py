"""pretrain.py on a generated ImageFolder (datasets/shapes.py): flag and data errors, the saved backbone's
keys against the released one's, a run that learns and that train.py --pretrained fine-tunes, an exact
resume after SIGKILL, the first step under torchrun, Mixup / CutMix targets and the lr schedule."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import pretrain
import train
from datasets.imagefolder import ShuffledBatches
from datasets.shapes import generate_imagefolder
from network import DBN, LEViT, VARIANTS
from tests import helpers, pretrain_first_step
from tests.helpers import DATA_DIR, ROOT, assert_same_state, load, start, tiny_run
from training.classification import batch_mix, build_step_scheduler, scaled_lr

IMAGES_PER_ID = 4  # of the training_root fixture (tests/conftest.py): train.py's fine-tuning run
TIMEOUT = 240
# 4 classes x 16 images at 32x32, batches of 16: 4 steps an epoch
TINY = ["--img-size", "32", "--batch-size", "16", "--warmup-epochs", "1", "--device", "cpu", "--num-workers", "0",
        "--seed", "1"]
# every random part of the recipe on, to check that a resume restores all of them
FULL_RECIPE = ["--epochs", "2", "--lr", "0.1", "--model-ema-decay", "0.9"]
# the plain recipe that learns the shapes in a few epochs
LEARN = ["--epochs", "6", "--lr", "0.1", "--mixup", "0", "--cutmix", "0", "--randaug-magnitude", "0", "--reprob", "0"]


def run_script(argv, script="pretrain.py", **kwargs):
    return start([sys.executable, os.path.join(ROOT, script), *argv], **kwargs)


def finish(proc, timeout=TIMEOUT):
    return helpers.finish(proc, timeout)


def cli_error(capsys, argv):
    """(exit status, stderr) of pretrain.cli(argv) that exits."""
    with pytest.raises(SystemExit) as info:
        pretrain.cli(argv)
    return info.value.code, capsys.readouterr().err


def released_layout(net="small"):
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(DATA_DIR, f"backbone_{net}_state_dict.tsv"))]
    return {key: [] if shape == "scalar" else [int(s) for s in shape.split("x")] for key, shape, _ in rows[1:]}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """4 classes x (16 train + 8 val) images of 32x32, generated once per module; read-only."""
    return generate_imagefolder(str(tmp_path_factory.mktemp("shapes")), classes=4, train_per_class=16,
                                val_per_class=8, size=32, seed=0)


def copy_tree(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return str(dst)


# --- flags and data errors: exit 2, a message naming the fix ----------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--img-size", "16"], "--img-size must be at least 32 (the backbone's output stride)"),
    (["--warmup-epochs", "5", "--epochs", "5"], "--warmup-epochs 5 must be below --epochs 5"),
    (["--mixup", "-1"], "--mixup must be 0 or more"),
    (["--min-lr", "1"], "--min-lr in [0, lr]"),
    (["--smoothing", "1"], "--smoothing must be in [0, 1)"),
    (["--randaug-magnitude", "31"], "--randaug-magnitude must be in 0..30"),
])
def test_invalid_flags_exit_2_naming_the_rule(capsys, argv, message):
    code, err = cli_error(capsys, argv)
    assert code == 2 and message in err


def test_missing_split_names_the_layout(capsys, tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    code, err = cli_error(capsys, ["--data-root", str(tmp_path), *TINY, "--dry-run"])
    assert code == 2 and f"dataset folder not found: {tmp_path / 'val'}" in err
    assert "train/<class>/<images>" in err and "Traceback" not in err


def test_val_class_missing_from_train_is_named(capsys, shapes_root, tmp_path):
    root = copy_tree(shapes_root, tmp_path / "data")
    os.rename(os.path.join(root, "train", "class003_cross"), os.path.join(root, "train", "renamed"))
    code, err = cli_error(capsys, ["--data-root", root, *TINY, "--dry-run"])
    assert code == 2 and "class folders that train/ lacks: class003_cross" in err and "add it to train/" in err


def test_empty_class_folder_is_named(capsys, shapes_root, tmp_path):
    root = copy_tree(shapes_root, tmp_path / "data")
    os.makedirs(os.path.join(root, "train", "empty"))
    code, err = cli_error(capsys, ["--data-root", root, *TINY, "--dry-run"])
    assert code == 2 and f"class folder {os.path.join(root, 'train', 'empty')} holds no image" in err


def test_batch_larger_than_the_training_set_is_a_usage_error(capsys, shapes_root, tmp_path):
    code, err = cli_error(capsys, ["--data-root", shapes_root, *TINY, "--batch-size", "128", "--dry-run",
                                   "--save-path", str(tmp_path / "b.pth")])
    assert code == 2 and "--batch-size 128" in err and "give a smaller batch" in err


def test_unreadable_images_stop_a_dry_run_and_are_skipped_and_counted_in_a_run(capsys, shapes_root, tmp_path,
                                                                                monkeypatch):
    root = copy_tree(shapes_root, tmp_path / "data")
    bad = os.path.join(root, "train", "class000_disc", "00000.png")
    open(bad, "wb").write(b"not an image")
    code, err = cli_error(capsys, ["--data-root", root, *TINY, "--dry-run", "--save-path", str(tmp_path / "a.pth")])
    assert code == 2 and "1 of the 64 training images cannot be read" in err and bad in err

    monkeypatch.setattr(pretrain, "MAX_SKIPPED", 0.5)  # 1 of 64 is above the 1% a real run allows
    monkeypatch.setattr(pretrain, "check_training_images", lambda items, saved, max_skipped: None)
    save = tmp_path / "b.pth"
    pretrain.main(pretrain.parse_args(["--data-root", root, *TINY, *LEARN, "--epochs", "2", "--save-path", str(save)]))
    out = capsys.readouterr().out
    records = [json.loads(line) for line in open(tmp_path / "b_log.jsonl")]
    assert sum(r["skipped"] for r in records) >= 1  # the permutation puts it in an epoch's full batches
    assert "unreadable images skipped" in out


# --- the saved backbone ------------------------------------------------------------------------------

@pytest.mark.parametrize("net", sorted(VARIANTS))
def test_saved_backbone_has_the_released_keys_and_shapes_less_the_classifier(net, shapes_root):
    args = pretrain.parse_args(["--net", net, "--data-root", shapes_root, *TINY])
    from datasets.imagefolder import ImageFolderData
    data = ImageFolderData(shapes_root)
    saved = pretrain.backbone_checkpoint(pretrain.build_model(args, data.num_classes), data, args, None)
    layout = {k: v for k, v in released_layout(net).items() if not k.startswith("head.")}
    assert {k: list(v.shape) for k, v in saved["state_dict"].items()} == layout
    assert saved["head"]["weight"].shape == (4, 4 * VARIANTS[net]["embed_dim"])
    assert saved["classes"] == data.classes and saved["variant"] == net


# --- a run that learns, and train.py fine-tuning its backbone -------------------------------------------

def completed_run(root, folder, recipe):
    """(folder, stdout) of an uninterrupted pretrain.py run on `root` with the `recipe` flags, saving to
    folder/backbone.pth."""
    code, out, err = finish(run_script(["--data-root", root, *TINY, *recipe, "--save-path", str(folder / "backbone.pth")]))
    assert code == 0, err
    return folder, out


@pytest.fixture(scope="module")
def learned(shapes_root, tmp_path_factory):
    return completed_run(shapes_root, tmp_path_factory.mktemp("learned"), LEARN)


@pytest.mark.slow
def test_pretraining_learns_the_shapes_and_reports_top1_top5_last(learned):
    folder, out = learned
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"top1:(\d\.\d{6}) top5:(\d\.\d{6})", last)
    assert match, last
    assert float(match.group(1)) >= 0.5  # chance is 0.25 on 4 classes
    records = [json.loads(line) for line in open(folder / "backbone_log.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["top1"] == float(match.group(1)) and records[-1]["skipped"] == 0
    from PIL import Image
    with Image.open(folder / "backbone_curves.png") as picture:  # redrawn after every epoch, as train.py's
        picture.load()
        assert picture.format == "PNG" and picture.width > 100


@pytest.mark.slow
def test_train_py_fine_tunes_the_pretrained_backbone(learned, training_root, tmp_path):
    folder, _ = learned
    backbone = str(folder / "backbone.pth")
    model = DBN(num_classes=8, net="small", pretrained=backbone)  # strict: every key of the file is used
    stored = load(backbone)["state_dict"]
    assert torch.equal(model.layer1.layers[0].mlp.proj_out[0].weight, stored["stage1.layers.0.mlp.proj_out.0.weight"])
    assert torch.equal(model.branch_2.layers[3].mlp.proj_out[0].weight, stored["stage3.layers.3.mlp.proj_out.0.weight"])
    argv = tiny_run(training_root, tmp_path / "ema.pth", "--pretrained", backbone, "--no-eval", batch_size=8,
                    epochs="1,2", ema_ratio=0.5, ema_extra=0)
    assert train.main(train.parse_args([*argv, "--dry-run"])) is None
    code, out, err = finish(run_script(argv, script="train.py"))
    assert code == 0, err
    assert "saved the average of 2 epochs' weights" in out


# --- exact resume -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(shapes_root, tmp_path_factory):
    """An uninterrupted 2-epoch run with Mixup, CutMix, RandAugment, erasing and EMA on."""
    return completed_run(shapes_root, tmp_path_factory.mktemp("reference"), FULL_RECIPE)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(reference_run, shapes_root, tmp_path):
    folder, reference_out = reference_run
    proc = run_script(["--data-root", shapes_root, *TINY, *FULL_RECIPE, "--save-path", str(tmp_path / "backbone.pth")])
    last = tmp_path / "backbone_last.pth"
    deadline = time.time() + TIMEOUT
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second (last) epoch, somewhere mid-step
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = load(last)["epoch"]
    assert killed_at == 1 and not (tmp_path / "backbone.pth").exists()

    # --resume auto finds the checkpoint beside --save-path (torchrun --max-restarts reruns the same command)
    code, out, err = finish(run_script(["--resume", "auto", "--save-path", str(tmp_path / "backbone.pth")]))
    assert code == 0, err
    assert f"{killed_at} epochs done" in out
    reference, resumed = load(folder / "backbone.pth"), load(tmp_path / "backbone.pth")
    assert_same_state(reference["state_dict"], resumed["state_dict"])
    assert_same_state(reference["head"], resumed["head"])
    assert out.strip().splitlines()[-1] == reference_out.strip().splitlines()[-1]
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "backbone_log.jsonl")] == [1, 2]


# --- torchrun: the first step's gradient -------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_first_step_gradient_is_the_whole_batch_gradient(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    code, _, err = finish(start([*torchrun, os.path.join(ROOT, "tests", "pretrain_first_step.py"), str(tmp_path)],
                                start_new_session=True))
    assert code == 0, err
    single = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "pretrain_first_step.py"), str(tmp_path),
                             "--reference"], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr
    ranks = [load(tmp_path / f"grad_rank{r}.pt") for r in (0, 1)]
    expected = load(tmp_path / "reference.pt")["grads"]
    assert ranks[0]["backend"] == "gloo" and ranks[0]["world_size"] == 2
    assert expected.keys() == ranks[0]["grads"].keys() and len(expected) > 100
    for name, g in expected.items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_ddp_shares_make_up_the_whole_batch():
    whole = next(iter(ShuffledBatches(40, 16, seed=5)))
    halves = [next(iter(ShuffledBatches(40, 16, seed=5, rank=r, world_size=2))) for r in (0, 1)]
    assert halves[0] + halves[1] == whole and len(set(whole)) == 16
    assert pretrain_first_step.BATCH == 16


# --- recipe pieces against their formulas -------------------------------------------------------------------

def test_mixup_targets_are_the_mixed_one_hot_labels():
    torch.manual_seed(0)
    B, C = 6, 5
    imgs = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, 8, 8).clone()  # image i is all i
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, targets = batch_mix(0.8, 0, C)(imgs, labels)
    # Mixup: image i = lam * image i + (1 - lam) * image i-1; from images 0 and 1 (values 0 and 1): lam
    lam = 1 - float(mixed[0, 0, 0, 0]) / (B - 1)
    assert 0 <= lam <= 1
    onehot = torch.nn.functional.one_hot(labels, C).float()
    torch.testing.assert_close(targets, lam * onehot + (1 - lam) * onehot.roll(1, 0))
    torch.testing.assert_close(mixed, lam * imgs + (1 - lam) * imgs.roll(1, 0))


def test_cutmix_targets_follow_the_pasted_area():
    torch.manual_seed(3)
    B, C = 4, 4
    imgs = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, 16, 16).clone()
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = batch_mix(0, 1.0, C)(imgs, labels)
    for i in range(B):
        pasted = float((mixed[i, 0] == imgs[(i - 1) % B, 0, 0, 0]).float().mean())  # share from image i-1
        expected = torch.zeros(C)
        expected[labels[i]] += 1 - pasted
        expected[labels[(i - 1) % B]] += pasted
        torch.testing.assert_close(targets[i], expected)


def test_both_mixes_on_choose_one_per_batch_and_off_is_none():
    assert batch_mix(0, 0, 4) is None
    assert type(batch_mix(0.8, 1.0, 4)).__name__ == "RandomChoice"


def test_label_smoothing_on_mixed_targets_is_timms_smoothed_mix():
    torch.manual_seed(0)
    logits, C, s = torch.randn(6, 5), 5, 0.1
    targets = torch.softmax(torch.randn(6, 5), 1)
    smoothed = targets * (1 - s) + s / C  # timm: smooth each one-hot, then mix (the same, mixing is linear)
    expected = -(smoothed * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(torch.nn.CrossEntropyLoss(label_smoothing=s)(logits, targets), expected)


def test_lr_schedule_is_per_step_warmup_then_cosine_to_min_lr():
    base, batch, min_lr, warmup, epochs, per_epoch = 5e-4, 1024, 1e-5, 2, 5, 3
    lr = scaled_lr(base, batch)
    assert lr == pytest.approx(1e-3)
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = build_step_scheduler(optimizer, warmup, epochs, per_epoch, lr, min_lr)
    W, T = warmup * per_epoch, epochs * per_epoch
    for s in range(T):
        expected = (lr * (s + 1) / W if s < W
                    else min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W))))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12), s
        optimizer.step()
        scheduler.step()


def test_generated_shapes_are_an_imagefolder_of_distinct_classes(shapes_root):
    from datasets.imagefolder import ImageFolderData
    data = ImageFolderData(shapes_root)
    assert data.num_classes == 4 and len(data.train) == 64 and len(data.val) == 32
    assert [label for _, label, _ in data.val] == sorted(label for _, label, _ in data.val)


def test_dry_run_checks_everything_and_trains_nothing(capsys, shapes_root, tmp_path):
    assert pretrain.main(pretrain.parse_args(["--data-root", shapes_root, *TINY, "--epochs", "3", "--dry-run",
                                              "--save-path", str(tmp_path / "b.pth")])) is None
    out = capsys.readouterr().out
    assert "train: 4 classes, 64 images; val: 32 images" in out
    assert "dry run: 4 batches of 16 per epoch, 3 epochs; nothing trained" in out
    assert not os.listdir(tmp_path)


def test_levit_of_each_variant_builds_from_pretrain_flags():
    args = pretrain.parse_args(["--net", "large", "--device", "cpu"])
    with torch.device("meta"):
        model = pretrain.build_model(args, 10)
    assert isinstance(model, LEViT) and args.drop_path == VARIANTS["large"]["drop_path"]
