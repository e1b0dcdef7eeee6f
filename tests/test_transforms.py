"""datasets/transforms.py: the release's transforms, checked against OpenCV (the release's library)
on real photographs: every deterministic step on its own, and every training transform end to end
with the random crops, angles and flips it drew."""
import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.transforms import v2

from datasets.transforms import build_transform, geometric_steps

SIZES = [(256, 128), (64, 32), (33, 17), (24, 40)]  # portrait, small, odd, landscape
MEAN_TOL, MAX_TOL = 0.5, 2  # |ours - OpenCV| in 1/255 units: mean and maximum over the pixels


@pytest.fixture(scope="module")
def photos():
    """The two photographs scikit-learn ships (427x640 RGB, uint8 HxWx3)."""
    return load_sample_images().images


def as_tensor(image):
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor, as read_image decodes a file."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def as_255(tensor):
    """(3, H, W) float in [0, 1] -> (H, W, 3) float64 in [0, 255] (exact for values from uint8)."""
    return tensor.permute(1, 2, 0).double().numpy() * 255


def assert_close_to_opencv(ours, expected, what=""):
    """ours: float (3, H, W) in [0, 1] or uint8 (3, H, W) tensor; expected: uint8 (H, W, 3) from OpenCV."""
    ours = as_255(ours) if ours.is_floating_point() else ours.permute(1, 2, 0).double().numpy()
    assert ours.shape == expected.shape, what
    diff = np.abs(ours - expected.astype(np.float64))
    assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, f"{what}: mean {diff.mean():.3f}, max {diff.max()}"


def cv2_resize(image, height, width):
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def cv2_pad(image, pad):
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT)  # edge pixel repeated


def cv2_rotate(image, angle):
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def random_image(height=45, width=30, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, size=(3, height, width), dtype=np.uint8))


# --- the deterministic steps against OpenCV ------------------------------------------------------

@pytest.mark.parametrize("height,width", [(256, 128), (64, 32), (33, 17), (900, 1200), (500, 300)])
def test_reid_test_transform_is_opencv_inter_linear(photos, height, width):
    """Down (no antialiasing: OpenCV's INTER_LINEAR does none), up, and down on one side only."""
    for photo in photos:
        out = build_transform("reid", height, width, train=False)(as_tensor(photo))
        assert out.dtype == torch.float32 and type(out) is torch.Tensor
        assert_close_to_opencv(out, cv2_resize(photo, height, width), f"{height}x{width}")


def test_antialiased_resize_would_fail_the_same_check(photos):
    """The tolerance tells the two resizes apart: PIL's (antialiased) shrink is not OpenCV's."""
    photo = photos[0]
    pil = np.asarray(Image.fromarray(photo).resize((64, 128), Image.BILINEAR))
    with pytest.raises(AssertionError, match="mean"):
        assert_close_to_opencv(as_tensor(pil), cv2_resize(photo, 128, 64))


@pytest.mark.parametrize("family,margin", [("metric", 32), ("university", 64)])
@pytest.mark.parametrize("height,width", [(256, 256), (384, 384), (64, 48)])
def test_metric_and_university_test_transforms_resize_then_centre_crop(photos, family, margin, height, width):
    for photo in photos:
        out = build_transform(family, height, width, train=False)(as_tensor(photo))
        half = margin // 2
        expected = cv2_resize(photo, height + margin, width + margin)[half:half + height, half:half + width]
        assert_close_to_opencv(out, expected, f"{family} {height}x{width}")
        for view in ("satellite", "drone"):
            if family == "university":
                assert torch.equal(build_transform(family, height, width, train=False, view=view)(as_tensor(photo)),
                                   out)


def test_release_sizes_of_the_fixed_size_families(photos):
    """CARS/CUB at the release's 256: resize 288, crop 256; University-1652 at 384: resize 448, crop 384."""
    photo = photos[1]
    expected = cv2_resize(photo, 288, 288)[16:16 + 256, 16:16 + 256]
    assert_close_to_opencv(build_transform("metric", 256, 256, train=False)(as_tensor(photo)), expected)
    expected = cv2_resize(photo, 448, 448)[32:32 + 384, 32:32 + 384]
    assert_close_to_opencv(build_transform("university", 384, 384, train=False)(as_tensor(photo)), expected)


@pytest.mark.parametrize("family,view,pad", [("reid", None, 8), ("metric", None, 8), ("university", "satellite", 12),
                                             ("university", "drone", 12)])
def test_padding_is_opencv_border_reflect(photos, family, view, pad):
    """The pad step of each training transform repeats the edge pixel, exactly as OpenCV's BORDER_REFLECT."""
    steps = [s for s in geometric_steps(family, 64, 48, train=True, view=view) if isinstance(s, v2.Pad)]
    assert len(steps) == 1 and steps[0].padding == pad
    photo = photos[0][100:160, 200:250]
    out = steps[0](v2.ToImage()(as_tensor(photo))).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, cv2_pad(photo, pad))
    reflect_101 = cv2.copyMakeBorder(photo, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)  # "reflect": not it
    assert not np.array_equal(out, reflect_101)


@pytest.mark.parametrize("pad", [0, 1, 8, 12])
def test_symmetric_pad_is_torchvisions(photos, pad):
    """SymmetricPad (flips and concatenation) gives torchvision's symmetric padding exactly, on plain
    tensors, on tv_tensors.Image (whose type it keeps) and, through torchvision's kernel, on PIL."""
    from datasets.transforms import SymmetricPad
    photo = photos[1][50:90, 300:333]
    for image in (as_tensor(photo), v2.ToImage()(as_tensor(photo)), as_tensor(photo).float() / 255):
        out = SymmetricPad(pad)(image)
        assert type(out) is type(image)
        assert torch.equal(out, v2.functional.pad(image.as_subclass(torch.Tensor), [pad], padding_mode="symmetric"))
    pil = SymmetricPad(pad)(Image.fromarray(photo))
    np.testing.assert_array_equal(np.asarray(pil), cv2_pad(photo, pad))


@pytest.mark.parametrize("angle", [-180.0, -137.5, -30.0, 7.3, 45.0, 90.0, 179.0])
def test_satellite_rotation_step_is_opencv_warp_affine(photos, angle):
    """Bilinear about the image centre ((W-1)/2, (H-1)/2 in pixel coordinates), counter-clockwise for
    positive angles, same size, zeros outside blended as OpenCV's BORDER_CONSTANT 0 blends them."""
    (rotation,) = [s for s in geometric_steps("university", 96, 80, train=True, view="satellite")
                   if isinstance(s, v2.RandomRotation)]
    assert rotation.degrees == [-180.0, 180.0]
    for photo in photos:
        square = cv2_resize(photo, 120, 100)  # odd centre offsets would show a half-pixel error
        out = rotation.transform(v2.ToImage()(as_tensor(square)), {"angle": angle})
        assert_close_to_opencv(out, cv2_rotate(square, angle), f"angle {angle}")
    if angle not in (-180.0, 180.0):  # the other direction is far off
        with pytest.raises(AssertionError):
            assert_close_to_opencv(out, cv2_rotate(square, -angle))


def test_pil_input_is_resized_as_the_tensor(photos):
    """A PIL image becomes a tensor before the resize: no PIL antialiasing sneaks in."""
    photo = photos[0]
    transform = build_transform("reid", 128, 64, train=False)
    assert torch.equal(transform(Image.fromarray(photo)), transform(as_tensor(photo)))


# --- the training transforms end to end against OpenCV --------------------------------------------

@pytest.fixture
def drawn(monkeypatch):
    """Records (step name, params) of every random crop, rotation and flip that is applied."""
    calls = []
    for cls in (v2.RandomCrop, v2.RandomRotation, v2.RandomHorizontalFlip):
        def transform(self, inpt, params, original=cls.transform, name=cls.__name__):
            calls.append((name, dict(params)))
            return original(self, inpt, params)
        monkeypatch.setattr(cls, "transform", transform)
    return calls


def opencv_train(photo, family, view, height, width, calls):
    """The release's training transform written with OpenCV, replaying the recorded draws."""
    calls = iter(calls)

    def crop(image):
        name, p = next(calls)
        assert name == "RandomCrop" and (p["height"], p["width"]) == (height, width)
        return image[p["top"]:p["top"] + height, p["left"]:p["left"] + width]

    if family == "reid":
        image = crop(cv2_pad(cv2_resize(photo, height, width), 8))
    elif family == "metric":
        image = crop(cv2_pad(crop(cv2_resize(photo, height + 32, width + 32)), 8))
    else:
        image = cv2_pad(crop(cv2_resize(photo, height + 64, width + 64)), 12)
        if view == "satellite":
            name, p = next(calls)
            assert name == "RandomRotation"
            image = cv2_rotate(image, p["angle"])
        image = crop(image)
    flips = list(calls)
    assert flips in ([], [("RandomHorizontalFlip", {})])
    return image[:, ::-1] if flips else image


@pytest.mark.parametrize("family,view,height,width", [
    ("reid", None, 256, 128), ("reid", None, 33, 17), ("metric", None, 256, 256), ("metric", None, 40, 24),
    ("university", "satellite", 384, 384), ("university", "satellite", 48, 40), ("university", "drone", 96, 64)])
def test_train_transform_is_the_release_opencv_pipeline(photos, drawn, family, view, height, width):
    transform = build_transform(family, height, width, train=True, view=view)
    flips, offsets, angles = 0, set(), []
    seeds = range(3) if height >= 256 else range(12)
    for seed in seeds:
        for i, photo in enumerate(photos):
            drawn.clear()
            torch.manual_seed(2 * seed + i)
            out = transform(as_tensor(photo))
            assert out.shape == (3, height, width) and out.dtype == torch.float32
            assert_close_to_opencv(out, opencv_train(photo, family, view, height, width, drawn), f"seed {seed}")
            flips += drawn[-1][0] == "RandomHorizontalFlip"
            offsets.update((p["top"], p["left"]) for name, p in drawn if name == "RandomCrop")
            angles += [p["angle"] for name, p in drawn if name == "RandomRotation"]
    runs = 2 * len(seeds)
    assert 0 < flips < runs and len(offsets) > 2
    if view == "satellite":
        assert len(angles) == runs and all(-180 <= a <= 180 for a in angles) and len(set(angles)) == runs


def test_rotation_angles_and_crop_offsets_cover_their_ranges(drawn):
    transform = build_transform("university", 24, 24, train=True, view="satellite")
    image = random_image(40, 40)
    for seed in range(300):
        torch.manual_seed(seed)
        transform(image)
    angles = [p["angle"] for name, p in drawn if name == "RandomRotation"]
    assert min(angles) < -170 and max(angles) > 170 and abs(np.mean(angles)) < 20
    second = [(p["top"], p["left"]) for name, p in drawn if name == "RandomCrop"][1::2]  # after the 12 padding
    assert {t for t, _ in second} == set(range(25)) == {left for _, left in second}


# --- general properties ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["reid", "metric", "university"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("height,width", SIZES)
def test_output_shape_dtype_range(family, train, height, width):
    view = "satellite" if family == "university" else None
    transform = build_transform(family, height, width, train=train, view=view)
    for source in (random_image(45, 30), random_image(20, 90, seed=1), Image.fromarray(np.zeros((7, 9, 3), np.uint8))):
        out = transform(source)
        assert type(out) is torch.Tensor  # plain tensor, not a tv_tensors.Image
        assert out.shape == (3, height, width) and out.dtype == torch.float32
        assert 0.0 <= out.min().item() and out.max().item() <= 1.0


def test_no_normalisation_constant_colour():
    colour = (10, 128, 255)
    image = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 70, 50).contiguous()
    for family in ("reid", "metric", "university"):
        out = build_transform(family, 32, 16, train=False)(image)
        expected = torch.tensor(colour, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 32, 16)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


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
