"""Shared fixtures: the repository root on sys.path, the data folder, and the golden example's
weight formula (deterministic, well-spread random weights for any model)."""
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DATA_DIR = os.path.join(ROOT, "tests", "data")


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def data_dir():
    return DATA_DIR


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
