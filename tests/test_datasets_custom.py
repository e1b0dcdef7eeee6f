"""datasets/custom.py (`--dataset custom`): the three split layouts, optional cameras, evaluation-only
data and every user mistake's message (tiny hand-built trees of empty files; parsers never open images)."""
import os

import pytest

from datasets import DatasetError, build_dataset
from datasets.custom import NO_CAMERA
from tests.helpers import rel, seeded_dbn, touch, write


def folder_tree(root):
    touch(root, "train/0003/a_c1.jpg", "train/0003/b_c2.png", "train/0010/x.jpg",
          "query/0005/q_c1_01.jpg", "query/0007/frame-c2.jpg",
          "gallery/0005/g_c1.jpg", "gallery/0005/g_c3.jpg", "gallery/0007/g.jpg", "gallery/0000/d_c2.jpg",
          "gallery/0007/notes.txt")
    return root


def test_identity_folders_with_optional_cameras(tmp_path):
    root = folder_tree(str(tmp_path))
    data = build_dataset("custom", root)
    assert (data.name, data.family, data.root) == ("custom", "reid", root)
    assert rel(data.train, root) == [("train/0003/a_c1.jpg", 0, 1), ("train/0003/b_c2.png", 0, 2),
                                     ("train/0010/x.jpg", 1, NO_CAMERA["train"])]
    assert data.num_classes == 2
    assert rel(data.query, root) == [("query/0005/q_c1_01.jpg", 5, 1), ("query/0007/frame-c2.jpg", 7, 2)]
    assert rel(data.gallery, root) == [("gallery/0000/d_c2.jpg", 0, 2), ("gallery/0005/g_c1.jpg", 5, 1),
                                       ("gallery/0005/g_c3.jpg", 5, 3), ("gallery/0007/g.jpg", 7, NO_CAMERA["gallery"])]
    assert "count as seen by different cameras" in data.summary()


def test_market_names_and_trailing_slash(tmp_path):
    root = str(tmp_path)
    touch(root, "train/0002_c1s1_000451_03.jpg", "train/0002_c3s1_000551_01.jpg", "query/0004_c2s1_000001_00.jpg",
          "gallery/0004_c1s1_000002_00.jpg", "gallery/-1_c1s1_000003_00.jpg")
    data = build_dataset("custom", root + os.sep)
    assert data.root == root
    assert rel(data.train, root) == [("train/0002_c1s1_000451_03.jpg", 0, 1), ("train/0002_c3s1_000551_01.jpg", 0, 3)]
    assert rel(data.gallery, root) == [("gallery/0004_c1s1_000002_00.jpg", 4, 1)]  # id -1 is junk
    assert "camera id" not in data.summary()


def test_list_files_win_over_folders_and_cameras_are_optional(tmp_path):
    root = folder_tree(str(tmp_path))
    touch(root, "imgs/p1.jpg", "imgs/p2.jpg", "imgs/p3.jpg")
    write(os.path.join(root, "query.txt"), ["# query list", "imgs/p1.jpg 12 4", ""])
    write(os.path.join(root, "gallery.txt"), ["imgs/p2.jpg 12", "imgs/p3.jpg 12 4"])
    data = build_dataset("custom", root)
    assert rel(data.query, root) == [("imgs/p1.jpg", 12, 4)]
    assert rel(data.gallery, root) == [("imgs/p2.jpg", 12, NO_CAMERA["gallery"]), ("imgs/p3.jpg", 12, 4)]
    assert data.num_classes == 2  # train still from its folder


def test_evaluation_only(tmp_path):
    root = str(tmp_path)
    touch(root, "query/0001/a.jpg", "gallery/0001/b.jpg")
    data = build_dataset("custom", root)
    assert (data.train, data.num_classes) == ([], 0)
    # no camera anywhere: query -1 and gallery -2, so the query's gallery match is not junk
    assert data.query[0][2] != data.gallery[0][2]
    summary = data.summary()
    assert "no train split: evaluation only" in summary
    assert summary.count("count as seen by different cameras") == 1
    assert [line.split() for line in summary.splitlines()[2:4]] == [["query", "1", "1", "-"], ["gallery", "1", "1", "-"]]


def error(root):
    with pytest.raises(DatasetError) as err:
        build_dataset("custom", str(root))
    return str(err.value)


def test_missing_root_and_missing_query(tmp_path):
    message = error(tmp_path / "nowhere")
    assert f"dataset folder not found: {tmp_path / 'nowhere'}" in message and "train.txt, query.txt" in message
    touch(str(tmp_path), "train/0001/a.jpg", "gallery/0001/b.jpg")
    message = error(tmp_path)
    assert f"query split (folder or query.txt) not found: {tmp_path / 'query'}" in message
    assert "expected layout (custom)" in message


def test_empty_split_names_the_folder_and_the_list(tmp_path):
    root = str(tmp_path)
    touch(root, "query/0001/a.jpg", "gallery/readme.md")
    assert error(root) == f"empty split: no images (.jpg/.jpeg/.png) in {tmp_path / 'gallery'}"
    write(os.path.join(root, "gallery.txt"), ["", "# nothing yet"])
    assert error(root) == f"empty split: no images (.jpg/.jpeg/.png) in {tmp_path / 'gallery.txt'}"


def test_id_only_in_query_names_the_file_and_the_line(tmp_path):
    root = str(tmp_path)
    touch(root, "query/0001/a.jpg", "query/0002/b.jpg", "gallery/0001/c.jpg")
    message = error(root)
    assert message.startswith(f"{tmp_path / 'query' / '0002' / 'b.jpg'}: id 2 is in the query but has no image "
                              f"in the gallery ({tmp_path / 'gallery'})")
    touch(root, "i/a.jpg", "i/b.jpg")
    write(os.path.join(root, "query.txt"), ["i/a.jpg 1", "", "i/b.jpg 9 1"])
    assert error(root).startswith(f"{tmp_path / 'query.txt'}, line 3: id 9 is in the query but has no image")


@pytest.mark.parametrize("line,expected", [
    ("i/a.jpg", "expected 'relative/path.jpg pid [camid]' (3 fields at most; paths cannot hold spaces), got 'i/a.jpg'"),
    ("my photo.jpg 3 1 x", "expected 'relative/path.jpg pid [camid]'"),
    ("i/a.jpg seven", "person id must be an integer, got 'seven'"),
    ("i/a.jpg 7 cam1", "camera id must be an integer, got 'cam1'"),
    ("i/a.txt 7", "not an image file (.jpg/.jpeg/.png): i/a.txt"),
])
def test_list_line_that_does_not_parse(tmp_path, line, expected):
    root = str(tmp_path)
    touch(root, "i/a.jpg", "i/a.txt", "gallery/0007/g.jpg")
    write(os.path.join(root, "query.txt"), ["i/a.jpg 7", line])
    assert error(root).startswith(f"{tmp_path / 'query.txt'}, line 2: {expected}")


def test_missing_listed_image(tmp_path):
    root = str(tmp_path)
    touch(root, "i/a.jpg", "gallery/0007/g.jpg")
    write(os.path.join(root, "query.txt"), ["i/a.jpg 7", "i/gone.jpg 7"])
    assert error(root) == f"{tmp_path / 'query.txt'}, line 2: listed image not found: {tmp_path / 'i' / 'gone.jpg'}"


def test_folder_mistakes(tmp_path):
    root = str(tmp_path)
    touch(root, "query/alice/a.jpg", "gallery/0001/b.jpg")
    assert error(root).startswith(f"identity folder name is not an integer person id: {tmp_path / 'query' / 'alice'}")
    os.rename(tmp_path / "query", tmp_path / "old")
    touch(root, "query/0001/a.jpg", "query/stray.jpg")
    assert error(root).startswith(f"{tmp_path / 'query'} holds both identity sub-folders and images (stray.jpg, ...)")
    os.remove(tmp_path / "query" / "0001" / "a.jpg")
    os.rmdir(tmp_path / "query" / "0001")
    assert error(root).startswith(f"file name does not parse: {tmp_path / 'query' / 'stray.jpg'} (expected "
                                  "Market-1501 names like 0002_c1s1_000451_03.jpg")


def test_train_py_refuses_evaluation_only_data(tmp_path):
    import train
    touch(str(tmp_path), "query/0001/a.jpg", "gallery/0001/b.jpg")
    args = train.parse_args(["--dataset", "custom", "--dataset-root", str(tmp_path), "--pretrained", "none",
                             "--device", "cpu", "--dry-run"])
    with pytest.raises(DatasetError, match=f"{tmp_path} has no train split \\(train/ or train.txt\\) to train on"):
        train.main(args)


@pytest.mark.parametrize("layout", ["market", "folders", "lists"])
def test_synthetic_custom_layouts_round_trip(tmp_path, layout):
    from datasets.synthetic import generate
    folder = generate("custom", str(tmp_path), ids=3, images_per_id=4, cameras=2, layout=layout)
    assert folder == str(tmp_path / "custom")
    data = build_dataset("custom", folder)
    assert data.num_classes == 3 and len(data.train) == 12
    assert len(data.query) == 6 and len(data.gallery) == 6
    assert {cam for _, _, cam in data.train} == {1, 2}
    for _, pid, cam in data.query:  # a true match in another camera
        assert any(gp == pid and gc != cam for _, gp, gc in data.gallery)
    assert os.path.isfile(os.path.join(folder, "query.txt")) == (layout == "lists")


def test_synthetic_layout_must_fit_the_dataset(tmp_path):
    from datasets.synthetic import generate
    with pytest.raises(ValueError, match="layout 'official' does not apply to custom; choose one of market, "
                                         "folders, lists"):
        generate("custom", str(tmp_path), layout="official")
    with pytest.raises(ValueError, match="layout 'folders' does not apply to market1501; choose one of market"):
        generate("market1501", str(tmp_path), layout="folders")


def test_test_custom_evaluates_query_and_gallery_without_train(tmp_path, capsys):
    import shutil

    import torch

    from datasets.synthetic import generate
    from evaluation import cli as eval_cli
    folder = generate("custom", str(tmp_path), ids=3, images_per_id=4, cameras=2, layout="lists")
    os.remove(os.path.join(folder, "train.txt"))
    for name in ("query.txt", "gallery.txt"):  # drop the camera column: nothing is junk then
        path = os.path.join(folder, name)
        lines = [" ".join(line.split()[:2]) for line in open(path)]
        write(path, lines)
    shutil.rmtree(os.path.join(folder, "images", "0001"))  # a training identity, listed nowhere now
    weights = str(tmp_path / "w.pth")
    torch.save(seeded_dbn().state_dict(), weights)  # bare weights: the size comes from the flags
    metrics = eval_cli.main("custom", ["--weights", weights, "--dataset-root", folder, "--img-height", "64",
                                         "--img-width", "32", "--num-workers", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.count("count as seen by different cameras") == 1 and "no train split" in out
    assert (metrics["num_query"], metrics["num_gallery"], metrics["left_out"]) == (6, 6, 0)
    assert out.strip().splitlines()[-1].startswith("top1:")
