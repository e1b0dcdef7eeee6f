"""Shared fixtures (the helpers are in tests/helpers.py): the repository root, the golden example's
folder, generated datasets and the checkpoint file of a seeded untrained DBN. Read-only ones are
built once per session.

Each fixture name means one thing across the suite; a test module that needs something else
builds it under a name of its own.
"""
import pytest
import torch

from datasets.synthetic import generate
from network import make_checkpoint
from tests.helpers import DATA_DIR, ROOT, seeded_dbn


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def data_dir():
    """tests/data: the golden example and the state_dict layouts."""
    return DATA_DIR


@pytest.fixture(scope="session")
def native_kernels():
    """network.fast.kernels, built: a test that needs the native CPU kernels skips without them, saying
    why, or fails where LEVIT_REQUIRE_KERNELS=1 is set (CI must run them)."""
    from network.fast import kernels
    reason = kernels.unavailable_reason()
    if reason is None:
        return kernels
    if kernels.required():
        pytest.fail(f"LEVIT_REQUIRE_KERNELS=1 but the native kernels are not available: {reason}", pytrace=False)
    pytest.skip(f"the native kernels are not available here: {reason}")


@pytest.fixture(scope="session")
def dbn_checkpoint(tmp_path_factory):
    """Path of the --save-path file (network.make_checkpoint) of seeded_dbn(): an untrained LEViT-S DBN of
    3 classes, seed 0, described as trained at 64x32 on market1501 with the 'reid' transforms. Built
    once per session; the global random generator is left as it was."""
    path = str(tmp_path_factory.mktemp("dbn_checkpoint") / "ema.pth")
    with torch.random.fork_rng(devices=[]):
        torch.save(make_checkpoint(seeded_dbn(), 64, 32, dataset="market1501", transform="reid"), path)
    return path


@pytest.fixture(scope="session")
def small_market_root(tmp_path_factory):
    """Root of a synthetic Market-1501 of 3 identities x 4 images over 2 cameras (seed 0), generated once
    per session; read-only (extract.py, search.py)."""
    root = str(tmp_path_factory.mktemp("small_market"))
    generate("market1501", root, ids=3, images_per_id=4, cameras=2, seed=0)
    return root


@pytest.fixture(scope="module")
def training_root(request, tmp_path_factory):
    """Root of a synthetic Market-1501 of 8 identities x IMAGES_PER_ID (a constant of the test module)
    images over 2 cameras (seed 0), generated once per module: train.py's tiny runs."""
    root = str(tmp_path_factory.mktemp("training_data"))
    generate("market1501", root, ids=8, images_per_id=request.module.IMAGES_PER_ID, cameras=2, seed=0)
    return root
