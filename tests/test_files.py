"""utils/files.py: output checks before any work and atomic writes with the user's permissions."""
import os
import stat
import sys

import pytest
import torch

from utils.files import UnwritableError, atomic_save, atomic_write, check_writable


def test_a_file_in_a_new_folder_is_writable_and_nothing_is_created(tmp_path):
    check_writable(str(tmp_path / "a" / "b" / "out.npz"))
    check_writable(str(tmp_path / "pictures"), folder=True)
    assert os.listdir(tmp_path) == []


def test_an_output_under_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UnwritableError, match=f"^cannot write there, {tmp_path / 'plain'} is a file, not a folder$"):
        check_writable(str(tmp_path / "plain" / "out.npz"))
    with pytest.raises(UnwritableError, match="is a file, not a folder"):
        check_writable(str(tmp_path / "plain" / "figs"), folder=True)


def test_a_folder_given_as_an_output_file_is_refused(tmp_path):
    with pytest.raises(UnwritableError, match="^it is a folder; give a file name$"):
        check_writable(str(tmp_path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's read-only file system")
def test_a_read_only_location_is_refused_even_for_root():
    # /proc refuses new files to every user, root included (a chmod'ed folder does not stop root)
    with pytest.raises(UnwritableError, match=r"^cannot write in /proc \("):
        check_writable("/proc/levit_outputs/query.npz")
    with pytest.raises(UnwritableError, match=r"^cannot write in /proc \("):
        check_writable("/proc/levit_pictures", folder=True)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.log", "w") as f:
            f.write("x")
        atomic_save({"v": torch.zeros(1)}, str(tmp_path / "ckpt.pth"))
        with atomic_write(str(tmp_path / "feats.npz")) as f:
            f.write(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "plain.log").st_mode)
    assert mode == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "ckpt.pth").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "feats.npz").st_mode) == mode
    assert torch.load(tmp_path / "ckpt.pth")["v"].shape == (1,)


def test_a_failed_atomic_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "feats.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(str(target)) as f:
            f.write(b"new, half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["feats.npz"]
