"""Helpers shared by the test modules (the fixtures are in tests/conftest.py): the repository root,
subprocesses of the repository's scripts, the flags of a tiny train.py run, saved weights, seeded
untrained DBNs and the golden example's weight formula, dataset folders written by hand.

Import them as `from tests.helpers import ...`: tests/ is a package and pytest.ini puts the
repository root on sys.path.
"""
import math
import os
import signal
import subprocess

import torch

from network import DBN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "tests", "data")


# --- scripts as subprocesses, train.py's tiny run (tests/test_train.py, tests/test_distributed.py) ----

def tiny_run(root, save_path, *extra, batch_size, epochs, ema_ratio, ema_extra):
    """train.py's flags of a tiny run: LEViT-S from scratch at 32x16 on the CPU, seed 3, P x K batches of
    K = 4, on the data under `root`, saving to `save_path`; `extra` flags come last (and win)."""
    return ["--dataset", "market1501", "--net", "small", "--pretrained", "none", "--img-height", "32",
            "--img-width", "16", "--batch-size", str(batch_size), "--instance-num", "4", "--lr", "0.05",
            "--epochs", epochs, "--ema-ratio", str(ema_ratio), "--ema-extra", str(ema_extra), "--erasing", "0.3",
            "--device", "cpu", "--num-workers", "0", "--seed", "3",
            "--dataset-root", root, "--save-path", str(save_path), *extra]


def start(command, **kwargs):
    """subprocess.Popen of `command` in the repository root, one thread, unbuffered, output captured as text."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def finish(proc, timeout):
    """(exit status, stdout, stderr) of a subprocess.Popen; past `timeout` seconds it is killed (its whole
    session when it was started in one of its own) and TimeoutExpired is raised."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a, b):
    """Same weights: two state_dicts, or the "state_dict" of two --save-path files."""
    a, b = (x["state_dict"] if "format" in x else x for x in (a, b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- models -------------------------------------------------------------------------------------------

def seeded_dbn(net="small", num_classes=3, seed=0):
    """An untrained DBN in eval mode, its weights drawn by the constructor after torch.manual_seed(seed)
    (which leaves the global generator seeded)."""
    torch.manual_seed(seed)
    return DBN(num_classes=num_classes, net=net, pretrained=None).eval()


def make_weights(spec, seed):
    """The worked example's weight formula: entry i drawn from a generator seeded seed*100003+i."""
    out = {}
    for i, (key, shape, dtype) in enumerate(spec):
        g = torch.Generator().manual_seed(seed * 100003 + i)
        shape = tuple(shape)
        if dtype == "int64":
            out[key] = torch.zeros(shape, dtype=torch.long)
            continue
        if key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("logit_scale"):
            t = math.log(10.0) + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:  # conv: He scaling on the fan-in
            t = torch.randn(shape, generator=g) * math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
        elif len(shape) == 2:
            t = 0.01 * torch.randn(shape, generator=g)
        elif key.endswith(".weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.05 * torch.randn(shape, generator=g)
        out[key] = t.float()
    return out


def spec_of(model):
    return [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]


def with_formula_weights(model, seed=3):
    model.load_state_dict(make_weights(spec_of(model), seed))
    return model.eval()


# --- dataset folders written by hand (tests/test_datasets.py, tests/test_datasets_custom.py) ----------

def touch(root, *paths):
    for path in paths:
        path = os.path.join(root, path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def rel(items, root):
    """Items with paths relative to `root`, for comparing against hand-written expectations."""
    return [(os.path.relpath(p, root), label, camid) for p, label, camid in items]
