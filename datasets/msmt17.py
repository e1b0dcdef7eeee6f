"""MSMT17 person re-identification dataset, in either of its two layouts (detected automatically).

(a) Market-style folders, as the release trains on (`--dataset-root`/MSMT17)::

    MSMT17/
        bounding_box_train/   0000_c01_0001.jpg, ...
        query/                ...
        bounding_box_test/    ...

    file name `<person id>_c<camera 01..15>_<index>.jpg`.

(b) the official release (MSMT17_V1.tar.gz, unpacked as `--dataset-root`/MSMT17)::

    MSMT17/
        train/<pid>/<image>.jpg     e.g. train/0000/0000_000_01_0303morning_0015_0.jpg
        test/<pid>/<image>.jpg
        list_train.txt   lines '0000/0000_000_01_0303morning_0015_0.jpg 0' (path under train/, person id)
        list_val.txt     the same format; the training set is list_train + list_val
        list_query.txt   lines '<path under test/> <person id>'
        list_gallery.txt

    the camera is the third '_' field of the file name (01..15). (b) is used when list_train.txt exists.

Statistics (as published): 4,101 identities, 126,441 boxes from 15 cameras (12 outdoor, 3 indoor).
train: 1,041 ids, 32,621 images (list_train 30,248 + list_val 2,373); test: 3,060 ids, 93,820
images: query 11,659 images, gallery 82,161 images.

Citation: L. Wei, S. Zhang, W. Gao, Q. Tian. Person Transfer GAN to Bridge Domain Gap for Person
Re-Identification. CVPR 2018.
"""
import os
import re

from datasets.base import DatasetError, FileIndex, FolderDataset, list_error, parse_int, read_list, relabel

LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


class MSMT17(FolderDataset):
    name = "msmt17"
    folder = "MSMT17"
    official_folders = ("MSMT17_V1", "MSMT17_V2")
    pattern = re.compile(r"^(-?\d+)_c(\d+)_")
    example = "0000_c01_0001.jpg"
    layout = """\
either (a) Market-style folders:
  bounding_box_train/   0000_c01_0001.jpg, ...  (<id>_c<camera 01..15>_<index>.jpg)
  query/
  bounding_box_test/
or (b) the official release (used when list_train.txt exists):
  train/<pid>/<image>.jpg   e.g. train/0000/0000_000_01_0303morning_0015_0.jpg
  test/<pid>/<image>.jpg
  list_train.txt, list_val.txt      '<path under train/> <pid>' per line
  list_query.txt, list_gallery.txt  '<path under test/> <pid>' per line"""

    def load(self):
        if not os.path.isfile(os.path.join(self.root, "list_train.txt")):
            super().load()
            return
        train_dir = self.require_dir(os.path.join(self.root, "train"))
        test_dir = self.require_dir(os.path.join(self.root, "test"))
        lists = [self.require_file(os.path.join(self.root, name)) for name in LISTS]
        index = FileIndex()
        train = self.parse_list(lists[0], train_dir, index) + self.parse_list(lists[1], train_dir, index)
        self.train, self.num_classes = relabel(train)
        self.query = self.parse_list(lists[2], test_dir, index)
        self.gallery = self.parse_list(lists[3], test_dir, index)

    def parse_list(self, list_path, image_dir, index):
        """Lines '<relative path> <pid>' -> [(path, pid, camid)], checking each listed image exists."""
        items = []
        for lineno, (rel, pid) in read_list(list_path, 2, "<pid folder>/<image>.jpg <pid>"):
            pid = parse_int(pid, list_path, lineno, "person id")
            fields = os.path.basename(rel).split("_")
            if len(fields) < 4 or not fields[2].isdigit() or int(fields[2]) < 1:
                raise list_error(list_path, lineno, f"file name does not parse: {rel} (expected names like "
                                 "0000_000_01_0303morning_0015_0.jpg, camera 01..15 in the third field)")
            path = os.path.join(image_dir, rel)
            if not index.exists(path):
                raise list_error(list_path, lineno, f"listed image not found: {path}")
            items.append((path, pid, int(fields[2]) - 1))
        if not items:
            raise DatasetError(f"empty split: no images listed in {list_path}")
        return items
