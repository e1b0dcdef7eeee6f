"""The release's train and test transforms, built from torchvision.transforms.v2.

Every transform maps an RGB image, a uint8 tensor (3, h, w) as `datasets.image_dataset.read_image`
decodes it, to a float32 tensor (3, H, W) with values in [0, 1] (the uint8 values divided by 255;
there is no mean/std normalisation, the release trained LEViT that way). The geometric steps run
on the uint8 tensor and the conversion to float comes last. They are the release's OpenCV steps:

- resize: bilinear with half-pixel centres and no antialiasing, also when shrinking (OpenCV's
  INTER_LINEAR; torchvision's tensor resize with antialias=False). A PIL image is accepted too and
  is first turned into a tensor, so it is resized the same way (PIL's own resize would antialias).
- pad N symmetric: the edge pixel repeated outwards (OpenCV's BORDER_REFLECT, "abc|cba").
- rotation: bilinear about the image centre, same size, zeros outside the source (OpenCV's
  warpAffine with INTER_LINEAR and BORDER_CONSTANT 0). torchvision's rotate with fill=None is
  exactly that; with fill=0 it would also darken the pixels next to the filled corners.

The random steps draw from torch's global generator, so `torch.manual_seed` (or
datasets.seeded.SeededDataset) makes them reproducible.

- reid (market1501, dukemtmc, msmt17, veri776, vehicleid, npdetected, nplabeled)
    train: resize HxW, pad 8 symmetric, random crop HxW, horizontal flip (p 0.5)
    test:  resize HxW
- metric (car196, cub200)
    train: resize (H+32)x(W+32), random crop HxW, pad 8 symmetric, random crop HxW, flip
    test:  resize (H+32)x(W+32), centre crop HxW
- university (University-1652)
    train satellite: resize (H+64)x(W+64), random crop HxW, pad 12 symmetric, rotation by an
        angle uniform in [-180, 180] degrees, random crop HxW, flip
    train drone (and street, google): the same without the rotation
    test (every view): resize (H+64)x(W+64), centre crop HxW

Sizes. The release writes the fine-grained and University-1652 sizes as constants: CARS and CUB
resize to 288x288 and crop 256x256, University-1652 resizes to 448x448 and crops 384x384. Its
commands for them pass --img-height/--img-width 256 (CARS, CUB) and 384 (University-1652), so the
constants are (H+32)x(W+32) -> HxW and (H+64)x(W+64) -> HxW at the release's sizes, and that is
how they follow other --img-height/--img-width values here.
"""

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from utils.checks import positive_int

FAMILIES = ("reid", "metric", "university")
VIEWS = {"satellite": 0, "drone": 1, "street": 2, "google": 3}  # University-1652 view name -> camid
METRIC_MARGIN = 32  # fine-grained: resize to (H+32)x(W+32) (the release's 288 at 256) before cropping HxW
UNIVERSITY_MARGIN = 64  # University-1652: resize to (H+64)x(W+64) (the release's 448 at 384)
REID_PAD = 8  # reid and metric families
UNIVERSITY_PAD = 12
ROTATION_DEGREES = 180  # University-1652 satellite: angle uniform in [-180, 180]


def _resize(height, width):
    # OpenCV INTER_LINEAR: bilinear, half-pixel centres, no antialiasing when shrinking
    return v2.Resize((height, width), interpolation=v2.InterpolationMode.BILINEAR, antialias=False)


class SymmetricPad(v2.Pad):
    """v2.Pad(padding, padding_mode="symmetric"): the edge pixel repeated (OpenCV's BORDER_REFLECT).

    The same values as torchvision's kernel; on a tensor they are made by flipping the border strips
    and concatenating, where torchvision's kernel gathers every pixel through a 2-D index (which
    took about half of a Market-1501 image's transform time in a profile). PIL images go to
    torchvision's kernel."""

    def __init__(self, padding: int):
        super().__init__(padding, padding_mode="symmetric")

    def transform(self, inpt, params):
        p = self.padding
        if not isinstance(inpt, torch.Tensor) or not 0 < p <= min(inpt.shape[-2:]):
            return super().transform(inpt, params)
        x = torch.cat([inpt[..., :p].flip(-1), inpt, inpt[..., -p:].flip(-1)], dim=-1)  # (C, H, W + 2p)
        x = torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2)  # (C, H + 2p, W + 2p)
        return tv_tensors.wrap(x, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else x


def _pad(padding):
    return SymmetricPad(padding)


def geometric_steps(family, height, width, train, view=None):
    """The list of v2 steps of one family's transform before the conversion to float (see the
    module docstring). They work on uint8 tensors and, with PIL's own resampling, on PIL images."""
    size = (height, width)
    if family == "reid":
        steps = [_resize(height, width)]
        if train:
            steps += [_pad(REID_PAD), v2.RandomCrop(size), v2.RandomHorizontalFlip()]
        return steps
    margin = METRIC_MARGIN if family == "metric" else UNIVERSITY_MARGIN
    steps = [_resize(height + margin, width + margin)]
    if not train:
        return steps + [v2.CenterCrop(size)]
    if family == "metric":
        return steps + [v2.RandomCrop(size), _pad(REID_PAD), v2.RandomCrop(size), v2.RandomHorizontalFlip()]
    steps += [v2.RandomCrop(size), _pad(UNIVERSITY_PAD)]
    if view == "satellite":
        # fill=None: zeros outside the source, blended as OpenCV's BORDER_CONSTANT 0 blends them
        steps.append(v2.RandomRotation(ROTATION_DEGREES, interpolation=v2.InterpolationMode.BILINEAR, fill=None))
    return steps + [v2.RandomCrop(size), v2.RandomHorizontalFlip()]


def to_float():
    """The last steps: uint8 image tensor -> plain float32 tensor (3, H, W) in [0, 1], values / 255."""
    return [v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]


def build_transform(family, height, width, train, view=None):
    """Transform of one family: a callable, uint8 tensor (3, h, w) RGB -> float32 tensor (3, height,
    width) in [0, 1]. (A PIL RGB image also works; it is converted to a tensor first.)

    `view` ("satellite", "drone", "street" or "google") picks the University-1652 view's transform;
    with family "university", train=True and view=None the result is a dict {camid: transform}
    (0 satellite, 1 drone, 2 street, 3 google) for `ImageDataset`. Test transforms are the same for
    every view.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown dataset family {family!r}; expected one of {', '.join(FAMILIES)}")
    for name, value in (("height", height), ("width", width)):
        positive_int(f"image {name}", value)
    height, width = int(height), int(width)
    if view is not None and family != "university":
        raise ValueError(f"view {view!r} applies to the university family only, not {family!r}")
    if view is not None and view not in VIEWS:
        raise ValueError(f"unknown University-1652 view {view!r}; expected one of {', '.join(VIEWS)}")
    if family == "university" and train and view is None:
        return {camid: build_transform(family, height, width, train=True, view=name) for name, camid in VIEWS.items()}
    # ToImage first: a PIL input becomes a uint8 tensor before any resampling
    return v2.Compose([v2.ToImage()] + geometric_steps(family, height, width, train, view) + to_float())
