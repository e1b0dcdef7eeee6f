"""The README's commands, as written: the Quick start and CI agree, every training command of the
release is there verbatim and passes --dry-run on generated data, every evaluation command runs."""
import os
import re
import shlex

import pytest
import torch

import train
from conftest import ROOT
from readme_commands import COMMANDS

README = open(os.path.join(ROOT, "README.md")).read()
RELEASE_ROOT = "your/dataset_root"
# generated sizes: enough identities for each command's P = batch-size / instance-num
IDS = {"market1501": 16, "dukemtmc": 16, "msmt17": 16, "veri776": 16, "vehicleid": 64, "car196": 8,
       "cub200": 8, "university1652": 8, "npdetected": 4, "nplabeled": 4}


def section(title):
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def readme_lines(prefix):
    return [line.strip() for block in bash_blocks(README) for line in block.splitlines()
            if line.strip().startswith(prefix)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from datasets.synthetic import generate
    root = str(tmp_path_factory.mktemp("data"))
    for name, ids in IDS.items():
        generate(name, root, ids=ids, images_per_id=2, cameras=2, seed=0)
    return root


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    blocks = bash_blocks(section("Quick start"))
    assert len(blocks) == 2
    install_and_demo, tests = (b.strip() for b in blocks)
    assert "pip install -r requirements.txt" in install_and_demo and install_and_demo.endswith("train.py --demo")
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert tests in [line.strip() for line in ci.splitlines()], "the CI must run exactly the README's test command"


def test_every_release_command_is_in_the_readme_verbatim():
    lines = readme_lines("python train.py --net")
    expected = [cmd.format(root=RELEASE_ROOT) for _, cmd in COMMANDS]
    assert lines == expected
    assert README.count("Release's reported result") == len(COMMANDS)


@pytest.mark.parametrize("command", readme_lines("python train.py --net"),
                         ids=[title for title, _ in COMMANDS])
def test_training_command_passes_dry_run(command, data_root, tmp_path, monkeypatch, capsys):
    argv = shlex.split(command)[2:]
    argv = [data_root if a == RELEASE_ROOT else a for a in argv]
    os.symlink(data_root, tmp_path / "data")  # commands without --dataset-root use ./data
    monkeypatch.chdir(tmp_path)
    train.main(train.parse_args([*argv, "--dry-run"]))
    out = capsys.readouterr().out
    dataset = argv[argv.index("--dataset") + 1]
    assert re.search(r"^train: \d+ identities, \d+ images$", out, re.M)
    assert re.search(r"GFLOPs", out) and "nothing trained" in out
    assert f"train: {IDS[dataset]} identities" in out
    assert not os.path.exists(tmp_path / "params" / "ema.pth")


EVAL_COMMANDS = readme_lines("python test_")


def test_every_dataset_has_an_evaluation_command():
    scripts = {shlex.split(c)[1] for c in EVAL_COMMANDS}
    assert scripts == {f"test_{name}.py" for name in IDS}
    for script in scripts:
        assert os.path.isfile(os.path.join(ROOT, script))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from network import DBN
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for net in ("small", "large"):
        torch.manual_seed(0)
        paths[net] = str(folder / f"{net}.pth")
        torch.save(DBN(num_classes=5, net=net, pretrained=None).state_dict(), paths[net])
    return paths


@pytest.mark.parametrize("command", EVAL_COMMANDS, ids=[shlex.split(c)[1] for c in EVAL_COMMANDS])
def test_evaluation_command_runs(command, data_root, weights, capsys):
    from utils import evaluation
    argv = shlex.split(command)[2:]
    net = argv[argv.index("--net") + 1] if "--net" in argv else "small"
    argv = [data_root if a == "data" else weights[net] if a == "params/ema.pth" else a for a in argv]
    script = shlex.split(command)[1]
    dataset = script[len("test_"):-len(".py")]
    # a small input and batch so that the run takes seconds; later flags win in argparse
    evaluation.main(dataset, [*argv, "--img-height", "64", "--img-width", "32", "--batch-size", "16",
                              "--num-workers", "0", "--device", "cpu", "--trials", "2"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"(top1:\d\.\d{6} top5:\d\.\d{6} top10:\d\.\d{6} mAP:\d\.\d{6})|"
                        r"(Recall@1:\d\.\d{6} Recall@2:\d\.\d{6} Recall@4:\d\.\d{6} Recall@8:\d\.\d{6} NMI:\d\.\d{6})",
                        last)
