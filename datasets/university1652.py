"""University-1652: drone / satellite / street views of university buildings, for geo-localisation.

Official layout (`--dataset-root`/University-Release, as unpacked from University-Release.zip)::

    University-Release/
        train/
            satellite/<building id>/<image>.jpg     e.g. train/satellite/0839/0839.jpg (one per building)
            drone/<building id>/<image>.jpeg        e.g. train/drone/0839/image-01.jpeg (54 per building)
            street/<building id>/<image>.jpg        (not used for training, as the release)
            google/<building id>/<image>.jpg        (not used)
        test/
            query_satellite/<id>/...   gallery_satellite/<id>/...
            query_drone/<id>/...       gallery_drone/<id>/...
            query_street/<id>/...      gallery_street/<id>/...

Building ids are 4-digit folder names; the label of a test item is int(folder name). Train items are
the satellite (camid 0) and drone (camid 1) images with labels 0..C-1 by building id. Protocols
(`make_split`): satellite2drone = query_satellite against gallery_drone; drone2satellite =
query_drone against gallery_satellite.

Statistics (as published): 1,652 buildings of 72 universities. train: 701 buildings of 33
universities, 50,218 images (701 satellite, 37,854 drone, 11,663 street); test: 951 buildings of 39
universities: drone2satellite query 37,855 drone images of 701 buildings, gallery 951 satellite
images; satellite2drone query 701 satellite images, gallery 51,355 drone images of 951 buildings.

Citation: Z. Zheng, Y. Wei, Y. Yang. University-1652: A Multi-view Multi-source Benchmark for
Drone-based Geo-localization. ACM Multimedia 2020.
"""
import os

from datasets.base import Dataset, DatasetError, is_image, relabel
from datasets.protocol import Protocol, TestSplit
from datasets.transforms import VIEWS  # view name -> camid
TRAIN_VIEWS = ("satellite", "drone")
DIRECTIONS = {"satellite2drone": ("query_satellite", "gallery_drone"),
              "drone2satellite": ("query_drone", "gallery_satellite")}


class University1652(Dataset):
    name = "university1652"
    family = "university"
    folder = "University-Release"
    image_size = (384, 384)
    protocol_options = {"direction": "satellite2drone"}
    layout = """\
train/
    satellite/<id>/<image>.jpg        e.g. train/satellite/0839/0839.jpg
    drone/<id>/<image>.jpeg           e.g. train/drone/0839/image-01.jpeg
    street/<id>/..., google/<id>/...  (optional, not used)
test/
    query_satellite/<id>/...   gallery_drone/<id>/...       (satellite2drone)
    query_drone/<id>/...       gallery_satellite/<id>/...   (drone2satellite)"""

    def load(self):
        train_dir = self.require_dir(os.path.join(self.root, "train"))
        items = []
        for view in TRAIN_VIEWS:
            items += self.scan_view(os.path.join(train_dir, view), VIEWS[view])
        self.train, self.num_classes = relabel(items)
        self.test_dir = self.require_dir(os.path.join(self.root, "test"))
        for folders in DIRECTIONS.values():
            for folder in folders:
                self.require_dir(os.path.join(self.test_dir, folder))
        self._tests = {}

    def scan_view(self, view_dir, camid):
        """[(path, building id, camid)] of `view_dir`/<id>/<images>."""
        self.require_dir(view_dir)
        with os.scandir(view_dir) as entries:
            ids = sorted(e.name for e in entries if e.is_dir())
        items = []
        for building in ids:
            if not building.isdigit():
                raise DatasetError(f"folder name does not parse: {os.path.join(view_dir, building)} "
                                   f"(expected a building id such as 0839)")
            folder = os.path.join(view_dir, building)
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries if is_image(e.name))
            items += [(os.path.join(folder, name), int(building), camid) for name in names]
        return self.require_items(items, view_dir)

    def test_folder(self, folder):
        """[(path, building id, camid)] of test/<folder> (e.g. 'query_drone'), read once."""
        if folder not in self._tests:
            view = folder.split("_", 1)[1]
            self._tests[folder] = self.scan_view(os.path.join(self.test_dir, folder), VIEWS[view])
        return self._tests[folder]

    def make_split(self, direction):
        """(query, gallery) items for "satellite2drone" or "drone2satellite"; labels are building ids."""
        if direction not in DIRECTIONS:
            raise DatasetError(f"unknown University-1652 direction {direction!r}; choose one of "
                               f"{', '.join(DIRECTIONS)}")
        query, gallery = DIRECTIONS[direction]
        return self.test_folder(query), self.test_folder(gallery)

    def sampler_views(self):
        """Each training item's view: every building's K images are 1 satellite + K-1 drone (the release's)."""
        return [item[2] for item in self.train]

    def test_protocol(self, direction="satellite2drone"):
        """One direction: its query view's images ranked against the other view's gallery."""
        query, gallery = self.make_split(direction)
        query_view, gallery_view = direction.split("2")
        return Protocol((TestSplit(f"{self.name}_{direction}", query, gallery, query_view, gallery_view),))

    def summary_rows(self):
        rows = [(f"train {view}", [it for it in self.train if it[2] == VIEWS[view]], False) for view in TRAIN_VIEWS]
        folders = [folder for pair in DIRECTIONS.values() for folder in pair]
        return rows + [(f"test {folder}", self.test_folder(folder), False) for folder in folders]
