"""--eval-period (training/eval_period.py): which epochs are evaluated, an evaluation leaves every random
state, BatchNorm buffer and the train mode as they were, an unusable test split is refused before
training, and a run with --eval-period 1 ends bit-identical to the run without it, with the metrics of
every epoch in its log, the best epoch's weights in <stem>_best.pth and its curves."""
import functools
import json
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train
from datasets import build_dataset
from evaluation.evaluator import evaluate
from network import DBN
from tests.helpers import assert_same_state, load, seeded_dbn, tiny_run
from training.eval_period import PeriodicEvaluation

IMAGES_PER_ID = 8  # of the training_root fixture (tests/conftest.py)
tiny = functools.partial(tiny_run, batch_size=8, epochs="1,2", ema_ratio=0.5, ema_extra=1)  # 3 epochs


def periodic(root, tmp_path, period, epochs_total=5):
    args = train.parse_args(tiny(root, tmp_path / "ema.pth", "--eval-period", str(period)))
    return PeriodicEvaluation(build_dataset("market1501", root), args, epochs_total, True, False)


def test_evaluated_epochs_are_every_n_and_the_last(training_root, tmp_path):
    assert [e + 1 for e in range(5) if periodic(training_root, tmp_path, 2).due(e)] == [2, 4, 5]
    assert [e + 1 for e in range(5) if periodic(training_root, tmp_path, 1).due(e)] == [1, 2, 3, 4, 5]
    assert not any(periodic(training_root, tmp_path, 0).due(e) for e in range(5))


def test_an_evaluation_leaves_random_states_buffers_and_train_mode(training_root, tmp_path):
    evaluations = periodic(training_root, tmp_path, 1)
    model = seeded_dbn(num_classes=8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = draws()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    metrics = evaluations.evaluate(model, 0)
    assert draws() == expected
    assert model.training and 0 <= metrics["mAP"] <= 1 and metrics["num_query"] == 16
    assert_same_state(before, model.state_dict())  # running statistics and num_batches_tracked too


def test_a_negative_period_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        train.parse_args(["--eval-period", "-1"])
    assert info.value.code == 2
    assert "--eval-period must be 0 or more, got -1" in capsys.readouterr().err


def test_the_period_may_change_on_resume():
    from training.flags import RUN_FLAGS
    assert "eval_period" in RUN_FLAGS  # it does not change the weights, so a resumed run may change it


def test_an_unusable_test_split_is_refused_before_training(training_root, tmp_path, capsys, monkeypatch):
    import os
    import re
    import shutil
    root = tmp_path / "data"
    shutil.copytree(training_root, root)
    gallery = root / "market1501" / "bounding_box_test"
    for i, name in enumerate(sorted(os.listdir(gallery))):  # every gallery image a distractor (id 0)
        camera = re.match(r"-?\d+_c(\d+)", name).group(1)
        os.rename(gallery / name, gallery / f"0000_c{camera}s9_{i:06d}_00.jpg")
    save = tmp_path / "ema.pth"
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(sys, "argv", ["train.py", *tiny(str(root), save, "--eval-period", "2")])
    with pytest.raises(SystemExit) as info:
        train.cli()
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert f"train.py: error: --eval-period 2 evaluates on the test split of {root / 'market1501'}" in err
    assert "none of the 16 queries has a correct gallery item" in err and "or drop --eval-period" in err
    assert not os.path.exists(tmp_path / "ema_last.pth") and not os.path.exists(tmp_path / "ema.lock")


@pytest.mark.slow
def test_eval_period_1_changes_nothing_logs_metrics_and_keeps_the_best(training_root, tmp_path):
    plain, watched = tmp_path / "plain" / "ema.pth", tmp_path / "watched" / "ema.pth"
    train.main(train.parse_args(tiny(training_root, plain, "--no-eval")))
    train.main(train.parse_args(tiny(training_root, watched, "--no-eval", "--eval-period", "1")))
    assert_same_state(load(plain), load(watched))  # the averaged weights, BN pass included
    plain_last, watched_last = load(plain.parent / "ema_last.pth"), load(watched.parent / "ema_last.pth")
    assert_same_state(plain_last["model"], watched_last["model"])  # the weights trained, BN buffers included
    for a, b in zip(plain_last["rng"][0].values(), watched_last["rng"][0].values()):
        assert str(a) == str(b)

    records = [json.loads(line) for line in open(watched.parent / "ema_log.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(0 <= r["metrics"]["mAP"] <= 1 and r["metrics"]["num_query"] == 16 for r in records)
    assert not any("metrics" in json.loads(line) for line in open(plain.parent / "ema_log.jsonl"))
    best_record = max(records, key=lambda r: r["metrics"]["mAP"])  # the first of equal ones
    best = load(watched.parent / "ema_best.pth")
    assert best["epoch"] == best_record["epoch"] and best["metrics"] == best_record["metrics"]
    assert best["format"] == load(watched)["format"] and best["img_height"] == 32 and best["dataset"] == "market1501"
    model = DBN(num_classes=8, net="small", pretrained=None)
    model.load_state_dict(best["state_dict"])  # strict
    again, _ = evaluate(model, build_dataset("market1501", training_root), image_size=(32, 16), batch_size=8)
    assert again["mAP"] == pytest.approx(best_record["metrics"]["mAP"], abs=1e-6)
    assert again["top1"] == pytest.approx(best_record["metrics"]["top1"], abs=1e-6)
    if best_record["epoch"] == 3:  # the last epoch's weights are those of the last checkpoint
        assert_same_state(best["state_dict"], watched_last["model"])
    pytest.importorskip("matplotlib", reason="the curves need matplotlib (requirements-dev.txt)")
    with Image.open(watched.parent / "ema_curves.png") as picture:
        picture.load()
        assert picture.format == "PNG" and picture.size[0] > 400
