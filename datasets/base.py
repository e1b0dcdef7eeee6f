"""Shared pieces of the dataset parsers: the error type, folder and list-file readers, the base classes.

Every parser reads names only (folder listings, list files, the Cars .mat file) and never opens an
image. Items are `(path, label, camid)` tuples with `path` under the dataset folder and a 0-based
`camid`; training labels are 0..C-1 in the order of the raw ids.
"""
import os
import re
import shlex

from datasets.protocol import Protocol, TestSplit
from datasets.transforms import build_transform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """A dataset folder, list file or file name that does not match the official layout; the message says where."""


def is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def relabel(items):
    """(path, raw id, camid) items -> ((path, label, camid) items with labels 0..C-1 by sorted raw id, C)."""
    label = {raw: i for i, raw in enumerate(sorted({item[1] for item in items}))}
    return [(path, label[raw], camid) for path, raw, camid in items], len(label)


def list_error(path, lineno, message):
    return DatasetError(f"{path}, line {lineno}: {message}")


def read_list(path, num_fields, usage):
    """Yield (line number, fields) for the non-blank lines of a whitespace-separated list file.

    A line with another number of fields raises DatasetError naming the file and the line;
    `usage` shows what a line should look like.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != num_fields:
                raise list_error(path, lineno, f"expected '{usage}', got {line.strip()!r}")
            yield lineno, fields


def parse_int(text, path, lineno, what):
    try:
        return int(text)
    except ValueError:
        raise list_error(path, lineno, f"{what} must be an integer, got {text!r}") from None


class FileIndex:
    """Existence checks for listed images: one directory listing per folder, cached (not one stat per line)."""

    def __init__(self):
        self._names = {}

    def exists(self, path):
        folder, name = os.path.split(path)
        names = self._names.get(folder)
        if names is None:
            names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            self._names[folder] = names
        return name in names


def _plain_name(name):
    """Folder name without case and punctuation: Market-1501-v15.09.15 -> market1501v150915."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _count(items, k):
    return len({item[k] for item in items})


class Dataset:
    """Base class: subclasses set the class attributes and fill the splits in `load()`.

    Attributes after construction: `name` (the --dataset name), `family` ("reid", "metric" or
    "university"; the transform family, see datasets.transforms), `root` (the dataset folder),
    `train` [(path, label, camid)] with labels 0..C-1, `num_classes` (C), `query` / `gallery`
    [(path, raw id, camid)] or None, `test` (metric family: [(path, label, 0)]) or None.

    Each dataset states its own protocol, so the code that trains and evaluates never asks which
    dataset it holds: `image_size` (the default input, that of the release's commands),
    `train_transform` / `test_transform`, `sampler_views` and `test_protocol(**options)` (its
    options, with their defaults, in `protocol_options`; `scoring` says how its test is scored).
    """

    name = None
    family = "reid"
    image_size = (256, 128)  # (height, width) when neither the flags nor a checkpoint give one
    scoring = "rank"  # see datasets.protocol
    protocol_options = {}  # test_protocol's keywords and their defaults (the test scripts' flags)
    folder = None  # the dataset folder under --dataset-root ("": --dataset-root itself)
    official_folders = ()  # what the official download unpacks to, when it is another name than `folder`
    layout = ""  # the tree under the dataset folder, shown when a path is missing

    def __init__(self, dataset_root):
        self.dataset_root = dataset_root
        # folder "" (custom): --dataset-root is the dataset folder itself
        self.root = os.path.join(dataset_root, self.folder) if self.folder else os.path.normpath(dataset_root)
        self.train, self.num_classes = [], 0
        self.query = self.gallery = self.test = None
        if not os.path.isdir(self.root):
            raise self.missing_root()
        self.load()

    def load(self):
        raise NotImplementedError

    # -- protocol ---------------------------------------------------------------------------------
    def train_transform(self, height, width):
        """The training augmentation at `height` x `width` (for ImageDataset: a callable, or a dict
        {camid: callable} when the views are augmented differently)."""
        return build_transform(self.family, height, width, train=True)

    def test_transform(self, height, width, view=None):
        return build_transform(self.family, height, width, train=False, view=view)

    def sampler_views(self):
        """The camid of every training item where the P x K sampler must pair views (University-1652),
        else None."""
        return None

    def test_protocol(self):
        """The query / gallery split, scored by CMC and mAP (datasets.protocol)."""
        return Protocol((TestSplit(self.name, self.query, self.gallery),))

    # -- checks -----------------------------------------------------------------------------------
    def layout_tree(self):
        lines = [f"  {self.root}/"] + [f"    {line}" for line in self.layout.strip("\n").splitlines()]
        return "\n".join(lines)

    def missing(self, path, what):
        return DatasetError(f"{what} not found: {path}\nexpected layout ({self.name}):\n{self.layout_tree()}")

    def missing_root(self):
        """The dataset folder is absent: name a sibling that looks like it under another name (the
        official download's, another case) and say to rename it; or notice that --dataset-root is
        the dataset folder itself."""
        top = self.folder.split("/")[0]  # cuhk03-np/detected: the folder under --dataset-root
        expected = os.path.join(self.dataset_root, top)
        wanted = [_plain_name(n) for n in (top, *self.official_folders)]
        if os.path.isdir(self.dataset_root) and not os.path.isdir(expected):
            for name in sorted(os.listdir(self.dataset_root)):
                plain = _plain_name(name)
                if os.path.isdir(os.path.join(self.dataset_root, name)) and (
                        plain in wanted or plain.startswith(wanted[0])):
                    found = os.path.join(self.dataset_root, name)
                    return DatasetError(
                        f"dataset folder not found: {expected}; found {found}, which looks like the same folder "
                        f"under another name (as an official download unpacks): rename it to {top}, e.g. "
                        f"mv {shlex.quote(found)} {shlex.quote(expected)}\nexpected layout ({self.name}):\n"
                        f"{self.layout_tree()}")
        if _plain_name(os.path.basename(os.path.normpath(self.dataset_root))) in wanted:
            return DatasetError(
                f"dataset folder not found: {self.root}; --dataset-root {self.dataset_root} looks like the "
                f"{top} folder itself: pass the folder that holds it, --dataset-root "
                f"{os.path.dirname(os.path.normpath(self.dataset_root)) or '.'}\nexpected layout ({self.name}):\n"
                f"{self.layout_tree()}")
        return self.missing(self.root, "dataset folder")

    def require_dir(self, path):
        if not os.path.isdir(path):
            raise self.missing(path, "dataset folder")
        return path

    def require_file(self, path):
        if not os.path.isfile(path):
            raise self.missing(path, "dataset file")
        return path

    def require_items(self, items, where):
        """Raise DatasetError naming `where` (a folder or list file) when a split has no images."""
        if not items:
            raise DatasetError(f"empty split: no images (.jpg/.jpeg/.png) in {where}")
        return items

    def scan_images(self, folder):
        """Sorted image file names in `folder` (other files such as Thumbs.db are ignored)."""
        self.require_dir(folder)
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if is_image(e.name) and e.is_file())
        return self.require_items(names, folder)

    # -- report -----------------------------------------------------------------------------------
    def summary_rows(self):
        """[(split name, items, show cameras)] for summary()."""
        rows = [("train", self.train, True)]
        if self.query is not None:
            rows += [("query", self.query, True), ("gallery", self.gallery, True)]
        return rows

    def summary(self):
        """Counts per split: identities, images and cameras (a multi-line string)."""
        table = [("split", "ids", "images", "cameras")]
        for split, items, cameras in self.summary_rows():
            table.append((split, str(_count(items, 1)), str(len(items)), str(_count(items, 2)) if cameras else "-"))
        width = max(len(row[0]) for row in table)
        lines = [f"{self.name} ({self.family}) at {self.root}: {self.num_classes} training classes"]
        lines += [f"  {row[0]:<{width}} {row[1]:>7} {row[2]:>8} {row[3]:>8}" for row in table]
        return "\n".join(lines)


class FolderDataset(Dataset):
    """Market-1501-style dataset: train / query / gallery folders of images named `<pid>_c<camera>...`.

    Subclasses give the three folder names, the file-name regex (groups: person/vehicle id, 1-based
    camera) and an example name. Id -1 (junk) is dropped everywhere; id 0 (distractors) stays in the gallery.
    """

    splits = ("bounding_box_train", "query", "bounding_box_test")
    pattern = re.compile(r"^(-?\d+)_c(\d+)")
    example = "0002_c1s1_000451_03.jpg"

    @property
    def layout(self):
        width = max(len(s) for s in self.splits) + 2
        lines = [f"{s + '/':<{width}} {self.example}, ..." for s in self.splits]
        return "\n".join(lines) + "\n(file names: <id>_c<camera>..., id -1 junk, id 0 distractor)"

    def load(self):
        train_dir, query_dir, gallery_dir = (os.path.join(self.root, s) for s in self.splits)
        for folder in (train_dir, query_dir, gallery_dir):
            self.require_dir(folder)
        train = self.require_items([it for it in self.parse_folder(train_dir) if it[1] != -1], train_dir)
        self.train, self.num_classes = relabel(train)
        self.query = self.require_items([it for it in self.parse_folder(query_dir) if it[1] != -1], query_dir)
        self.gallery = self.require_items([it for it in self.parse_folder(gallery_dir) if it[1] != -1], gallery_dir)

    def parse_name(self, path, name):
        """File name -> (raw id, 0-based camid); DatasetError naming the file when it does not parse."""
        match = self.pattern.match(name)
        if match is None or int(match.group(2)) < 1:
            raise DatasetError(f"file name does not parse: {path} (expected names like {self.example}: "
                               f"<id>_c<camera from 1>...)")
        return int(match.group(1)), int(match.group(2)) - 1

    def parse_folder(self, folder):
        items = []
        for name in self.scan_images(folder):
            path = os.path.join(folder, name)
            items.append((path, *self.parse_name(path, name)))
        return items


class MetricDataset(Dataset):
    """Fine-grained retrieval (deep metric learning protocol): the first half of the classes trains, the rest tests."""

    family = "metric"
    image_size = (256, 256)
    scoring = "retrieval"

    def test_protocol(self):
        """The test classes searched against themselves: Recall@K and NMI."""
        return Protocol((TestSplit(self.name, self.test),), scoring="retrieval")

    def split_classes(self, items, source):
        """(path, class from 1) items -> train (classes 1..C/2) and test (the rest), C the largest class."""
        if not items:
            raise DatasetError(f"empty split: no images listed in {source}")
        top = max(cls for _, cls in items)
        if top < 2:
            raise DatasetError(f"{source}: need at least 2 classes to split into train and test, got {top}")
        half = top // 2
        self.train, self.num_classes = relabel([(p, c, 0) for p, c in items if c <= half])
        self.test, _ = relabel([(p, c, 0) for p, c in items if c > half])
        self.require_items(self.train, f"{source} (classes 1..{half})")
        self.require_items(self.test, f"{source} (classes {half + 1}..{top})")

    def summary_rows(self):
        return [("train", self.train, False), ("test", self.test, False)]
