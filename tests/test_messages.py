"""Messages of mistakes a new user makes: what the file or value is and what to give instead (exit 2,
no traceback, no advice of the libraries underneath)."""
import warnings

import pytest
import torch

import extract
import train
from datasets import DatasetError, build_dataset
from datasets.synthetic import generate
from evaluation import cli as eval_cli
from network import CheckpointError, make_checkpoint, read_checkpoint
from tests.helpers import seeded_dbn
from training.resume import load_training_checkpoint


@pytest.fixture
def exported(tmp_path):
    """A TorchScript and a torch.export file, as export.py writes them (of a small module)."""
    module, example = torch.nn.Linear(3, 2), torch.zeros(1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.trace(module, example), tmp_path / "dbn.ts")
    torch.export.save(torch.export.export(module, (example,)), tmp_path / "dbn.pt2")
    return tmp_path / "dbn.ts", tmp_path / "dbn.pt2"


def test_an_export_given_as_weights_says_what_it_is(exported, capsys):
    ts, pt2 = exported
    with pytest.raises(CheckpointError, match=r"is a TorchScript export \(a program for inference, not weights\): "
                                              r"pass the \.pth checkpoint it was exported from$"):
        read_checkpoint(ts)
    with pytest.raises(CheckpointError, match=r"is a torch\.export program \(a program for inference"):
        read_checkpoint(pt2)
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main("market1501", ["--weights", str(ts), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{ts} is a TorchScript export" in err
    assert "weights_only" not in err and "Traceback" not in err


def test_a_folder_given_as_weights_is_called_a_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main("market1501", ["--weights", str(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert f"--weights {tmp_path} is a folder; give the checkpoint file in it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        extract.main(["--weights", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "f.npz")])
    assert exit_info.value.code == 2
    assert f"--weights {tmp_path} is a folder; give the checkpoint file in it" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=f"^{tmp_path} is a folder, not a checkpoint file"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("height", ["0", "8"])
def test_an_input_size_below_16_gets_one_rule(capsys, height):
    with pytest.raises(SystemExit):
        train.parse_args(["--img-height", height, "--pretrained", "none"])
    assert f"--img-height/--img-width must be at least 16 (output stride 16), got {height}x128" in \
        capsys.readouterr().err


def test_resume_of_the_averaged_weights_names_that_runs_checkpoint(tmp_path):
    path = tmp_path / "params" / "custom.pth"
    path.parent.mkdir()
    torch.save(make_checkpoint(seeded_dbn(), 64, 32, dataset="custom", transform="reid"), path)
    with pytest.raises(CheckpointError) as info:
        load_training_checkpoint(str(path))
    assert f"e.g. {tmp_path / 'params' / 'custom_last.pth'} for --save-path {path}" in str(info.value)
    assert "ema_last.pth" not in str(info.value)


def test_instance_num_1_warns_that_the_triplet_loss_has_no_positive_pair():
    with pytest.warns(UserWarning, match="--instance-num 1: a batch holds one image of each identity, so the triplet "
                                         "loss has no positive pair"):
        args = train.parse_args(["--instance-num", "1", "--batch-size", "8", "--pretrained", "none"])
    assert args.instance_num == 1


def test_custom_on_the_folder_above_names_the_dataset_folder(tmp_path):
    generate("custom", str(tmp_path), ids=3, images_per_id=4, cameras=2)
    with pytest.raises(DatasetError) as info:
        build_dataset("custom", str(tmp_path))
    assert str(info.value).endswith(f"{tmp_path} holds a custom/ folder: --dataset custom takes the dataset folder "
                                    f"itself, e.g. --dataset-root {tmp_path / 'custom'}")
