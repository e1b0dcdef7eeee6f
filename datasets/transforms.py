"""The release's train and test transforms, built from torchvision.transforms.v2.

Every transform maps a PIL RGB image to a float32 tensor (3, H, W) with values in [0, 1]; there is
no mean/std normalisation (the release trained LEViT that way). The geometric steps run on the PIL
image, as in the release, and the random ones draw from torch's global generator, so
`torch.manual_seed` (or utils.checkpoint.SeededDataset) makes them reproducible.

- reid (market1501, dukemtmc, msmt17, veri776, vehicleid, npdetected, nplabeled)
    train: resize HxW, pad 8 (reflect), random crop HxW, horizontal flip
    test:  resize HxW
- metric (car196, cub200)
    train: resize (H+32)x(W+32), random crop HxW, pad 8 (zeros), random crop HxW, horizontal flip
    test:  resize (H+32)x(W+32), centre crop HxW
- university (University-1652, as its official baseline, bicubic resizing)
    train drone / street / google: resize HxW, pad 10 (edge), random crop HxW, horizontal flip
    train satellite: resize HxW, pad 10 (edge), random rotation in [-90, 90], random crop HxW,
        horizontal flip
    test (every view): resize HxW
"""
import numbers

import torch
from torchvision.transforms import v2

from datasets.university1652 import VIEWS  # University-1652 view name -> camid

FAMILIES = ("reid", "metric", "university")
METRIC_MARGIN = 32  # fine-grained: resize to (H+32)x(W+32) before cropping HxW
REID_PAD = 8
UNIVERSITY_PAD = 10


def _to_float():
    # PIL uint8 -> plain float32 tensor (3, H, W) in [0, 1]
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]


def build_transform(family, height, width, train, view=None):
    """Transform of one family: a callable PIL.Image (RGB) -> float32 tensor (3, height, width) in [0, 1].

    `view` ("satellite", "drone", "street" or "google") picks the University-1652 view's transform;
    with family "university", train=True and view=None the result is a dict {camid: transform}
    (0 satellite, 1 drone, 2 street, 3 google) for `ImageDataset`. Test transforms are the same for
    every view.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown dataset family {family!r}; expected one of {', '.join(FAMILIES)}")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"image {name} must be a positive integer, got {value!r}")
    height, width = int(height), int(width)
    if view is not None and family != "university":
        raise ValueError(f"view {view!r} applies to the university family only, not {family!r}")
    if view is not None and view not in VIEWS:
        raise ValueError(f"unknown University-1652 view {view!r}; expected one of {', '.join(VIEWS)}")
    size = (height, width)

    if family == "reid":
        steps = [v2.Resize(size)]
        if train:
            steps += [v2.Pad(REID_PAD, padding_mode="reflect"), v2.RandomCrop(size), v2.RandomHorizontalFlip()]
        return v2.Compose(steps + _to_float())

    if family == "metric":
        steps = [v2.Resize((height + METRIC_MARGIN, width + METRIC_MARGIN))]
        if train:
            steps += [v2.RandomCrop(size), v2.Pad(REID_PAD), v2.RandomCrop(size), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.CenterCrop(size)]
        return v2.Compose(steps + _to_float())

    resize = v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC)
    if not train:
        return v2.Compose([resize] + _to_float())
    if view is None:
        return {camid: build_transform(family, height, width, train=True, view=name) for name, camid in VIEWS.items()}
    steps = [resize, v2.Pad(UNIVERSITY_PAD, padding_mode="edge")]
    if view == "satellite":
        steps.append(v2.RandomAffine(degrees=90))  # rotation only, nearest neighbour, zero fill (the baseline's)
    steps += [v2.RandomCrop(size), v2.RandomHorizontalFlip()]
    return v2.Compose(steps + _to_float())
