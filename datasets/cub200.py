"""Caltech-UCSD Birds-200-2011 (CUB-200-2011) for fine-grained retrieval, deep-metric-learning split.

Official layout (`--dataset-root`/CUB_200_2011, as unpacked from CUB_200_2011.tgz)::

    CUB_200_2011/
        images.txt               lines '<image id> <path under images/>',
                                 e.g. '1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg'
        image_class_labels.txt   lines '<image id> <class id 1..200>', e.g. '1 1'
        images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg, ...

(classes.txt, train_test_split.txt, bounding_boxes.txt, parts/ and attributes/ are not used.)

Deep-metric-learning protocol: classes 1..100 train, classes 101..200 test. Generally: C = the
largest class, classes 1..C/2 train.

Statistics (as published): 200 bird species, 11,788 images. DML split: train 100 classes, 5,864
images; test 100 classes, 5,924 images.

Citation: C. Wah, S. Branson, P. Welinder, P. Perona, S. Belongie. The Caltech-UCSD Birds-200-2011
Dataset. Technical Report CNS-TR-2011-001, California Institute of Technology, 2011.
"""
import os

from datasets.base import DatasetError, FileIndex, MetricDataset, list_error, parse_int, read_list


class CUB200(MetricDataset):
    name = "cub200"
    folder = "CUB_200_2011"
    layout = """\
images.txt               '<image id> <path under images/>' per line
image_class_labels.txt   '<image id> <class id from 1>' per line
images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg, ..."""

    def load(self):
        images_txt = self.require_file(os.path.join(self.root, "images.txt"))
        labels_txt = self.require_file(os.path.join(self.root, "image_class_labels.txt"))
        image_dir = self.require_dir(os.path.join(self.root, "images"))
        classes = {}
        for lineno, (image_id, cls) in read_list(labels_txt, 2, "<image id> <class id>"):
            cls = parse_int(cls, labels_txt, lineno, "class id")
            if cls < 1:
                raise list_error(labels_txt, lineno, f"class id must be 1 or more, got {cls}")
            classes[image_id] = cls
        index = FileIndex()
        items = []
        for lineno, (image_id, rel) in read_list(images_txt, 2, "<image id> <path under images/>"):
            if image_id not in classes:
                raise list_error(images_txt, lineno, f"image id {image_id} has no line in {labels_txt}")
            path = os.path.join(image_dir, rel)
            if not index.exists(path):
                raise list_error(images_txt, lineno, f"listed image not found: {path}")
            items.append((path, classes[image_id]))
        if not items:
            raise DatasetError(f"empty split: no images listed in {images_txt}")
        self.split_classes(items, images_txt)
