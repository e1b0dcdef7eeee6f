"""datasets/synthetic.py: every layout parses back with the expected counts, images decode, a seed gives
identical files, identity is visible across cameras, and the command line writes a data set."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datasets import DATASET_NAMES, build_dataset, synthetic

IDS, PER_ID, CAMERAS = 6, 4, 2
MARKET_STYLE = ("market1501", "dukemtmc", "msmt17", "veri776", "npdetected", "nplabeled")
# (width, height) and format of the images of each data set
IMAGE_SPECS = {"market1501": ((64, 128), "JPEG"), "dukemtmc": ((64, 128), "JPEG"), "msmt17": ((64, 128), "JPEG"),
               "npdetected": ((64, 128), "PNG"), "nplabeled": ((64, 128), "PNG"), "veri776": ((128, 128), "JPEG"),
               "vehicleid": ((128, 128), "JPEG"), "car196": ((192, 128), "JPEG"), "cub200": ((128, 128), "JPEG"),
               "university1652": ((128, 128), "JPEG"), "custom": ((64, 128), "JPEG")}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """All eleven layouts (market-style MSMT17 and custom) under one root, the official MSMT17 layout under another."""
    root, official = tmp_path_factory.mktemp("synthetic"), tmp_path_factory.mktemp("msmt_official")
    for name in synthetic.NAMES:
        synthetic.generate(name, str(root), ids=IDS, images_per_id=PER_ID, cameras=CAMERAS)
    synthetic.generate("msmt17", str(official), ids=IDS, images_per_id=PER_ID, cameras=CAMERAS, layout="official")
    return str(root), str(official)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def raw_id(path):
    return int(os.path.basename(path).split("_")[0])


def test_names_match_the_parsers(roots):
    """Every parser's dataset is generated, in the folder that parser reads, with a training split."""
    assert synthetic.NAMES == DATASET_NAMES
    for name in DATASET_NAMES:
        folder = os.path.join(roots[0], synthetic.FOLDERS[name])
        ds = build_dataset(name, folder if name == "custom" else roots[0])
        assert ds.root == folder and os.path.isdir(folder) and len(ds.train) > 0, name


@pytest.mark.parametrize("name", MARKET_STYLE)
def test_market_style_round_trip(roots, name):
    ds = build_dataset(name, roots[0])
    assert ds.family == "reid" and ds.root == os.path.join(roots[0], synthetic.FOLDERS[name])
    assert ds.num_classes == IDS and len(ds.train) == IDS * PER_ID
    assert sorted({label for _, label, _ in ds.train}) == list(range(IDS))
    assert {cam for _, _, cam in ds.train} == set(range(CAMERAS))
    # one query per (test id, camera), from ids disjoint from the training ids
    assert len(ds.query) == IDS * CAMERAS and len({(p, c) for _, p, c in ds.query}) == IDS * CAMERAS
    train_ids, test_ids = {raw_id(p) for p, _, _ in ds.train}, {p for _, p, _ in ds.query}
    assert len(test_ids) == IDS and not train_ids & test_ids
    gallery_ids = [p for _, p, _ in ds.gallery]
    expected = {"market1501": IDS * 2 + 2, "dukemtmc": IDS * 2 + 1, "veri776": IDS * PER_ID}.get(name, IDS * 2)
    assert len(ds.gallery) == expected
    assert test_ids <= set(gallery_ids)
    for _, pid, cam in ds.query:  # every query has a true match in another camera
        assert any(gp == pid and gc != cam for _, gp, gc in ds.gallery)


def test_market_junk_and_distractors(roots):
    test_dir = os.path.join(roots[0], "market1501", "bounding_box_test")
    names = os.listdir(test_dir)
    assert sum(n.startswith("-1_c") for n in names) == 2  # junk: on disk, dropped by the parser
    assert sum(n.startswith("0000_c") for n in names) == 2  # distractors: kept in the gallery
    ds = build_dataset("market1501", roots[0])
    assert sum(p == 0 for _, p, _ in ds.gallery) == 2 and all(p != -1 for _, p, _ in ds.gallery)
    assert all(not n.startswith(("-1_", "0000_")) for n in os.listdir(os.path.join(roots[0], "market1501", "query")))


def test_veri_query_images_are_also_in_image_test(roots):
    folder = os.path.join(roots[0], "VeRi")
    query = set(os.listdir(os.path.join(folder, "image_query")))
    assert query <= set(os.listdir(os.path.join(folder, "image_test")))
    with open(os.path.join(folder, "name_query.txt")) as f:
        assert set(f.read().split()) == query


def test_msmt17_official_layout(roots):
    folder = os.path.join(roots[1], "MSMT17")
    for name in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt"):
        assert os.path.isfile(os.path.join(folder, name))
    with open(os.path.join(folder, "list_train.txt")) as f:
        rel, pid = f.readline().split()
    assert rel.startswith(f"{int(pid):04d}/") and os.path.isfile(os.path.join(folder, "train", rel))
    assert len(os.path.basename(rel).split("_")) == 6
    ds = build_dataset("msmt17", roots[1])
    assert ds.num_classes == IDS and len(ds.train) == IDS * PER_ID  # list_train + list_val
    assert {cam for _, _, cam in ds.train} == set(range(CAMERAS))
    assert len(ds.query) == IDS * CAMERAS and len(ds.gallery) == IDS * (PER_ID - CAMERAS)


def test_vehicleid_lists(roots):
    split = os.path.join(roots[0], "VehicleID_V1.0", "train_test_split")
    ids = {}
    for size in (800, 1600, 2400):
        with open(os.path.join(split, f"test_list_{size}.txt")) as f:
            lines = [line.split() for line in f]
        assert all(len(name) == 7 and name.isdigit() for name, _ in lines)
        ids[size] = {vid for _, vid in lines}
    assert ids[800] < ids[1600] < ids[2400] and [len(ids[s]) for s in (800, 1600, 2400)] == [2, 4, 6]
    ds = build_dataset("vehicleid", roots[0])
    assert ds.num_classes == IDS and len(ds.train) == IDS * PER_ID and {c for _, _, c in ds.train} == {0}
    with open(os.path.join(split, "train_list.txt")) as f:
        assert not {line.split()[1] for line in f} & ids[2400]
    query, gallery = ds.make_trial(800, seed=0)
    assert len(gallery) == 2 and len(query) == 2 * (PER_ID - 1)


@pytest.mark.parametrize("name", ["car196", "cub200"])
def test_metric_class_split(roots, name):
    ds = build_dataset(name, roots[0])
    assert ds.family == "metric" and ds.num_classes == IDS
    assert len(ds.train) == len(ds.test) == IDS * PER_ID
    assert sorted({label for _, label, _ in ds.test}) == list(range(IDS))
    assert not {p for p, _, _ in ds.train} & {p for p, _, _ in ds.test}


def test_cars_annotations_mat(roots):
    folder = os.path.join(roots[0], "CARS")
    mat = scipy.io.loadmat(os.path.join(folder, "cars_annos.mat"))
    ann = mat["annotations"]
    assert ann.shape == (1, 2 * IDS * PER_ID)
    assert ann.dtype.names == ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    assert mat["class_names"].shape == (1, 2 * IDS)
    first = ann[0, 0]
    assert first["relative_im_path"][0] == "car_ims/000001.jpg" and int(first["class"][0, 0]) == 1
    assert sorted({int(a["class"][0, 0]) for a in ann[0]}) == list(range(1, 2 * IDS + 1))
    for a in ann[0]:
        x1, y1, x2, y2 = (int(a[k][0, 0]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
        assert 1 <= x1 < x2 <= 192 and 1 <= y1 < y2 <= 128
        assert os.path.isfile(os.path.join(folder, a["relative_im_path"][0]))


def test_university_splits(roots):
    folder = os.path.join(roots[0], "University-Release")
    for view in ("street", "google"):
        assert len(os.listdir(os.path.join(folder, "train", view))) == IDS
    ds = build_dataset("university1652", roots[0])
    assert ds.family == "university" and ds.num_classes == IDS
    assert sum(c == 0 for _, _, c in ds.train) == IDS and sum(c == 1 for _, _, c in ds.train) == IDS * PER_ID
    query, gallery = ds.make_split("satellite2drone")
    assert len(query) == IDS and len(gallery) == IDS * PER_ID
    query, gallery = ds.make_split("drone2satellite")
    assert len(query) == IDS * PER_ID and len(gallery) == IDS + 1  # one distractor site
    assert {label for _, label, _ in query} < {label for _, label, _ in gallery}
    assert not {label for _, label, _ in query} & {int(os.path.basename(os.path.dirname(p))) for p, _, _ in ds.train}


@pytest.mark.parametrize("name", synthetic.NAMES)
def test_images_decode(roots, name):
    folder = os.path.join(roots[0], synthetic.FOLDERS[name])
    images = [f for f in files_under(folder) if f.endswith((".jpg", ".jpeg", ".png"))]
    size, fmt = IMAGE_SPECS[name]
    assert images and all(f.endswith(".png") == (fmt == "PNG") for f in images)
    for rel in images[:: max(1, len(images) // 12)]:
        with Image.open(os.path.join(folder, rel)) as img:
            img.load()
            assert (img.size, img.mode, img.format) == (size, "RGB", fmt)


def test_same_seed_identical_files(tmp_path):
    digests = []
    for root, seed in (("a", 0), ("b", 0), ("c", 1)):
        for name in ("market1501", "car196"):
            synthetic.generate(name, str(tmp_path / root), ids=3, images_per_id=2, cameras=2, seed=seed)
        folder = str(tmp_path / root)
        digests.append({f: hashlib.md5(open(os.path.join(folder, f), "rb").read()).hexdigest()
                        for f in files_under(folder)})
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def _colour_layout(path, box, rows):
    """Mean colour of `rows` horizontal bands of `box`, divided by the image's mean colour (undoes a camera cast)."""
    a = np.asarray(Image.open(path).convert("RGB"), np.float32)
    x0, y0, x1, y1 = box
    bands = np.array_split(a[y0:y1, x0:x1], rows, axis=0)
    return (np.stack([b.mean((0, 1)) for b in bands]) / a.mean((0, 1))).ravel()


@pytest.mark.parametrize("name,box,rows", [("market1501", (18, 8, 46, 120), 4), ("veri776", (24, 40, 104, 110), 3)])
def test_identity_visible_across_cameras(tmp_path, name, box, rows):
    """Nearest neighbour on a crude colour layout, across cameras only, finds the identity far above chance."""
    ids = 16
    folder = synthetic.generate(name, str(tmp_path), ids=ids, images_per_id=4, cameras=3, seed=3)
    train = os.path.join(folder, "image_train" if name == "veri776" else "bounding_box_train")
    paths = sorted(os.path.join(train, f) for f in os.listdir(train))
    feats = np.stack([_colour_layout(p, box, rows) for p in paths])
    pids = np.array([raw_id(p) for p in paths])
    cams = np.array([int(os.path.basename(p).split("_")[1][1:].split("s")[0]) for p in paths])
    dist = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    dist[cams[:, None] == cams[None]] = np.inf  # match across cameras only
    top1 = (pids[dist.argmin(1)] == pids).mean()
    assert top1 > 4 / ids, f"{name}: cross-camera top-1 {top1:.2f}, chance {1 / ids:.2f}"


def test_cli_writes_a_dataset(tmp_path):
    cmd = [sys.executable, "-m", "datasets.synthetic", "--dataset", "cub200", "--root", str(tmp_path),
           "--ids", "3", "--images-per-id", "2", "--cameras", "1", "--seed", "5"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert "cub200" in out.stdout
    with open(tmp_path / "CUB_200_2011" / "images.txt") as f:
        assert len(f.readlines()) == 2 * 3 * 2
    # a second run refuses to write over the first
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_cli_all_and_argument_errors(tmp_path, capsys):
    assert synthetic.main(["--dataset", "npdetected", "--root", str(tmp_path), "--cameras", "3"]) == 2
    assert "at most 2 cameras" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown dataset"):
        synthetic.generate("market", str(tmp_path))
    with pytest.raises(ValueError, match="images_per_id >= 2"):
        synthetic.generate("market1501", str(tmp_path), images_per_id=1)
