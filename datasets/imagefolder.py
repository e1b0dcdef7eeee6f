"""ImageNet-style classification data for pretrain.py: torchvision's ImageFolder layout, its DeiT-style
transforms and the shuffled batches of an epoch.

    <data-root>/train/<class>/<image>.{jpg,jpeg,png}
    <data-root>/val/<class>/<image>.{jpg,jpeg,png}

Classes are the sub-folders of train/, labelled 0..C-1 in sorted order (as torchvision.datasets.ImageFolder);
val/ may hold fewer classes but none that train/ lacks. ImageNet-1k: 1000 classes, 1,281,167 training and
50,000 validation images (Russakovsky et al., "ImageNet Large Scale Visual Recognition Challenge", IJCV
2015). Items are `(path, label, 0)`, as the ReID datasets' `(path, label, camid)`. Only names are read
here; unreadable images are skipped and counted while training (datasets.image_dataset).
"""
import math
import os

import numpy as np
import torch
from torchvision.transforms import v2

from datasets.base import DatasetError, is_image

LAYOUT = "<data-root>/train/<class>/<images> and <data-root>/val/<class>/<images>"
CROP_RATIO = 0.875  # validation: resize the shorter side to img_size / 0.875, centre crop (DeiT's 224 of 256)


def _class_folders(split_dir):
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _items(split_dir, classes, labels):
    items = []
    for name in classes:
        folder = os.path.join(split_dir, name)
        files = sorted(f for f in os.listdir(folder) if is_image(f))
        if not files:
            raise DatasetError(f"class folder {folder} holds no image (.jpg, .jpeg, .png); add its images or "
                               "remove the folder")
        items += [(os.path.join(folder, f), labels[name], 0) for f in files]
    return items


class ImageFolderData:
    """`train` and `val` item lists of an ImageFolder tree under `root`, with `classes` and `num_classes`.
    Raises DatasetError naming the folder and the fix for a missing split, a split without class
    folders, a val/ class that train/ lacks and an empty class folder."""

    def __init__(self, root):
        self.root = root
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(root, split)):
                raise DatasetError(f"dataset folder not found: {os.path.join(root, split)} (expected layout: {LAYOUT}; "
                                   "--data-root names the folder holding train/ and val/)")
        self.classes = _class_folders(os.path.join(root, "train"))
        if not self.classes:
            raise DatasetError(f"{os.path.join(root, 'train')} holds no class folders (expected layout: {LAYOUT})")
        val_classes = _class_folders(os.path.join(root, "val"))
        unknown = sorted(set(val_classes) - set(self.classes))
        if unknown:
            raise DatasetError(f"{os.path.join(root, 'val')} has class folders that train/ lacks: "
                               f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; a class must be "
                               "trained to be scored: add it to train/ or remove it from val/")
        labels = {name: i for i, name in enumerate(self.classes)}
        self.train = _items(os.path.join(root, "train"), self.classes, labels)
        self.val = _items(os.path.join(root, "val"), val_classes, labels)
        if not self.val:
            raise DatasetError(f"{os.path.join(root, 'val')} holds no class folders (expected layout: {LAYOUT})")

    @property
    def num_classes(self):
        return len(self.classes)

    def summary(self):
        return f"train: {self.num_classes} classes, {len(self.train)} images; val: {len(self.val)} images"


def train_transform(img_size, randaug_magnitude=9, reprob=0.25):
    """DeiT's training transform in torchvision v2, on a uint8 (3, h, w) image -> float (3, S, S) in [0, 1]
    (no mean/std normalisation, as the release's backbone): random resized crop (scale 0.08-1, bilinear),
    horizontal flip, RandAugment(num_ops 2, `randaug_magnitude` of 31 bins; 0 = off), then random erasing
    with probability `reprob` (per-pixel normal noise, as DeiT's mode "pixel"; 0 = off)."""
    steps = [v2.RandomResizedCrop(img_size, antialias=True), v2.RandomHorizontalFlip()]
    if randaug_magnitude > 0:
        steps.append(v2.RandAugment(num_ops=2, magnitude=randaug_magnitude))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if reprob > 0:
        steps.append(v2.RandomErasing(p=reprob, value="random"))
    return v2.Compose(steps)


def val_transform(img_size):
    """Shorter side to img_size / 0.875 (bilinear, antialiased), centre crop img_size x img_size, [0, 1]."""
    return v2.Compose([v2.Resize(int(math.floor(img_size / CROP_RATIO)), antialias=True), v2.CenterCrop(img_size),
                       v2.ToDtype(torch.float32, scale=True)])


class ShuffledBatches(torch.utils.data.Sampler):
    """Batch sampler of an epoch: the `num_items` indices in the order of a permutation drawn from
    (seed, epoch), cut into full batches of `batch_size` (the rest of the epoch is dropped, as DeiT's
    loader); under torchrun rank r takes items r*B/W .. (r+1)*B/W - 1 of each batch, so the ranks' shares
    put together are the batch one process would see. Call `set_epoch` before iterating."""

    def __init__(self, num_items, batch_size, seed=0, rank=0, world_size=1):
        if batch_size % world_size:
            raise ValueError(f"a batch of {batch_size} does not split over {world_size} processes; give a "
                             f"multiple of {world_size}")
        if num_items < batch_size:
            raise ValueError(f"a batch of {batch_size} needs at least as many training images, there are "
                             f"{num_items}; give a smaller batch")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_items // self.batch_size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items).tolist()
        share = self.batch_size // self.world_size
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start + self.rank * share:start + (self.rank + 1) * share]
