"""datasets/: the parsers on tiny hand-built layouts with the official file names (empty files: parsers never open images)."""
import os

import numpy as np
import pytest

from datasets import DATASET_NAMES, DatasetError, build_dataset
from datasets.car196 import read_annotations
from tests.helpers import rel, touch, write


def market_tree(root, folder="market1501", splits=("bounding_box_train", "query", "bounding_box_test"),
                names=None):
    names = names or {
        0: ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "0007_c2s1_000701_02.jpg",
            "0010_c6s2_001001_01.jpg", "Thumbs.db"],
        1: ["0002_c2s1_000801_00.jpg", "0011_c5s1_000201_00.jpg"],
        2: ["-1_c1s1_000401_03.jpg", "0000_c2s1_000151_01.jpg", "0002_c4s1_000901_02.jpg",
            "0011_c1s3_000301_01.jpg", "0011_c6s1_000302_01.jpg"],
    }
    for k, split in enumerate(splits):
        touch(root, *(os.path.join(folder, split, name) for name in names[k]))
    return os.path.join(root, folder)


def test_names_and_unknown_dataset(tmp_path):
    assert DATASET_NAMES == ("market1501", "dukemtmc", "msmt17", "veri776", "vehicleid", "car196", "cub200",
                             "university1652", "npdetected", "nplabeled", "custom")
    assert issubclass(DatasetError, ValueError)
    with pytest.raises(DatasetError) as err:
        build_dataset("market", str(tmp_path))
    assert "unknown dataset 'market'" in str(err.value)
    assert "market1501, dukemtmc, msmt17, veri776, vehicleid, car196, cub200, university1652, npdetected, " \
           "nplabeled, custom" in str(err.value)


def test_market1501_labels_cameras_junk_and_distractors(tmp_path):
    folder = market_tree(str(tmp_path))
    data = build_dataset("market1501", str(tmp_path))
    assert (data.name, data.family, data.root, data.test) == ("market1501", "reid", folder, None)
    assert rel(data.train, folder) == [
        ("bounding_box_train/0002_c1s1_000451_03.jpg", 0, 0), ("bounding_box_train/0002_c3s1_000551_01.jpg", 0, 2),
        ("bounding_box_train/0007_c2s1_000701_02.jpg", 1, 1), ("bounding_box_train/0010_c6s2_001001_01.jpg", 2, 5)]
    assert data.num_classes == 3
    assert rel(data.query, folder) == [("query/0002_c2s1_000801_00.jpg", 2, 1), ("query/0011_c5s1_000201_00.jpg", 11, 4)]
    # id -1 (junk) dropped, id 0 (distractor) kept with its raw id
    assert rel(data.gallery, folder) == [
        ("bounding_box_test/0000_c2s1_000151_01.jpg", 0, 1), ("bounding_box_test/0002_c4s1_000901_02.jpg", 2, 3),
        ("bounding_box_test/0011_c1s3_000301_01.jpg", 11, 0), ("bounding_box_test/0011_c6s1_000302_01.jpg", 11, 5)]
    lines = data.summary().splitlines()
    assert "3 training classes" in lines[0]
    assert lines[2].split() == ["train", "3", "4", "4"]
    assert lines[3].split() == ["query", "2", "2", "2"]
    assert lines[4].split() == ["gallery", "3", "4", "4"]


@pytest.mark.parametrize("name, folder, splits, names, cams", [
    ("dukemtmc", "DukeMTMC-reID", ("bounding_box_train", "query", "bounding_box_test"),
     ["0005_c2_f0046985.jpg", "0001_c8_f0001234.jpg"], [1, 7]),
    ("msmt17", "MSMT17", ("bounding_box_train", "query", "bounding_box_test"),
     ["0003_c01_0001.jpg", "0001_c15_0002.jpg"], [0, 14]),
    ("veri776", "VeRi", ("image_train", "image_query", "image_test"),
     ["0001_c001_00016450_0.jpg", "0004_c020_00000001_1.jpg"], [0, 19]),
    ("npdetected", "cuhk03-np/detected", ("bounding_box_train", "query", "bounding_box_test"),
     ["0001_c1_1.png", "0003_c2_7.png"], [0, 1]),
    ("nplabeled", "cuhk03-np/labeled", ("bounding_box_train", "query", "bounding_box_test"),
     ["0001_c1_1.png", "0003_c2_7.jpeg"], [0, 1]),
])
def test_market_style_datasets(tmp_path, name, folder, splits, names, cams):
    market_tree(str(tmp_path), folder, splits, {0: names, 1: names[:1], 2: names})
    data = build_dataset(name, str(tmp_path))
    raw = [int(n.split("_")[0]) for n in names]
    expected_labels = [sorted(raw).index(r) for r in raw]
    got = sorted(data.train)
    assert [os.path.basename(p) for p, _, _ in got] == sorted(names)
    by_name = {os.path.basename(p): (label, camid) for p, label, camid in data.train}
    assert [by_name[n] for n in names] == list(zip(expected_labels, cams))
    assert data.num_classes == 2
    assert [(os.path.basename(p), pid, camid) for p, pid, camid in data.query] == [(names[0], raw[0], cams[0])]
    assert sorted((pid, camid) for _, pid, camid in data.gallery) == sorted(zip(raw, cams))
    assert data.root == os.path.join(str(tmp_path), folder)


def test_msmt17_official_layout(tmp_path):
    root = tmp_path / "MSMT17"
    train = ["0000/0000_000_01_0303morning_0015_0.jpg", "0000/0000_001_05_0303morning_0020_1.jpg",
             "0002/0002_000_15_0303noon_0101_0.jpg"]
    val = ["0001/0001_000_03_0303afternoon_0030_0.jpg"]
    query = ["0000/0000_000_02_0303morning_0015_0.jpg"]
    gallery = ["0000/0000_003_11_0304morning_0035_0.jpg", "0004/0004_000_07_0304noon_0400_0.jpg"]
    touch(str(root / "train"), *train, *val)
    touch(str(root / "test"), *query, *gallery)
    # the official lists: '<path> <pid>'; list_val extends the training set
    write(str(root / "list_train.txt"), [f"{p} {int(p[:4])}" for p in train])
    write(str(root / "list_val.txt"), [f"{p} {int(p[:4])}" for p in val])
    write(str(root / "list_query.txt"), [f"{p} {int(p[:4])}" for p in query])
    write(str(root / "list_gallery.txt"), [f"{p} {int(p[:4])}" for p in gallery])
    data = build_dataset("msmt17", str(tmp_path))
    assert rel(data.train, str(root)) == [
        ("train/" + train[0], 0, 0), ("train/" + train[1], 0, 4), ("train/" + train[2], 2, 14), ("train/" + val[0], 1, 2)]
    assert data.num_classes == 3
    assert rel(data.query, str(root)) == [("test/" + query[0], 0, 1)]
    assert rel(data.gallery, str(root)) == [("test/" + gallery[0], 0, 10), ("test/" + gallery[1], 4, 6)]

    # a list line naming a missing image: the list file and the line number
    write(str(root / "list_gallery.txt"), [f"{p} {int(p[:4])}" for p in gallery] + ["0004/0004_000_07_missing_0_0.jpg 4"])
    with pytest.raises(DatasetError) as err:
        build_dataset("msmt17", str(tmp_path))
    assert f"{root / 'list_gallery.txt'}, line 3: listed image not found: {root / 'test' / '0004'}" in str(err.value)
    # a malformed line
    write(str(root / "list_gallery.txt"), [gallery[0]])
    with pytest.raises(DatasetError) as err:
        build_dataset("msmt17", str(tmp_path))
    assert f"{root / 'list_gallery.txt'}, line 1: expected" in str(err.value)
    # official layout detected but a list missing
    os.remove(root / "list_val.txt")
    with pytest.raises(DatasetError) as err:
        build_dataset("msmt17", str(tmp_path))
    assert f"dataset file not found: {root / 'list_val.txt'}" in str(err.value)


def vehicleid_tree(root, num_ids=30):
    base = os.path.join(root, "VehicleID_V1.0")
    train = [(f"{i:07d}", vid) for i, vid in enumerate([5, 5, 2, 9, 2, 2], 1)]
    test = [(f"{100 + i:07d}", 1000 + i // 3) for i in range(num_ids * 3)]  # 3 images per id
    touch(base, *(f"image/{name}.jpg" for name, _ in train + test))
    write(os.path.join(base, "train_test_split", "train_list.txt"), [f"{n} {v}" for n, v in train])
    write(os.path.join(base, "train_test_split", "test_list_800.txt"), [f"{n} {v}" for n, v in test])
    return base, train, test


def test_vehicleid_train_and_trials(tmp_path):
    base, train, test = vehicleid_tree(str(tmp_path))
    data = build_dataset("vehicleid", str(tmp_path))
    assert data.query is None and data.gallery is None and data.family == "reid"
    assert rel(data.train, base) == [(f"image/{n}.jpg", {2: 0, 5: 1, 9: 2}[v], 0) for n, v in train]
    assert data.num_classes == 3

    query, gallery = data.make_trial(800, seed=0)
    assert (query, gallery) == data.make_trial(800, seed=0)  # deterministic per seed
    assert len(gallery) == 30 and sorted(vid for _, vid, _ in gallery) == list(range(1000, 1030))
    assert {camid for _, _, camid in gallery} == {1} and {camid for _, _, camid in query} == {0}
    assert len(query) == 60
    expected = sorted((os.path.join(base, "image", f"{n}.jpg"), v) for n, v in test)
    assert sorted((p, v) for p, v, _ in query + gallery) == expected
    others = [data.make_trial("800", seed)[1] for seed in range(1, 4)]
    assert any(g != gallery for g in others)  # another seed draws other gallery images
    assert "test_list_800" in data.summary() and "test_list_1600" not in data.summary()

    with pytest.raises(DatasetError) as err:
        data.make_trial(900, 0)
    assert "unknown VehicleID test size 900; choose one of 800, 1600, 2400" in str(err.value)
    with pytest.raises(DatasetError) as err:
        data.make_trial(1600, 0)
    assert f"dataset file not found: {os.path.join(base, 'train_test_split', 'test_list_1600.txt')}" in str(err.value)


def test_vehicleid_list_errors(tmp_path):
    base, train, _ = vehicleid_tree(str(tmp_path), num_ids=1)
    list_path = os.path.join(base, "train_test_split", "train_list.txt")
    write(list_path, [f"{n} {v}" for n, v in train] + ["", "0000099 3"])
    with pytest.raises(DatasetError) as err:
        build_dataset("vehicleid", str(tmp_path))
    assert str(err.value) == (f"{list_path}, line 8: listed image not found: "
                              f"{os.path.join(base, 'image', '0000099.jpg')}")
    write(list_path, [f"{n} {v}" for n, v in train[:2]] + ["0000003 two"])
    with pytest.raises(DatasetError) as err:
        build_dataset("vehicleid", str(tmp_path))
    assert str(err.value) == f"{list_path}, line 3: vehicle id must be an integer, got 'two'"
    write(list_path, [])
    with pytest.raises(DatasetError) as err:
        build_dataset("vehicleid", str(tmp_path))
    assert str(err.value) == f"empty split: no images listed in {list_path}"


def cars_mat(path, rows):
    """A cars_annos.mat like the Stanford file: struct array `annotations` (1, N) and `class_names`."""
    from scipy.io import savemat
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (im_path, cls, test) in enumerate(rows):
        box = [np.array([[v]], dtype=np.uint16) for v in (10, 20, 110, 80)]
        ann[0, i] = (im_path, *box, np.array([[cls]], dtype=np.uint8), np.array([[test]], dtype=np.uint8))
    names = np.empty((1, 4), dtype=object)
    names[0, :] = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Acura TL Type-S 2008"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    savemat(path, {"annotations": ann, "class_names": names})


def test_car196_mat_and_class_split(tmp_path):
    base = tmp_path / "CARS"
    rows = [(f"car_ims/{i:06d}.jpg", cls, i % 2) for i, cls in enumerate([1, 1, 2, 3, 4, 4, 3, 2], 1)]
    cars_mat(str(base / "cars_annos.mat"), rows)
    touch(str(base), *(r[0] for r in rows))
    data = build_dataset("car196", str(tmp_path))
    assert data.family == "metric" and data.query is None and data.gallery is None
    # classes 1..2 train (labels 0..1), 3..4 test; the `test` flag is ignored
    assert rel(data.train, str(base)) == [("car_ims/000001.jpg", 0, 0), ("car_ims/000002.jpg", 0, 0),
                                          ("car_ims/000003.jpg", 1, 0), ("car_ims/000008.jpg", 1, 0)]
    assert data.num_classes == 2
    assert rel(data.test, str(base)) == [("car_ims/000004.jpg", 0, 0), ("car_ims/000005.jpg", 1, 0),
                                         ("car_ims/000006.jpg", 1, 0), ("car_ims/000007.jpg", 0, 0)]
    lines = data.summary().splitlines()
    assert lines[2].split() == ["train", "2", "4", "-"] and lines[3].split() == ["test", "2", "4", "-"]

    os.remove(base / "car_ims" / "000006.jpg")
    with pytest.raises(DatasetError) as err:
        build_dataset("car196", str(tmp_path))
    assert f"annotation 6: listed image not found: {base / 'car_ims' / '000006.jpg'}" in str(err.value)


def test_car196_one_element_struct_array(tmp_path):
    path = str(tmp_path / "cars_annos.mat")
    cars_mat(path, [("car_ims/000001.jpg", 7, 1)])
    assert read_annotations(path) == [("car_ims/000001.jpg", 7)]
    with open(path, "wb") as f:
        f.write(b"not a mat file")
    with pytest.raises(DatasetError, match="cannot read .*cars_annos.mat as a MATLAB file"):
        read_annotations(path)


def test_cub200(tmp_path):
    base = tmp_path / "CUB_200_2011"
    images = ["001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
              "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
              "003.Sooty_Albatross/Sooty_Albatross_0031_1066.jpg",
              "004.Groove_billed_Ani/Groove_Billed_Ani_0010_1597.jpg",
              "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg"]
    classes = [1, 2, 3, 4, 1]
    touch(str(base / "images"), *images)
    write(str(base / "images.txt"), [f"{i} {p}" for i, p in enumerate(images, 1)])
    write(str(base / "image_class_labels.txt"), [f"{i} {c}" for i, c in enumerate(classes, 1)])
    data = build_dataset("cub200", str(tmp_path))
    assert rel(data.train, str(base / "images")) == [(images[0], 0, 0), (images[1], 1, 0), (images[4], 0, 0)]
    assert rel(data.test, str(base / "images")) == [(images[2], 0, 0), (images[3], 1, 0)]
    assert data.num_classes == 2

    write(str(base / "images.txt"), [f"{i} {p}" for i, p in enumerate(images, 1)] + ["6 004.Groove_billed_Ani/x.jpg"])
    with pytest.raises(DatasetError) as err:
        build_dataset("cub200", str(tmp_path))
    assert f"{base / 'images.txt'}, line 6: image id 6 has no line in" in str(err.value)
    write(str(base / "image_class_labels.txt"), [f"{i} {c}" for i, c in enumerate(classes + [4], 1)])
    with pytest.raises(DatasetError) as err:
        build_dataset("cub200", str(tmp_path))
    assert f"{base / 'images.txt'}, line 6: listed image not found: {base / 'images' / '004.Groove_billed_Ani'}" \
        in str(err.value)


def university_tree(root):
    base = os.path.join(root, "University-Release")
    touch(base, "train/satellite/0839/0839.jpg", "train/satellite/0001/0001.jpg",
          "train/drone/0839/image-01.jpeg", "train/drone/0839/image-02.jpeg", "train/drone/0001/image-01.jpeg",
          "train/street/0839/0.jpg", "train/google/0001/0.jpg",
          "test/query_satellite/0700/0700.jpg", "test/gallery_drone/0700/image-01.jpeg",
          "test/gallery_drone/0950/image-01.jpeg", "test/query_drone/0700/image-01.jpeg",
          "test/query_drone/0700/image-02.jpeg", "test/gallery_satellite/0700/0700.jpg",
          "test/gallery_satellite/0950/0950.jpg", "test/query_street/0700/0.jpg")
    return base


def test_university1652(tmp_path):
    from datasets.university1652 import VIEWS
    assert VIEWS == {"satellite": 0, "drone": 1, "street": 2, "google": 3}
    base = university_tree(str(tmp_path))
    data = build_dataset("university1652", str(tmp_path))
    assert data.family == "university" and data.query is None and data.test is None
    # satellite (camid 0) and drone (camid 1) only; labels by building id (0001 -> 0, 0839 -> 1)
    assert rel(data.train, base) == [
        ("train/satellite/0001/0001.jpg", 0, 0), ("train/satellite/0839/0839.jpg", 1, 0),
        ("train/drone/0001/image-01.jpeg", 0, 1), ("train/drone/0839/image-01.jpeg", 1, 1),
        ("train/drone/0839/image-02.jpeg", 1, 1)]
    assert data.num_classes == 2
    query, gallery = data.make_split("satellite2drone")
    assert rel(query, base) == [("test/query_satellite/0700/0700.jpg", 700, 0)]
    assert rel(gallery, base) == [("test/gallery_drone/0700/image-01.jpeg", 700, 1),
                                  ("test/gallery_drone/0950/image-01.jpeg", 950, 1)]
    query, gallery = data.make_split("drone2satellite")
    assert rel(query, base) == [("test/query_drone/0700/image-01.jpeg", 700, 1),
                                ("test/query_drone/0700/image-02.jpeg", 700, 1)]
    assert rel(gallery, base) == [("test/gallery_satellite/0700/0700.jpg", 700, 0),
                                  ("test/gallery_satellite/0950/0950.jpg", 950, 0)]
    assert "test gallery_drone" in data.summary()
    with pytest.raises(DatasetError, match="unknown University-1652 direction 'street2drone'; choose one of "
                                           "satellite2drone, drone2satellite"):
        data.make_split("street2drone")

    touch(base, "test/gallery_drone/building_1/x.jpeg")
    with pytest.raises(DatasetError, match="folder name does not parse: .*gallery_drone/building_1"):
        build_dataset("university1652", str(tmp_path)).make_split("satellite2drone")
    os.rename(os.path.join(base, "test", "query_drone"), os.path.join(base, "test", "query-drone"))
    with pytest.raises(DatasetError) as err:
        build_dataset("university1652", str(tmp_path))
    assert f"dataset folder not found: {os.path.join(base, 'test', 'query_drone')}" in str(err.value)


def test_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        build_dataset("dukemtmc", str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"dataset folder not found: {tmp_path / 'DukeMTMC-reID'}\n")
    assert "bounding_box_train/" in message and "query/" in message and "bounding_box_test/" in message

    market_tree(str(tmp_path))
    os.rename(tmp_path / "market1501" / "query", tmp_path / "market1501" / "queries")
    with pytest.raises(DatasetError) as err:
        build_dataset("market1501", str(tmp_path))
    lines = str(err.value).splitlines()
    assert lines[0] == f"dataset folder not found: {tmp_path / 'market1501' / 'query'}"
    assert lines[1:5] == ["expected layout (market1501):", f"  {tmp_path / 'market1501'}/",
                          "    bounding_box_train/  0002_c1s1_000451_03.jpg, ...",
                          "    query/               0002_c1s1_000451_03.jpg, ..."]

    with pytest.raises(DatasetError) as err:
        build_dataset("cub200", str(tmp_path))
    assert "CUB_200_2011" in str(err.value) and "image_class_labels.txt" in str(err.value)


def test_malformed_name_and_empty_split(tmp_path):
    folder = market_tree(str(tmp_path))
    bad = os.path.join(folder, "bounding_box_test", "0002_cam1_000001_01.jpg")
    touch(folder, bad)
    with pytest.raises(DatasetError) as err:
        build_dataset("market1501", str(tmp_path))
    assert str(err.value).startswith(f"file name does not parse: {bad} (expected names like 0002_c1s1_000451_03.jpg")
    os.remove(bad)

    for name in os.listdir(os.path.join(folder, "query")):
        os.remove(os.path.join(folder, "query", name))
    touch(folder, "query/Thumbs.db")  # not an image: the split is still empty
    with pytest.raises(DatasetError) as err:
        build_dataset("market1501", str(tmp_path))
    assert str(err.value) == f"empty split: no images (.jpg/.jpeg/.png) in {os.path.join(folder, 'query')}"


def test_many_files_parse_without_a_check_per_file(tmp_path, monkeypatch):
    """A Market-style folder of 20,000 names parses from one listing, not one file check per name."""
    folder = tmp_path / "MSMT17"
    names = [f"{i // 20:04d}_c{i % 15 + 1:02d}_{i:05d}.jpg" for i in range(20000)]
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (folder / split).mkdir(parents=True)
    for name in names:
        (folder / "bounding_box_train" / name).touch()
    touch(str(folder), "query/0000_c01_0.jpg", "bounding_box_test/0000_c02_0.jpg")
    calls = []
    for fn in ("exists", "isfile", "getsize"):
        real = getattr(os.path, fn)
        monkeypatch.setattr(os.path, fn, lambda *a, _real=real, **k: calls.append(a) or _real(*a, **k))
    data = build_dataset("msmt17", str(tmp_path))
    assert len(calls) < 50
    assert len(data.train) == 20000 and data.num_classes == 1000 and data.train[-1][1:] == (999, 14)


@pytest.mark.parametrize("name, sibling, folder", [
    ("market1501", "Market-1501-v15.09.15", "market1501"), ("msmt17", "MSMT17_V1", "MSMT17"),
    ("msmt17", "MSMT17_V2", "MSMT17"), ("dukemtmc", "dukemtmc-reid", "DukeMTMC-reID"), ("veri776", "veri", "VeRi"),
    ("vehicleid", "vehicleid_v1.0", "VehicleID_V1.0"), ("cub200", "cub_200_2011", "CUB_200_2011"),
    ("university1652", "University-Release-1652", "University-Release"), ("npdetected", "CUHK03-NP", "cuhk03-np"),
])
def test_missing_folder_notices_a_sibling_under_another_name(tmp_path, name, sibling, folder):
    (tmp_path / sibling).mkdir()
    with pytest.raises(DatasetError) as err:
        build_dataset(name, str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"dataset folder not found: {tmp_path / folder}; found {tmp_path / sibling}, which "
                              f"looks like the same folder under another name (as an official download unpacks): "
                              f"rename it to {folder}, e.g. mv ")
    assert "expected layout" in message


def test_dataset_root_that_is_the_dataset_folder_itself(tmp_path):
    root = tmp_path / "market1501"
    root.mkdir()
    with pytest.raises(DatasetError) as err:
        build_dataset("market1501", str(root))
    assert (f"--dataset-root {root} looks like the market1501 folder itself: pass the folder that holds it, "
            f"--dataset-root {tmp_path}") in str(err.value)


# --- each dataset states its protocol (datasets.protocol) ---------------------------------------

def test_each_dataset_states_its_test_protocol(tmp_path):
    from datasets.protocol import TestSplit
    root = str(tmp_path)
    market_tree(root)
    vehicleid_tree(root)
    university_tree(root)
    base = tmp_path / "CARS"
    rows = [(f"car_ims/{i:06d}.jpg", cls, 0) for i, cls in enumerate([1, 1, 2, 3, 4, 4, 3, 2], 1)]
    cars_mat(str(base / "cars_annos.mat"), rows)
    touch(str(base), *(r[0] for r in rows))

    market = build_dataset("market1501", root)
    protocol = market.test_protocol()
    assert (protocol.scoring, protocol.pool) == ("rank", None)
    assert protocol.splits == (TestSplit("market1501", market.query, market.gallery),)
    with pytest.raises(TypeError):  # the options are the dataset's own: a Market-1501 test has no trials
        market.test_protocol(trials=3)

    vehicleid = build_dataset("vehicleid", root)
    assert vehicleid.protocol_options == {"test_size": 800, "trials": 10}
    protocol = vehicleid.test_protocol(test_size=800, trials=3)
    assert protocol.scoring == "rank" and protocol.pool == "test_list_800"
    assert protocol.title == "vehicleid test_list_800, 3 trials (seeds 0..2)"
    assert [(s.query, s.gallery) for s in protocol.splits] == [vehicleid.make_trial(800, seed) for seed in range(3)]
    assert [s.name for s in protocol.splits] == ["vehicleid800", "vehicleid800_trial1", "vehicleid800_trial2"]
    assert len(vehicleid.test_protocol().splits) == 10
    with pytest.raises(DatasetError, match="at least one trial"):
        vehicleid.test_protocol(trials=0)

    university = build_dataset("university1652", root)
    (split,) = university.test_protocol(direction="drone2satellite").splits
    assert (split.name, split.query_view, split.gallery_view) == ("university1652_drone2satellite", "drone",
                                                                  "satellite")
    assert (split.query, split.gallery) == university.make_split("drone2satellite")
    assert university.test_protocol().splits[0].query == university.make_split("satellite2drone")[0]
    assert university.sampler_views() == [item[2] for item in university.train]
    assert market.sampler_views() is None

    cars = build_dataset("car196", root)
    protocol = cars.test_protocol()
    assert protocol.scoring == cars.scoring == "retrieval"
    assert protocol.splits == (TestSplit("car196", cars.test),)


def test_each_dataset_builds_its_own_transforms(tmp_path):
    import torch
    from datasets.transforms import build_transform
    root = str(tmp_path)
    market_tree(root)
    university_tree(root)
    image = torch.randint(0, 256, (3, 300, 200), dtype=torch.uint8)
    for data in (build_dataset("market1501", root), build_dataset("university1652", root)):
        expected = build_transform(data.family, 64, 32, train=False, view="drone" if data.family == "university" else None)
        assert torch.equal(data.test_transform(64, 32, view="drone" if data.family == "university" else None)(image),
                           expected(image))
    assert set(build_dataset("university1652", root).train_transform(64, 64)) == {0, 1, 2, 3}  # per view


def test_protocol_refuses_inconsistent_splits():
    from datasets.protocol import Protocol, TestSplit
    split = TestSplit("a", [("x.jpg", 1, 0)], [("y.jpg", 1, 1)])
    with pytest.raises(ValueError, match="unknown scoring 'cmc'"):
        Protocol((split,), scoring="cmc")
    with pytest.raises(ValueError, match="at least one test split"):
        Protocol(())
    with pytest.raises(ValueError, match="searched against itself"):
        Protocol((split,), scoring="retrieval")
    with pytest.raises(ValueError, match="needs a gallery"):
        Protocol((TestSplit("a", [("x.jpg", 1, 0)]),))
    with pytest.raises(ValueError, match="names the feature pass they share"):
        Protocol((split, split))
    with pytest.raises(ValueError, match="no views"):
        Protocol((TestSplit("a", split.query, split.gallery, "drone", "satellite"),) * 2, pool="all")


def test_no_module_outside_the_datasets_switches_on_a_dataset_or_family_name():
    """The protocol lives in the dataset classes: training, evaluation and the tools ask the dataset
    object, never which dataset or family it is (datasets/transforms.py defines the families)."""
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = "|".join(DATASET_NAMES)
    switch = re.compile(rf"""(family|\.name|dataset)\s*(==|!=|in)\s*[\("'](\s*["'])?({names}|reid|metric|university)""")
    offenders = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "datasets", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                for lineno, line in enumerate(open(path, encoding="utf-8"), 1):
                    if switch.search(line):
                        offenders.append(f"{os.path.relpath(path, root)}:{lineno}: {line.strip()}")
    assert offenders == []
