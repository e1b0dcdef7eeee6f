"""Synthetic data sets in the official on-disk layout of every `--dataset`, for the tests and `train.py --demo`.

    python -m datasets.synthetic --dataset market1501 --root data/demo --ids 48 --images-per-id 8 --cameras 3
    python -m datasets.synthetic --dataset all --root /tmp/synth
    python -m datasets.synthetic --dataset custom --layout folders --root data   # --dataset-root data/custom

`generate(name, root, ids, images_per_id, cameras, seed)` writes `root/<dataset folder>` with the
folder tree, file names, list files and `.mat` file of the real release (see the docstrings of the
parsers in this package). `ids` identities (classes) train and another `ids` test; the metric sets
(car196, cub200) have 2*ids classes, the first half training. Each identity has `images_per_id`
images spread over `cameras` cameras; per test identity the first image of each of the first
min(cameras, images_per_id // 2) cameras is a query, the rest are gallery images. As in the
releases, Market-1501's gallery adds junk boxes (id -1) and distractors (id 0000), DukeMTMC-reID's
gallery-only identities, VeRi's image_test holds the query images too, University-1652's
gallery_satellite has extra sites, and VehicleID's test lists 800 / 1600 / 2400 are nested subsets
(about ids/3, 2*ids/3 and all of the test identities).

The images carry identity: each identity is a procedurally drawn figure (a person, vehicle, bird or
building) whose large regions have identity-specific colours, patterns and proportions, on a
cluttered background drawn afresh for every image. Every camera has its own colour cast,
brightness, blur, scale and viewpoint, so matching across cameras is learnable but not trivial.
Everything is drawn from one numpy generator seeded by (seed, dataset), so a seed gives identical files.
"""
import argparse
import json
import os
import sys
import zlib

import numpy as np

from datasets import DATASET_FOLDERS, DATASET_NAMES
from datasets.drawing import (CAR_SIZE, Camera, bird_identity, draw_bird, draw_person, draw_site, draw_vehicle,
                              drone_view, junk_box, person_identity, satellite_view, street_view,
                              vehicle_identity)

# the folder each parser reads under --dataset-root; custom's is --dataset-root itself, written to root/custom
FOLDERS = {name: folder or name for name, folder in DATASET_FOLDERS.items()}
NAMES = DATASET_NAMES
# cameras of the real data sets (names like c1..c6 or c001..c020 cannot hold more)
MAX_CAMERAS = {"market1501": 6, "dukemtmc": 8, "msmt17": 15, "veri776": 20, "npdetected": 2, "nplabeled": 2,
               "custom": 99}
# --layout: msmt17 "market" or "official"; custom "market" (Market-1501 file names), "folders" (one
# sub-folder per identity) or "lists" (train.txt / query.txt / gallery.txt); every other data set "market"
LAYOUTS = {"msmt17": ("market", "official"), "custom": ("market", "folders", "lists")}
# largest raw id of the real data sets: raw ids are drawn sparsely from 1..this, as in the releases
MAX_ID = {"market1501": 1501, "dukemtmc": 7140, "msmt17": 4100, "veri776": 776, "vehicleid": 26267,
          "npdetected": 1467, "nplabeled": 1467, "university1652": 1652}


# --- layouts -----------------------------------------------------------------------------------

def _save(img, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, quality=90) if path.endswith((".jpg", ".jpeg")) else img.save(path)


def _write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _raw_ids(rng, name, count, low=1):
    """`count` distinct sorted raw ids drawn sparsely from the real range (contiguous if it is too small)."""
    high = max(MAX_ID.get(name, count), count + low - 1)
    if high >= 10000 and name not in ("vehicleid",):
        raise ValueError(f"--ids too large for {name}: its 4-digit ids hold at most {9999 - low + 1} identities "
                         f"(train + test)")
    return sorted(int(v) for v in rng.choice(np.arange(low, high + 1), count, replace=False))


def _query_count(images_per_id, cameras):
    return max(1, min(cameras, images_per_id // 2))


def _reid_split(rng, name, ids, images_per_id, cameras):
    """[(split, raw id, camera 0-based)] for train / query / gallery of a Market-style data set."""
    pids = _raw_ids(rng, name, 2 * ids, low=0 if name == "msmt17" else 1)
    train, test = pids[0::2], pids[1::2]
    nq = _query_count(images_per_id, cameras)
    records = [("train", p, j % cameras) for p in train for j in range(images_per_id)]
    for p in test:
        records += [("query" if j < nq else "gallery", p, j % cameras) for j in range(images_per_id)]
    return records, train, test


MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _market_name(name, pid, cam, k, rng):
    """An official file name for raw id `pid`, 0-based camera `cam`; `k` is a running image number."""
    pid_text = "-1" if pid == -1 else f"{pid:04d}"
    if name == "market1501":
        frame = k * 25 + rng.integers(0, 25)
        return f"{pid_text}_c{cam + 1}s{rng.integers(1, 7)}_{frame:06d}_{rng.integers(1, 9):02d}.jpg"
    if name == "dukemtmc":
        return f"{pid_text}_c{cam + 1}_f{k * 37 + rng.integers(0, 37):07d}.jpg"
    if name == "msmt17":
        return f"{pid_text}_c{cam + 1:02d}_{k:04d}.jpg"
    if name == "veri776":
        return f"{pid_text}_c{cam + 1:03d}_{k * 50 + rng.integers(0, 50):08d}_{rng.integers(0, 2)}.jpg"
    return f"{pid_text}_c{cam + 1}_{k}.png"  # cuhk03-np


def _write_market_style(name, folder, rng, ids, images_per_id, cameras, draw, new_identity):
    """bounding_box_train / query / bounding_box_test (VeRi: image_train / image_query / image_test)."""
    records, train, test = _reid_split(rng, name, ids, images_per_id, cameras)
    cams = [Camera(rng, c) for c in range(cameras)]
    idents = {p: new_identity(rng) for p in train + test}
    extra = max(2, ids // 4)
    if name == "market1501":  # junk boxes (-1) and distractors (0000) in the gallery, as the release
        records += [("gallery", -1, int(rng.integers(0, cameras))) for _ in range(extra)]
        records += [("gallery", 0, int(rng.integers(0, cameras))) for _ in range(extra)]
    elif name == "dukemtmc":  # gallery-only identities (DukeMTMC-reID's 408 distractor ids)
        taken = set(train + test)
        free = [p for p in range(1, 10000) if p not in taken][: max(1, ids // 4)]
        records += [("gallery", p, int(rng.integers(0, cameras))) for p in free]
        idents.update({p: new_identity(rng) for p in free})
    folders = dict(MARKET_FOLDERS, **({"train": "image_train", "query": "image_query", "gallery": "image_test"}
                                      if name == "veri776" else {}))
    lists = {split: [] for split in folders}
    for k, (split, pid, cam) in enumerate(records, 1):
        file = _market_name(name, pid, cam, k, rng)
        if pid == -1:
            img = junk_box(cams[cam], rng)
        else:
            img = draw(idents[pid] if pid in idents else new_identity(rng), cams[cam], rng)  # 0000: a stranger
        _save(img, os.path.join(folder, folders[split], file))
        lists[split].append(file)
        if name == "veri776" and split == "query":  # VeRi's query images are also in image_test
            _save(img, os.path.join(folder, folders["gallery"], file))
            lists["gallery"].append(file)
    if name == "veri776":  # name_train.txt / name_query.txt / name_test.txt of the release
        for split, list_name in (("train", "train"), ("query", "query"), ("gallery", "test")):
            _write_lines(os.path.join(folder, f"name_{list_name}.txt"), sorted(lists[split]))


def _write_msmt_official(folder, rng, ids, images_per_id, cameras):
    """MSMT17_V1 release: train/<pid>/, test/<pid>/ and list_{train,val,query,gallery}.txt.

    Ids restart at 0 in test/ as in the release; the last image of each training id goes to list_val.txt.
    """
    cams = [Camera(rng, c) for c in range(cameras)]
    nq = _query_count(images_per_id, cameras)
    lists = {key: [] for key in ("train", "val", "query", "gallery")}
    for split in ("train", "test"):
        for pid in range(ids):
            ident = person_identity(rng)
            for j in range(images_per_id):
                cam = j % cameras
                time = ("morning", "noon", "afternoon")[rng.integers(0, 3)]
                date = f"{rng.integers(1, 5):02d}{rng.integers(10, 29)}{time}"  # e.g. 0303morning
                frame, box = rng.integers(0, 10000), rng.integers(0, 3)
                rel = f"{pid:04d}/{pid:04d}_{j:03d}_{cam + 1:02d}_{date}_{frame:04d}_{box}.jpg"
                _save(draw_person(ident, cams[cam], rng), os.path.join(folder, split, rel))
                key = ("val" if j == images_per_id - 1 and images_per_id > 1 else "train") if split == "train" \
                    else ("query" if j < nq else "gallery")
                lists[key].append(f"{rel} {pid}")
    for key, lines in lists.items():
        _write_lines(os.path.join(folder, f"list_{key}.txt"), lines)


def _write_vehicleid(folder, rng, ids, images_per_id, cameras):
    """image/<7 digits>.jpg and train_test_split/{train_list,test_list_800,_1600,_2400}.txt (nested test lists)."""
    cams = [Camera(rng, c) for c in range(cameras)]
    vids = [int(v) for v in rng.permutation(_raw_ids(rng, "vehicleid", 2 * ids))]
    train, test = sorted(vids[:ids]), sorted(vids[ids:])
    names = iter(f"{int(v):07d}" for v in rng.choice(np.arange(1, 10 ** 7), 2 * ids * images_per_id, replace=False))
    lines = {}
    for vid in train + test:
        ident = vehicle_identity(rng)
        lines[vid] = []
        for j in range(images_per_id):
            view = ("front", "rear")[(j + int(rng.integers(0, 2))) % 2]  # VehicleID shows fronts and backs only
            img, _ = draw_vehicle(ident, cams[j % cameras], rng, view=view)
            name = next(names)
            _save(img, os.path.join(folder, "image", name + ".jpg"))
            lines[vid].append(f"{name} {vid}")
    split = os.path.join(folder, "train_test_split")
    _write_lines(os.path.join(split, "train_list.txt"), [line for v in train for line in lines[v]])
    small = min(ids, max(2, round(ids / 3)))
    for size, count in ((800, small), (1600, min(ids, max(small, round(2 * ids / 3)))), (2400, ids)):
        _write_lines(os.path.join(split, f"test_list_{size}.txt"), [line for v in test[:count] for line in lines[v]])


def _write_cars(folder, rng, ids, images_per_id, cameras):
    """car_ims/000001.jpg ... and cars_annos.mat: struct array `annotations` and cell array `class_names`."""
    import scipy.io  # here: only car196 writes a .mat file, and scipy.io is slow to import
    cams = [Camera(rng, c) for c in range(cameras)]
    records = []
    for cls in range(1, 2 * ids + 1):
        ident = vehicle_identity(rng)
        for j in range(images_per_id):
            view = "side" if rng.random() < 0.7 else ("front", "rear")[rng.integers(0, 2)]
            img, box = draw_vehicle(ident, cams[j % cameras], rng, size=CAR_SIZE, view=view)
            rel = f"car_ims/{len(records) + 1:06d}.jpg"
            _save(img, os.path.join(folder, rel))
            records.append((rel, *box, cls, j % 2))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    cls_type = np.uint8 if 2 * ids < 256 else np.uint16
    for i, (rel, x1, y1, x2, y2, cls, test) in enumerate(records):
        annotations[0, i] = (np.array([rel]), *(np.array([[v]], np.uint16) for v in (x1, y1, x2, y2)),
                             np.array([[cls]], cls_type), np.array([[test]], np.uint8))
    class_names = np.empty((1, 2 * ids), dtype=object)
    for c in range(2 * ids):
        class_names[0, c] = np.array([f"Synthetic Make{c + 1:03d} Model {2000 + c % 13}"])
    path = os.path.join(folder, "cars_annos.mat")
    scipy.io.savemat(path, {"annotations": annotations, "class_names": class_names})
    with open(path, "r+b") as f:  # the 116-byte text header holds the write time: fixed, so a seed gives the same bytes
        f.write(b"MATLAB 5.0 MAT-file, Platform: posix, written by datasets.synthetic".ljust(116))


def _write_cub(folder, rng, ids, images_per_id, cameras):
    """images/<class folder>/<name>.jpg, images.txt, image_class_labels.txt, classes.txt, train_test_split.txt,
    bounding_boxes.txt."""
    cams = [Camera(rng, c) for c in range(cameras)]
    images, labels, classes, split, boxes = [], [], [], [], []
    for cls in range(1, 2 * ids + 1):
        ident, species = bird_identity(rng), f"Synthetic_Bird_{cls:03d}"
        class_folder = f"{cls:03d}.{species}"
        classes.append(f"{cls} {class_folder}")
        for j in range(images_per_id):
            rel = f"{class_folder}/{species}_{int(rng.integers(1, 10 ** 5)):04d}_{len(images) + 1}.jpg"
            _save(draw_bird(ident, cams[j % cameras], rng), os.path.join(folder, "images", rel))
            i = len(images) + 1
            images.append(f"{i} {rel}")
            labels.append(f"{i} {cls}")
            split.append(f"{i} {1 - j % 2}")
            boxes.append(f"{i} 20.0 25.0 90.0 80.0")
    for file, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("classes.txt", classes),
                        ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        _write_lines(os.path.join(folder, file), lines)


def _write_university(folder, rng, ids, images_per_id, cameras):
    """train/{satellite,drone,street,google}/<id>/ and test/{query,gallery}_{satellite,drone,street}/<id>/."""
    cams = [Camera(rng, c) for c in range(max(cameras, 2))]
    extra = max(1, ids // 4)  # gallery_satellite holds extra sites with no drone images, as the release
    pids = [int(v) for v in rng.permutation(_raw_ids(rng, "university1652", 2 * ids + extra))]
    train, test, distract = sorted(pids[:ids]), sorted(pids[ids:2 * ids]), sorted(pids[2 * ids:])
    for split, group in (("train", train), ("test", test), ("distractor", distract)):
        for pid in group:
            site, roof = draw_site(rng)
            sid = f"{pid:04d}"
            sat = satellite_view(site, cams[0], rng)
            drones = [drone_view(site, cams[1 + j % (len(cams) - 1)], rng) for j in range(images_per_id)]
            drone_names = [f"image-{j + 1:02d}.jpeg" for j in range(images_per_id)]
            streets = [street_view(roof, cams[j % len(cams)], rng) for j in range(2)]
            if split == "train":
                _save(sat, os.path.join(folder, "train", "satellite", sid, f"{sid}.jpg"))
                for img, file in zip(drones, drone_names):
                    _save(img, os.path.join(folder, "train", "drone", sid, file))
                for j, img in enumerate(streets):
                    _save(img, os.path.join(folder, "train", "street", sid, f"{j}.jpg"))
                _save(street_view(roof, cams[-1], rng), os.path.join(folder, "train", "google", sid, "0.jpg"))
            elif split == "test":
                for view in ("query_satellite", "gallery_satellite"):
                    _save(sat, os.path.join(folder, "test", view, sid, f"{sid}.jpg"))
                for view in ("query_drone", "gallery_drone"):  # the release holds the same drone images in both
                    for img, file in zip(drones, drone_names):
                        _save(img, os.path.join(folder, "test", view, sid, file))
                _save(streets[0], os.path.join(folder, "test", "query_street", sid, "0.jpg"))
                _save(streets[1], os.path.join(folder, "test", "gallery_street", sid, "1.jpg"))
            else:
                _save(sat, os.path.join(folder, "test", "gallery_satellite", sid, f"{sid}.jpg"))


def _write_custom(folder, rng, ids, images_per_id, cameras, layout):
    """The `--dataset custom` layouts (datasets/custom.py): train / query / gallery as Market-1501 file
    names, as one sub-folder per identity (camera as c<N> in the name), or as list files over images/."""
    records, train, test = _reid_split(rng, "custom", ids, images_per_id, cameras)
    cams = [Camera(rng, c) for c in range(cameras)]
    idents = {p: person_identity(rng) for p in train + test}
    lists = {split: [] for split in MARKET_FOLDERS}
    for k, (split, pid, cam) in enumerate(records, 1):
        if layout == "market":
            rel = f"{split}/{pid:04d}_c{cam + 1}s1_{k:06d}_01.jpg"
        elif layout == "folders":
            rel = f"{split}/{pid:04d}/c{cam + 1}_{k:06d}.jpg"
        else:
            rel = f"images/{pid:04d}/{k:06d}.jpg"
            lists[split].append(f"{rel} {pid} {cam + 1}")
        _save(draw_person(idents[pid], cams[cam], rng), os.path.join(folder, rel))
    if layout == "lists":
        for split, lines in lists.items():
            _write_lines(os.path.join(folder, f"{split}.txt"), lines)


MARKER = ".synthetic.json"  # in the data set folder: the arguments it was generated with
DEFAULT_IDS = 64  # enough for every command of the README (VehicleID's batch of 256 = 64 identities x 4)


def generate(name, root, ids=DEFAULT_IDS, images_per_id=4, cameras=2, seed=0, layout="market"):
    """Write a synthetic `name` data set under `root/<dataset folder>` and return that folder.

    `layout` (see LAYOUTS): for msmt17 "market" (bounding_box_train / query / bounding_box_test, as
    the release trains on) or "official" (train/, test/ and the list_*.txt files of MSMT17_V1); for
    custom (written to `root/custom`, its --dataset-root) "market", "folders" or "lists".
    """
    if name not in FOLDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(NAMES)}")
    if layout not in LAYOUTS.get(name, ("market",)):
        raise ValueError(f"layout {layout!r} does not apply to {name}; choose one of "
                         f"{', '.join(LAYOUTS.get(name, ('market',)))}")
    if ids < 2 or images_per_id < 2 or cameras < 1:
        raise ValueError(f"need ids >= 2, images_per_id >= 2 and cameras >= 1, got {ids}, {images_per_id}, {cameras}")
    if name in MAX_CAMERAS and not 2 <= cameras <= MAX_CAMERAS[name]:
        raise ValueError(f"{name} has at most {MAX_CAMERAS[name]} cameras and needs 2 (a query needs a match in "
                         f"another camera), got {cameras}")
    folder = os.path.join(root, FOLDERS[name])
    if os.path.isdir(folder) and os.listdir(folder):
        raise FileExistsError(f"{folder} already exists and is not empty; remove it or choose another root")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{layout}".encode())])
    if name == "msmt17" and layout == "official":
        _write_msmt_official(folder, rng, ids, images_per_id, cameras)
    elif name == "custom":
        _write_custom(folder, rng, ids, images_per_id, cameras, layout)
    elif name in MAX_CAMERAS:
        vehicle = name == "veri776"
        _write_market_style(name, folder, rng, ids, images_per_id, cameras,
                            draw=lambda i, c, r: draw_vehicle(i, c, r)[0] if vehicle else draw_person(i, c, r),
                            new_identity=vehicle_identity if vehicle else person_identity)
    else:
        writer = {"vehicleid": _write_vehicleid, "car196": _write_cars, "cub200": _write_cub,
                  "university1652": _write_university}[name]
        writer(folder, rng, ids, images_per_id, cameras)
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump(dict(dataset=name, ids=ids, images_per_id=images_per_id, cameras=cameras, seed=seed, layout=layout), f)
    return folder


def generated_with(folder):
    """The arguments `generate` wrote `folder` with (its MARKER file), or None for other data."""
    try:
        with open(os.path.join(folder, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def regenerate_hint(folder, identities):
    """For a batch that needs more `identities` than the data has: how to generate `folder` again with
    enough of them, when this module generated it (else "")."""
    made = generated_with(folder)
    if made is None or made.get("ids", 0) >= identities:
        return ""
    folder, sub = os.path.normpath(folder), os.path.normpath(FOLDERS[made["dataset"]])
    root = folder[:-len(sub)].rstrip(os.sep) or "." if folder.endswith(sub) else os.path.dirname(folder)
    return (f". The data in {folder} was generated with --ids {made['ids']}: generate it again with enough "
            f"identities, e.g. python -m datasets.synthetic --dataset {made['dataset']} --root {root} "
            f"--ids {max(identities, DEFAULT_IDS)} (into an empty folder)")


def get_args_parser():
    p = argparse.ArgumentParser(description="Write a synthetic data set in the official on-disk layout of --dataset.")
    p.add_argument("--dataset", required=True, choices=NAMES + ("all",), help="data set layout to write, or all")
    p.add_argument("--root", required=True, help="--dataset-root to write under (the data set folder is created)")
    p.add_argument("--ids", type=int, default=DEFAULT_IDS,
                   help="training identities / classes (the test split gets as many); the default fills every "
                        "README command's P x K batch")
    p.add_argument("--images-per-id", type=int, default=4, help="images of each identity")
    p.add_argument("--cameras", type=int, default=2, help="cameras the images of an identity are spread over")
    p.add_argument("--seed", type=int, default=0, help="same seed, identical files")
    p.add_argument("--layout", choices=("market", "official", "folders", "lists"), default="market",
                   help="msmt17: Market-style folders (default) or the MSMT17_V1 list-file layout (official); "
                        "custom: Market-1501 file names (default), one sub-folder per identity (folders) or "
                        "train.txt/query.txt/gallery.txt (lists)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    names = NAMES if args.dataset == "all" else (args.dataset,)
    for name in names:
        layout = args.layout if args.layout in LAYOUTS.get(name, ("market",)) or args.dataset != "all" else "market"
        cameras = args.cameras
        if args.dataset == "all" and name in MAX_CAMERAS and cameras > MAX_CAMERAS[name]:
            cameras = MAX_CAMERAS[name]
            print(f"{name}: {cameras} cameras (the most it has)")
        try:
            folder = generate(name, args.root, args.ids, args.images_per_id, cameras, args.seed, layout)
        except (ValueError, FileExistsError) as err:
            print(f"synthetic: error: {err}", file=sys.stderr)
            return 2
        count = sum(len(files) for _, _, files in os.walk(folder))
        print(f"{name}: wrote {count} files under {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
