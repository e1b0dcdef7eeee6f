"""Your own re-identification data (`--dataset custom`): `--dataset-root` is the dataset folder itself.

Each split (train, query, gallery) is given in one of three ways, chosen per split::

    <dataset-root>/
        train.txt      (a) list file: lines 'relative/path.jpg pid [camid]', paths relative to
        query.txt          <dataset-root>; used when it exists
        gallery.txt
        train/         (b) one sub-folder per identity: train/<pid>/<any name>.jpg|.png, the
        query/             camera optional in the file name as c<N> (e.g. 0007/frame_c2_0031.jpg)
        gallery/       (c) Market-1501 file names: query/0007_c2s1_000451_01.jpg (<pid>_c<camera>...)

Person ids are integers; id -1 marks junk and is left out. The camera is the number as written
(c2 -> 2, the list's third field as given); only whether two cameras are equal matters. Without a
camera, a query and a gallery image count as seen by different cameras (nothing is junk):
`summary()` says so. train is optional (evaluation only); query and gallery are required, and
every query id must have a gallery image.
"""
import os
import re

from datasets.base import Dataset, DatasetError, FileIndex, is_image, list_error, parse_int, relabel

SPLITS = ("train", "query", "gallery")
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
CAMERA = re.compile(r"(?<![A-Za-z])c(\d+)")  # c<N> not preceded by a letter: 0007_c2_..., frame-c10.png
# camid of an image without a camera: query and gallery differ, so no gallery image is junk
NO_CAMERA = {"train": -1, "query": -1, "gallery": -2}
LIST_USAGE = "relative/path.jpg pid [camid]"


class Custom(Dataset):
    name = "custom"
    folder = ""  # --dataset-root is the dataset folder
    layout = """\
train.txt, query.txt, gallery.txt   lines 'relative/path.jpg pid [camid]' (used when present), or
train/<pid>/<image>.jpg             one sub-folder per identity, camera optional as c<N> in the name, or
train/<pid>_c<camera>_....jpg       Market-1501 file names
query/ ..., gallery/ ...            (the same three choices; train is optional)"""

    def load(self):
        self.index = FileIndex()
        self.sources = {}  # split -> the folder or list file it was read from
        self.missing_cameras = False
        splits = {}
        for split in SPLITS:
            items = self.read_split(split)
            if items is None:
                if split != "train":
                    raise self.missing(os.path.join(self.root, split), f"{split} split (folder or {split}.txt)")
                continue
            splits[split] = items
        self.check_query_ids(splits["query"], splits["gallery"])
        if "train" in splits:
            self.train, self.num_classes = relabel(splits["train"])
        self.query, self.gallery = splits["query"], splits["gallery"]

    # -- one split --------------------------------------------------------------------------------
    def read_split(self, split):
        """[(path, pid, camid)] of `split` from its list file or folder; None when neither exists."""
        list_path = os.path.join(self.root, f"{split}.txt")
        folder = os.path.join(self.root, split)
        if os.path.isfile(list_path):
            self.sources[split] = list_path
            items = self.parse_list(list_path, split)
        elif os.path.isdir(folder):
            self.sources[split] = folder
            items = self.parse_folder(folder, split)
        else:
            return None
        items = [item for item in items if item[1] != -1]
        return self.require_items(items, self.sources[split])

    def camera(self, split, number):
        if number is None:
            self.missing_cameras = True
            return NO_CAMERA[split]
        return number

    def parse_list(self, path, split):
        items = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                if len(fields) not in (2, 3):
                    raise list_error(path, lineno, f"expected '{LIST_USAGE}' (3 fields at most; paths cannot "
                                                   f"hold spaces), got {line.strip()!r}")
                pid = parse_int(fields[1], path, lineno, "person id")
                cam = parse_int(fields[2], path, lineno, "camera id") if len(fields) == 3 else None
                image = os.path.join(self.root, fields[0])
                if not is_image(image):
                    raise list_error(path, lineno, f"not an image file (.jpg/.jpeg/.png): {fields[0]}")
                if not self.index.exists(image):
                    raise list_error(path, lineno, f"listed image not found: {image}")
                items.append((image, pid, self.camera(split, cam)))
        return items

    def parse_folder(self, folder, split):
        with os.scandir(folder) as entries:
            entries = sorted((e.name, e.is_dir()) for e in entries)
        subfolders = [name for name, is_dir in entries if is_dir]
        images = [name for name, is_dir in entries if not is_dir and is_image(name)]
        if subfolders and images:
            raise DatasetError(f"{folder} holds both identity sub-folders and images ({images[0]}, ...); "
                               "use one sub-folder per identity, or Market-1501 file names without sub-folders")
        if not subfolders:
            return [self.parse_market_name(os.path.join(folder, name), split) for name in images]
        items = []
        for sub in subfolders:
            pid_folder = os.path.join(folder, sub)
            try:
                pid = int(sub)
            except ValueError:
                raise DatasetError(f"identity folder name is not an integer person id: {pid_folder} "
                                   "(name the folders by id: 0001/, 0002/, ...)") from None
            with os.scandir(pid_folder) as entries:
                names = sorted(e.name for e in entries if is_image(e.name) and e.is_file())
            for name in names:
                match = CAMERA.search(os.path.splitext(name)[0])
                items.append((os.path.join(pid_folder, name), pid,
                              self.camera(split, int(match.group(1)) if match else None)))
        return items

    def parse_market_name(self, path, split):
        match = MARKET_NAME.match(os.path.basename(path))
        if match is None:
            raise DatasetError(f"file name does not parse: {path} (expected Market-1501 names like "
                               "0002_c1s1_000451_03.jpg, <pid>_c<camera>..., or one sub-folder per identity: "
                               f"{split}/<pid>/<image>.jpg)")
        return path, int(match.group(1)), int(match.group(2))

    # -- checks -----------------------------------------------------------------------------------
    def check_query_ids(self, query, gallery):
        """Every query id needs a gallery image: name the first query image (and list line) without one."""
        gallery_ids = {pid for _, pid, _ in gallery}
        for path, pid, _ in query:
            if pid in gallery_ids:
                continue
            source = self.sources["query"]
            where = f"{source}, line {self.line_of(source, path)}" if source.endswith(".txt") else path
            raise DatasetError(f"{where}: id {pid} is in the query but has no image in the gallery "
                               f"({self.sources['gallery']}); add gallery images of it or drop it from the query")

    def missing(self, path, what):
        """As every dataset's, and where the folder holds a custom/ folder (the generator's layout), say that
        the dataset folder itself is wanted."""
        error = super().missing(path, what)
        nested = os.path.join(self.root, "custom")
        if os.path.isdir(nested):
            return DatasetError(f"{error}\n{self.root} holds a custom/ folder: --dataset custom takes the dataset "
                                f"folder itself, e.g. --dataset-root {nested}")
        return error

    def line_of(self, list_path, image):
        with open(list_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if fields and os.path.join(self.root, fields[0]) == image:
                    return lineno
        return "?"

    # -- report -----------------------------------------------------------------------------------
    def summary_rows(self):
        """Cameras are counted for a split whose images all have one ("-" otherwise)."""
        splits = [("train", self.train)] if self.train else []
        splits += [("query", self.query), ("gallery", self.gallery)]
        return [(split, items, all(item[2] >= 0 for item in items)) for split, items in splits]

    def summary(self):
        lines = [super().summary()]
        if not self.train:
            lines.append("  no train split: evaluation only")
        if self.missing_cameras:
            lines.append("  some images have no camera id: a query and a gallery image without one count as "
                         "seen by different cameras (none is junk)")
        return "\n".join(lines)
