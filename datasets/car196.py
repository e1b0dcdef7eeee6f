"""Stanford Cars (Cars196) for fine-grained retrieval, deep-metric-learning split.

Official layout (`--dataset-root`/CARS: car_ims.tgz and cars_annos.mat of the Stanford release)::

    CARS/
        cars_annos.mat    MATLAB struct array `annotations` with fields relative_im_path
                          ('car_ims/000001.jpg'), bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1..196),
                          test (0/1); and `class_names`
        car_ims/000001.jpg, ...

Deep-metric-learning protocol: classes 1..98 train, classes 99..196 test (the file's `test` flag,
the classification split, is ignored). Generally: C = the largest class, classes 1..C/2 train.
Bounding boxes are not used.

Statistics (as published): 196 classes (make, model, year), 16,185 images (8,144 train / 8,041
test in the classification split). DML split: train 98 classes, 8,054 images; test 98 classes,
8,131 images.

Citation: J. Krause, M. Stark, J. Deng, L. Fei-Fei. 3D Object Representations for Fine-Grained
Categorization. 4th IEEE Workshop on 3D Representation and Recognition (3dRR-13), ICCV 2013.
"""
import os

import numpy as np

from datasets.base import DatasetError, FileIndex, MetricDataset

FIELDS = ("relative_im_path", "class")


def _scalar(value):
    """One value of a loadmat struct field: numpy wraps each in a (1, 1) or (1,) array."""
    return np.asarray(value).ravel()[0]


def read_annotations(mat_path):
    """[(relative image path, class)] of the `annotations` struct array in cars_annos.mat."""
    from scipy.io import loadmat  # here: only car196 reads a .mat file, and scipy.io is slow to import
    from scipy.io.matlab import MatReadError

    try:
        # no squeeze_me: a one-element struct array stays an array, so both shapes read the same way
        mat = loadmat(mat_path)
    except (MatReadError, ValueError, OSError) as err:
        raise DatasetError(f"cannot read {mat_path} as a MATLAB file: {err}") from None
    annotations = mat.get("annotations")
    names = getattr(getattr(annotations, "dtype", None), "names", None) or ()
    missing = [field for field in FIELDS if field not in names]
    if missing:
        raise DatasetError(f"{mat_path}: expected a struct array 'annotations' with fields "
                           f"{', '.join(FIELDS)}; missing {', '.join(missing)}")
    rows = []
    for i, record in enumerate(annotations.ravel()):
        try:
            rows.append((str(_scalar(record["relative_im_path"])), int(_scalar(record["class"]))))
        except (IndexError, TypeError, ValueError):
            raise DatasetError(f"{mat_path}, annotation {i + 1}: cannot read relative_im_path and class "
                               f"from {record!r}") from None
    return rows


class Cars196(MetricDataset):
    name = "car196"
    folder = "CARS"
    layout = """\
cars_annos.mat    struct array 'annotations': relative_im_path ('car_ims/000001.jpg'), bbox_x1, bbox_y1,
                  bbox_x2, bbox_y2, class (1..196), test (0/1); 'class_names'
car_ims/000001.jpg, ..."""

    def load(self):
        mat_path = self.require_file(os.path.join(self.root, "cars_annos.mat"))
        index = FileIndex()
        items = []
        for i, (rel, cls) in enumerate(read_annotations(mat_path), 1):
            path = os.path.join(self.root, rel)
            if cls < 1:
                raise DatasetError(f"{mat_path}, annotation {i}: class must be 1 or more, got {cls}")
            if not index.exists(path):
                raise DatasetError(f"{mat_path}, annotation {i}: listed image not found: {path}")
            items.append((path, cls))
        self.split_classes(items, mat_path)
