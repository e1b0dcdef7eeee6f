"""datasets/transforms.py: the release's transforms, checked pixel for pixel against Pillow."""
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import build_transform

SIZES = [(256, 128), (64, 32), (33, 17), (24, 40)]  # portrait, small, odd, landscape


def random_image(height=45, width=30, seed=0, low=1):
    """An RGB PIL image of random colours in [low, 255] (low=1: no black pixel, so zero padding shows)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, 256, size=(height, width, 3), dtype=np.uint8))


def as_uint8(tensor):
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, exact for values that came from uint8."""
    return (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def find_window(out, source):
    """Offsets (y, x, flipped) where `out` (h, w, 3) appears in `source`, flipped horizontally or not."""
    h, w = out.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(source, (h, w, 3))[:, :, 0]  # (Y, X, h, w, 3)
    hits = []
    for flipped, target in ((False, out), (True, out[:, ::-1])):
        ys, xs = np.nonzero((windows == target).all(axis=(2, 3, 4)))
        hits += [(int(y), int(x), flipped) for y, x in zip(ys, xs)]
    return hits


@pytest.mark.parametrize("family", ["reid", "metric", "university"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("height,width", SIZES)
def test_output_shape_dtype_range(family, train, height, width):
    view = "satellite" if family == "university" else None
    transform = build_transform(family, height, width, train=train, view=view)
    for source in (random_image(45, 30), random_image(20, 90, seed=1)):
        out = transform(source)
        assert type(out) is torch.Tensor  # plain tensor, not a tv_tensors.Image
        assert out.shape == (3, height, width) and out.dtype == torch.float32
        assert 0.0 <= out.min().item() and out.max().item() <= 1.0


def test_no_normalisation_constant_colour():
    colour = (10, 128, 255)
    image = Image.new("RGB", (50, 70), colour)
    for family in ("reid", "metric", "university"):
        out = build_transform(family, 32, 16, train=False)(image)
        expected = torch.tensor(colour, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 32, 16)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_reid_and_university_test_transforms_are_pillow_resizes():
    image = random_image(45, 30)
    reid = as_uint8(build_transform("reid", 33, 17, train=False)(image))
    np.testing.assert_array_equal(reid, np.asarray(image.resize((17, 33), Image.BILINEAR)))
    for view in (None, "satellite", "drone"):
        uni = as_uint8(build_transform("university", 40, 24, train=False, view=view)(image))
        np.testing.assert_array_equal(uni, np.asarray(image.resize((24, 40), Image.BICUBIC)))


def test_metric_test_transform_is_resize_plus_32_then_centre_crop():
    image = random_image(45, 30)
    out = as_uint8(build_transform("metric", 24, 40, train=False)(image))
    resized = np.asarray(image.resize((40 + 32, 24 + 32), Image.BILINEAR))
    np.testing.assert_array_equal(out, resized[16:16 + 24, 16:16 + 40])


@pytest.mark.parametrize("family", ["reid", "metric", "university"])
def test_test_transforms_are_deterministic(family):
    transform = build_transform(family, 33, 17, train=False)
    image = random_image()
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(1)
    assert torch.equal(first, transform(image))


@pytest.mark.parametrize("family,view", [("reid", None), ("metric", None), ("university", "satellite"),
                                         ("university", "drone")])
def test_train_transforms_reproducible_under_manual_seed(family, view):
    transform = build_transform(family, 33, 17, train=True, view=view)
    image = random_image()
    outs = []
    for seed in (5, 5, 6, 7, 8):
        torch.manual_seed(seed)
        outs.append(transform(image))
    assert torch.equal(outs[0], outs[1])
    assert any(not torch.equal(outs[0], o) for o in outs[2:])  # the crop/flip really depends on the seed


def test_reid_train_is_a_crop_of_the_reflect_padded_resize():
    image = random_image(45, 30)
    height, width = 33, 17
    resized = np.asarray(image.resize((width, height), Image.BILINEAR))
    padded = np.pad(resized, ((8, 8), (8, 8), (0, 0)), mode="reflect")
    transform = build_transform("reid", height, width, train=True)
    offsets, flips = set(), set()
    for seed in range(30):
        torch.manual_seed(seed)
        hits = find_window(as_uint8(transform(image)), padded)
        assert hits, f"seed {seed}: output is not a window of the reflect-padded resized image"
        offsets.update((y, x) for y, x, _ in hits)
        flips.update(f for _, _, f in hits)
    assert len(offsets) > 5 and flips == {False, True}
    assert all(0 <= y <= 16 and 0 <= x <= 16 for y, x in offsets)


def test_university_drone_train_is_a_crop_of_the_edge_padded_bicubic_resize():
    image = random_image(45, 30)
    height, width = 24, 20
    resized = np.asarray(image.resize((width, height), Image.BICUBIC))
    padded = np.pad(resized, ((10, 10), (10, 10), (0, 0)), mode="edge")
    transform = build_transform("university", height, width, train=True, view="drone")
    offsets = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = as_uint8(transform(image))
        hits = find_window(out, padded)
        assert hits, f"seed {seed}: output is not a window of the edge-padded resized image"
        offsets.update((y, x) for y, x, _ in hits)
        assert out.min() > 0  # edge padding, no rotation: no black fill
    assert len(offsets) > 5


def test_university_satellite_train_rotates():
    image = random_image(60, 60)  # no black pixel: black appears only where the rotation filled
    satellite = build_transform("university", 48, 48, train=True, view="satellite")
    black = []
    for seed in range(10):
        torch.manual_seed(seed)
        black.append(int((as_uint8(satellite(image)) == 0).all(axis=2).sum()))
    assert sum(b > 0 for b in black) >= 5, black


def test_university_train_without_view_is_a_dict_per_camid():
    transforms = build_transform("university", 32, 32, train=True)
    assert sorted(transforms) == [0, 1, 2, 3]
    image = random_image(60, 60)
    for camid, transform in transforms.items():
        torch.manual_seed(0)
        out = transform(image)
        assert out.shape == (3, 32, 32)
        if camid != 0:  # drone / street / google: the same transform as "drone"
            torch.manual_seed(0)
            assert torch.equal(out, build_transform("university", 32, 32, train=True, view="drone")(image))


def test_metric_train_is_resize_crop_zero_pad_crop():
    height, width = 24, 16
    image = random_image(45, 30)
    resized = np.asarray(image.resize((width + 32, height + 32), Image.BILINEAR))
    transform = build_transform("metric", height, width, train=True)
    padded_outputs = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = as_uint8(transform(image))
        filled = (out != 0).any(axis=2)  # False only on the zero padding (the image has no black pixel)
        rows, cols = np.nonzero(filled.any(axis=1))[0], np.nonzero(filled.any(axis=0))[0]
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        assert top <= 8 and height - bottom <= 8 and left <= 8 and width - right <= 8
        assert filled[top:bottom, left:right].all()
        assert find_window(out[top:bottom, left:right], resized), f"seed {seed}: not a window of the resize"
        padded_outputs += (top, bottom, left, right) != (0, height, 0, width)
    assert padded_outputs > 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(family="person", height=8, width=8, train=True), "unknown dataset family 'person'"),
    (dict(family="reid", height=0, width=8, train=True), "height must be a positive integer"),
    (dict(family="reid", height=8, width=8.5, train=False), "width must be a positive integer"),
    (dict(family="reid", height=8, width=8, train=False, view="drone"), "university family only"),
    (dict(family="university", height=8, width=8, train=True, view="aerial"), "unknown University-1652 view"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_transform(**kwargs)
