"""training/curves.py: train.py's curves and `python -m training.curves` comparing runs; without
matplotlib one warning in a run and exit status 2 for the command, both saying how to install it."""
import json
import os
import subprocess
import sys
import warnings

import pytest
from PIL import Image

from tests.helpers import ROOT
from training import curves


def write_log(path, epochs, evaluated=()):
    with open(path, "w") as f:
        for e in range(1, epochs + 1):
            record = {"epoch": e, "loss": 3.0 / e, "terms": {"ce0": 2.0 / e, "tri0": 1.0 / e}, "lr": 0.1 / e,
                      "img_per_s": 100.0 + e, "seconds": 5.0, "data_wait": 1.0, "data_wait_share": 0.2, "skipped": 0}
            if e in evaluated:
                record["metrics"] = {"mAP": 0.1 * e, "top1": 0.2 * e}
            f.write(json.dumps(record) + "\n")
    return str(path)


def test_read_log_keeps_the_last_line_of_each_epoch(tmp_path):
    path = write_log(tmp_path / "a_log.jsonl", 3)
    with open(path, "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": 9.0, "terms": {}, "lr": 0, "img_per_s": 0, "seconds": 0}) + "\n")
    records = curves.read_log(path)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[1]["loss"] == 9.0
    assert curves.run_name(path) == "a"


def test_the_command_compares_runs_in_one_png(tmp_path):
    pytest.importorskip("matplotlib", reason="the curves need matplotlib (requirements-dev.txt)")
    a, b = write_log(tmp_path / "a_log.jsonl", 4, evaluated=(2, 4)), write_log(tmp_path / "b_log.jsonl", 2)
    out = tmp_path / "figs" / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "training.curves", a, b, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as picture:
        picture.load()
        assert picture.format == "PNG" and picture.size == (960, 560)


def test_the_command_names_a_bad_log(tmp_path, capsys):
    bad = tmp_path / "x_log.jsonl"
    bad.write_text("not json\n")
    for argv, message in [([str(tmp_path / "none.jsonl")], "cannot be read"), ([str(bad)], "not a train.py log")]:
        with pytest.raises(SystemExit) as info:
            curves.main([*argv, "--out", str(tmp_path / "c.png")])
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_without_matplotlib_the_command_exits_2_and_a_run_warns_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    log = write_log(tmp_path / "a_log.jsonl", 2)
    with pytest.raises(SystemExit) as info:
        curves.main([log, "--out", str(tmp_path / "c.png")])
    assert info.value.code == 2 and "pip install matplotlib" in capsys.readouterr().err
    monkeypatch.setattr(curves, "_warned", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            curves.draw_run_curves(log, str(tmp_path / "a_curves.png"))
    assert len(caught) == 1 and "pip install matplotlib" in str(caught[0].message)
    assert not os.path.exists(tmp_path / "a_curves.png") and not os.path.exists(tmp_path / "c.png")
