"""extract.py and datasets/image_list.py: features of a dataset's query folder equal the test script's,
the .npz layout, ids from names and lists, and every usage error's message."""
import os

import numpy as np
import pytest
import torch

import extract
from datasets.image_list import ImageListError, collect_images

SMALL = ["--num-workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def query_dir(small_market_root):
    """The query folder of the generated Market-1501 (conftest's small_market_root): 6 images."""
    return os.path.join(small_market_root, "market1501", "query")


def run(capsys, *argv):
    code = extract.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        extract.main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


def test_query_features_equal_the_test_scripts(small_market_root, query_dir, dbn_checkpoint, capsys, tmp_path):
    from datasets import build_dataset
    from evaluation import cli as eval_cli, evaluator as evaluation
    out_path = str(tmp_path / "query.npz")
    code, out, _ = run(capsys, "--weights", dbn_checkpoint, "--images", query_dir,
                       "--out", out_path, *SMALL)
    assert code == 0 and "input 64x32 (reid test transform), 1920-d features, flip-averaged" in out
    saved = np.load(out_path)
    assert sorted(saved.files) == ["camids", "features", "paths", "pids", "provenance"]

    # the test script's query features: its model loading and its data loading
    model, _, size = eval_cli.load_model(dbn_checkpoint, torch.device("cpu"), default_size=(256, 128), img_height=64,
                                         img_width=32)
    data = build_dataset("market1501", small_market_root)
    feats, index = evaluation.FeaturePass(model, data, size, batch_size=32)(data.query, desc="query")
    assert [data.query[i][0] for i in index] == saved["paths"].tolist()
    assert saved["features"].dtype == np.float32 and saved["features"].shape == (6, 1920)
    assert np.array_equal(saved["features"], feats.numpy())
    assert saved["pids"].tolist() == [data.query[i][1] for i in index]
    assert saved["camids"].tolist() == [data.query[i][2] + 1 for i in index]  # the camera number as written


def test_glob_list_and_ids(query_dir, dbn_checkpoint, capsys, tmp_path):
    names = sorted(os.listdir(query_dir))
    with open(tmp_path / "list.txt", "w") as f:
        f.write("# two images\n" + "".join(f"{os.path.join(query_dir, n)} 7\n" for n in names[:2]))
    paths, pids, camids = collect_images(str(tmp_path / "list.txt"))
    assert paths == [os.path.join(query_dir, n) for n in names[:2]] and pids == [7, 7]
    assert camids == [int(n.split("_c")[1][0]) for n in names[:2]]  # from the names when the list has none
    code, _, _ = run(capsys, "--weights", dbn_checkpoint, "--images", os.path.join(query_dir, "*_c1s*.jpg"),
                     "--out", str(tmp_path / "g.npz"), *SMALL, "--no-flip")
    saved = np.load(tmp_path / "g.npz")
    assert code == 0 and len(saved["paths"]) == 3 and set(saved["camids"].tolist()) == {1}
    # plain names carry no ids: no pids / camids arrays
    import shutil
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(os.path.join(query_dir, names[0]), plain / "a.jpg")
    code, out, _ = run(capsys, "--weights", dbn_checkpoint, "--images", str(plain), "--out", str(tmp_path / "p.npz"),
                       *SMALL)
    assert code == 0 and "images: 1 from" in out and "with ids" not in out
    assert sorted(np.load(tmp_path / "p.npz").files) == ["features", "paths", "provenance"]


def test_unreadable_images_are_left_out(query_dir, dbn_checkpoint, capsys, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = sorted(os.listdir(query_dir))[0]
    with open(os.path.join(query_dir, name), "rb") as f:
        (folder / name).write_bytes(f.read())
    (folder / "0009_c1s1_000001_01.jpg").write_bytes(b"not an image")
    code, out, err = run(capsys, "--weights", dbn_checkpoint, "--images", str(folder), "--out",
                         str(tmp_path / "x.npz"), *SMALL)
    assert code == 0 and "1 of 2 images unreadable, left out" in out
    # a clean line of its own, as the test scripts print it: no Python source line, no category
    warning = [line for line in err.splitlines() if "skipping unreadable image" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: skipping unreadable image"), err
    assert "UserWarning" not in err and "warnings.warn" not in err
    assert np.load(tmp_path / "x.npz")["paths"].tolist() == [str(folder / name)]


def test_dry_run_writes_nothing(query_dir, dbn_checkpoint, capsys, tmp_path):
    code, out, _ = run(capsys, "--weights", dbn_checkpoint, "--images", query_dir,
                       "--out", str(tmp_path / "q.npz"), *SMALL, "--dry-run")
    assert code == 0 and f"dry run: would write 6 x 1920 features to {tmp_path / 'q.npz'}" in out
    assert not os.path.exists(tmp_path / "q.npz")


def test_usage_errors(query_dir, dbn_checkpoint, capsys, tmp_path):
    base = ["--images", query_dir, "--out", str(tmp_path / "q.npz"), *SMALL]
    missing = str(tmp_path / "none.pth")
    assert f"--weights {missing}: file not found" in usage_error(capsys, "--weights", missing, *base)
    assert "--out q.txt: the file name must end in .npz" in usage_error(
        capsys, "--weights", dbn_checkpoint, "--images", query_dir, "--out", "q.txt", *SMALL)
    assert "--img-height must be at least 16 (output stride 16), got 8" in usage_error(
        capsys, "--weights", dbn_checkpoint, *base, "--img-height", "8")
    assert "--batch-size must be at least 1, got 0" in usage_error(capsys, "--weights", dbn_checkpoint, *base,
                                                                   "--batch-size", "0")
    assert "the following arguments are required: --images" in usage_error(capsys, "--weights", dbn_checkpoint,
                                                                            "--out", "q.npz")
    if not torch.cuda.is_available():
        assert "--device cuda: no CUDA device is available" in usage_error(
            capsys, "--weights", dbn_checkpoint, *base, "--device", "cuda")
    assert "--dtype float16 inference is offered on CUDA only; on the CPU use bfloat16" in usage_error(
        capsys, "--weights", dbn_checkpoint, *base, "--device", "cpu", "--dtype", "float16")


@pytest.mark.parametrize("images,message", [
    ("nowhere", "not found: nowhere (give a folder of images, a glob pattern such as 'frames/*.jpg', an image, "
                "or a .txt list with one image path per line)"),
    ("*.nothing-matches-[x]", "no image files match '*.nothing-matches-[x]'"),
])
def test_image_set_errors(dbn_checkpoint, capsys, tmp_path, images, message):
    code, _, err = run(capsys, "--weights", dbn_checkpoint, "--images", images, "--out", str(tmp_path / "q.npz"),
                       *SMALL)
    assert code == 2 and err == f"extract.py: error: {message}\n"


def test_list_and_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageListError, match=f"no images \\(.jpg/.jpeg/.png\\) under {empty}"):
        collect_images(str(empty))
    (tmp_path / "a.jpg").write_bytes(b"")
    cases = [("a.jpg 1 2 3", "line 1: expected 'path [pid [camid]]' (paths cannot hold spaces), got 'a.jpg 1 2 3'"),
             ("a.jpg x", "line 1: pid and camid must be integers, got 'x'"),
             ("b.jpg 1", f"line 1: listed image not found: {tmp_path / 'b.jpg'}"),
             ("# nothing", "no images listed in")]
    for line, message in cases:
        (tmp_path / "l.txt").write_text(line + "\n")
        with pytest.raises(ImageListError) as err:
            collect_images(str(tmp_path / "l.txt"))
        assert message in str(err.value) and str(tmp_path / "l.txt") in str(err.value)


def test_contradicting_flag_is_an_error(query_dir, dbn_checkpoint, capsys, tmp_path):
    code, _, err = run(capsys, "--weights", dbn_checkpoint, "--images", query_dir,
                       "--out", str(tmp_path / "q.npz"), *SMALL, "--net", "large")
    assert code == 2 and "holds a LEViT-small DBN (embed_dim 96) but --net large was given" in err


@pytest.mark.parametrize("tool,words", [
    ("extract", ["--images DIR|GLOB|LIST", "--out", "--weights", "--no-flip", "--dry-run", "--transform"]),
    ("search", ["--query IMG", "--gallery DIR|GLOB|LIST|NPZ", "--topk", "--vis DIR", "--dry-run"]),
    ("export", ["--format {torchscript,exported,onnx,openvino}", "--no-normalize", "--no-flip", "--dry-run"]),
])
def test_help(capsys, tool, words):
    import importlib
    with pytest.raises(SystemExit) as info:
        importlib.import_module(tool).main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith(f"usage: {tool}.py")
    for word in words:
        assert word in out, word
