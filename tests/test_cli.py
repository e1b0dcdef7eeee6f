"""utils/cli.py and utils/checks.py: the shared flag helpers and the positive-integer check."""
import argparse

import numpy as np
import pytest
import torch

from utils.checks import is_positive_int, positive_int
from utils.cli import BooleanFlag, HelpFormatter, check_gpu, require_at_least


def parser_with_flag(default):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--norm", default=default, action=BooleanFlag, help="normalise")
    parser.add_argument("--size", default=3, type=int, help="size")
    return parser


@pytest.mark.parametrize("argv, value", [([], None), (["--norm"], True), (["--no-norm"], False),
                                         (["--norm", "false"], False), (["--norm", "yes"], True)])
def test_boolean_flag_spellings(argv, value):
    assert parser_with_flag(None).parse_args(argv).norm == value


def test_boolean_flag_errors_name_the_flag(capsys):
    for argv, message in ((["--no-norm", "true"], "--no-norm takes no value"),
                          (["--norm", "maybe"], "expected true or false, got 'maybe'")):
        with pytest.raises(SystemExit):
            parser_with_flag(True).parse_args(argv)
        assert message in capsys.readouterr().err


def test_help_shows_both_spellings_and_defaults_of_flags_with_values():
    text = parser_with_flag(True).format_help()
    assert "--norm [{true,false}], --no-norm" in text and "(default: True)" in text and "(default: 3)" in text
    assert "(default" not in parser_with_flag(None).format_help().split("--norm")[-1].split("--size")[0]


def test_require_at_least_names_the_first_flag_below(capsys):
    parser = argparse.ArgumentParser()
    args = argparse.Namespace(batch_size=4, num_workers=-1, vis=-2)
    require_at_least(parser, args, 1, "batch_size")
    with pytest.raises(SystemExit):
        require_at_least(parser, args, 0, "num_workers", "vis")
    assert "--num-workers must be 0 or more, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        require_at_least(parser, args, 5, "batch_size")
    assert "--batch-size must be at least 5, got 4" in capsys.readouterr().err


def test_check_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        check_gpu(argparse.ArgumentParser(), "--device cuda")
    assert "--device cuda: no CUDA device is available; use --device cpu (or auto)" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_gpu(argparse.ArgumentParser(), "--gpus 0,1", 1)
    with pytest.raises(SystemExit):
        check_gpu(argparse.ArgumentParser(), "--gpus 0,2", 2)
    assert "--gpus 0,2: no GPU 2 (this machine has 2: ids 0..1)" in capsys.readouterr().err


def test_positive_int():
    assert positive_int("k", np.int64(3)) == 3 and type(positive_int("k", np.int64(3))) is int
    assert [is_positive_int(v) for v in (1, np.int32(2), 0, -1, True, 1.0, "1")] == [True, True] + [False] * 5
    with pytest.raises(ValueError, match=r"^block must be a positive integer or None, got 0$"):
        positive_int("block", 0, " or None")
