"""PKU VehicleID vehicle re-identification dataset.

Official layout (`--dataset-root`/VehicleID_V1.0)::

    VehicleID_V1.0/
        image/<name>.jpg                    e.g. image/0000001.jpg
        train_test_split/
            train_list.txt                  lines '<image name without .jpg> <vehicle id>', e.g. '0000001 1'
            test_list_800.txt               the same format (small test set)
            test_list_1600.txt              (medium)
            test_list_2400.txt              (large)

There are no camera labels (training camid 0). Test protocol: for each trial one image per vehicle
id, drawn with the trial's seed, is the gallery (camid 1) and the other images are queries (camid 0);
results are averaged over seeded trials (`make_trial`).

Statistics (as published): 26,267 vehicles, 221,763 images. train: 13,164 ids, 113,346 images;
test_list_800: 800 ids, 7,332 images; test_list_1600: 1,600 ids, 12,995 images; test_list_2400:
2,400 ids, 20,038 images.

Citation: H. Liu, Y. Tian, Y. Wang, L. Pang, T. Huang. Deep Relative Distance Learning: Tell the
Difference Between Similar Vehicles. CVPR 2016.
"""
import os
import random

from datasets.base import Dataset, DatasetError, FileIndex, list_error, parse_int, read_list, relabel
from datasets.protocol import Protocol, TestSplit

TEST_SIZES = (800, 1600, 2400)


class VehicleID(Dataset):
    name = "vehicleid"
    folder = "VehicleID_V1.0"
    image_size = (256, 256)
    protocol_options = {"test_size": 800, "trials": 10}
    layout = """\
image/<name>.jpg                 e.g. image/0000001.jpg
train_test_split/
    train_list.txt               '<image name without .jpg> <vehicle id>' per line
    test_list_800.txt            (same format)
    test_list_1600.txt
    test_list_2400.txt"""

    def load(self):
        self.image_dir = self.require_dir(os.path.join(self.root, "image"))
        self.split_dir = self.require_dir(os.path.join(self.root, "train_test_split"))
        self._index = FileIndex()  # one listing of image/ serves every list
        self._tests = {}
        train = self.read_split(self.require_file(os.path.join(self.split_dir, "train_list.txt")))
        self.train, self.num_classes = relabel([(path, vid, 0) for path, vid in train])

    def read_split(self, list_path):
        """[(image path, vehicle id)] from a list file; every listed image must exist."""
        items = []
        for lineno, (name, vid) in read_list(list_path, 2, "<image name without .jpg> <vehicle id>"):
            vid = parse_int(vid, list_path, lineno, "vehicle id")
            path = os.path.join(self.image_dir, name + ".jpg")
            if not self._index.exists(path):
                raise list_error(list_path, lineno, f"listed image not found: {path}")
            items.append((path, vid))
        if not items:
            raise DatasetError(f"empty split: no images listed in {list_path}")
        return items

    def test_list(self, test_size):
        """[(image path, vehicle id)] of test_list_<test_size>.txt (read once)."""
        try:
            size = int(test_size)
        except (TypeError, ValueError):
            size = None
        if size not in TEST_SIZES:
            raise DatasetError(f"unknown VehicleID test size {test_size!r}; choose one of "
                               f"{', '.join(map(str, TEST_SIZES))}")
        if size not in self._tests:
            path = self.require_file(os.path.join(self.split_dir, f"test_list_{size}.txt"))
            self._tests[size] = self.read_split(path)
        return self._tests[size]

    def make_trial(self, test_size, seed):
        """(query, gallery) of one trial on test_list_<test_size>: per vehicle id one image drawn with
        random.Random(seed) is the gallery item (camid 1), the others are queries (camid 0).
        Items are (path, vehicle id, camid)."""
        groups = {}
        for path, vid in self.test_list(test_size):
            groups.setdefault(vid, []).append(path)
        rng = random.Random(seed)
        query, gallery = [], []
        for vid in sorted(groups):
            paths = groups[vid]
            pick = rng.randrange(len(paths))
            gallery.append((paths[pick], vid, 1))
            query.extend((path, vid, 0) for i, path in enumerate(paths) if i != pick)
        return query, gallery

    def test_protocol(self, test_size=800, trials=10):
        """`trials` seeded trials (seeds 0..trials-1, make_trial) on test_list_<test_size>, averaged;
        their images are extracted once."""
        if int(trials) < 1:
            raise DatasetError(f"VehicleID needs at least one trial, got {trials}")
        splits = tuple(TestSplit(f"{self.name}{test_size}" if seed == 0 else f"{self.name}{test_size}_trial{seed}",
                                 *self.make_trial(test_size, seed)) for seed in range(int(trials)))
        return Protocol(splits, title=f"vehicleid test_list_{test_size}, {trials} trials (seeds 0..{trials - 1})",
                        pool=f"test_list_{test_size}")

    def summary_rows(self):
        rows = [("train", self.train, False)]
        for size in TEST_SIZES:
            if os.path.isfile(os.path.join(self.split_dir, f"test_list_{size}.txt")):
                rows.append((f"test_list_{size}", [(p, vid, 0) for p, vid in self.test_list(size)], False))
        return rows
