"""datasets/image_dataset.py: decoding, per-view transforms, unreadable images skipped and counted."""
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.image_dataset import ImageDataset, UnreadableImageWarning, collate_skip, read_image
from datasets.sampler import PKSampler
from datasets.seeded import SeededBatches, SeededDataset
from datasets.transforms import build_transform


def write_png(path, seed, size=(20, 12)):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def files(tmp_path):
    """Two good PNGs, a truncated JPEG, a text file named .jpg and a missing path."""
    good = [tmp_path / "0001_c1_a.png", tmp_path / "0002_c2_b.png"]
    pixels = [write_png(p, seed) for seed, p in enumerate(good)]
    buffer = io.BytesIO()
    Image.fromarray(pixels[0]).resize((64, 64)).save(buffer, format="JPEG")
    truncated = tmp_path / "0003_c1_truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    text = tmp_path / "0004_c1_text.jpg"
    text.write_text("not an image\n")
    return {"good": [str(p) for p in good], "pixels": pixels, "truncated": str(truncated), "text": str(text),
            "missing": str(tmp_path / "0005_c1_missing.jpg")}


def to_tensor(image):
    assert image.dtype == torch.uint8 and image.shape[0] == 3  # read_image's decoded RGB
    return image.float() / 255


def test_good_image_decoded_exactly(files):
    dataset = ImageDataset([(files["good"][0], 7, 1), (files["good"][1], 3, 0)], to_tensor)
    assert len(dataset) == 2
    img, label, camid = dataset[0]
    assert (label, camid) == (7, 1)
    np.testing.assert_array_equal((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), files["pixels"][0])
    img, label, camid = dataset[1]
    assert (label, camid) == (3, 0) and img.shape == (3, 20, 12)


def test_grey_and_rgba_images_become_rgb(tmp_path):
    grey, rgba, grey_jpeg = tmp_path / "grey.png", tmp_path / "rgba.png", tmp_path / "grey.jpg"
    Image.new("L", (5, 4), 77).save(grey)
    Image.new("RGBA", (5, 4), (1, 2, 3, 100)).save(rgba)
    Image.new("L", (16, 8), 200).save(grey_jpeg)
    for path, colour in ((grey, 77), (rgba, (1, 2, 3)), (grey_jpeg, 200)):
        img = read_image(path)
        assert img.dtype == torch.uint8 and img.shape == (3, *Image.open(path).size[::-1])
        assert (img == torch.tensor(colour, dtype=torch.uint8).view(-1, 1, 1)).all(), path


def test_jpeg_decoded_as_pillow_decodes_it(tmp_path):
    """torchvision.io and Pillow decode a JPEG to the same pixels (both libjpeg-turbo, the same IDCT)."""
    from sklearn.datasets import load_sample_images
    for i, photo in enumerate(load_sample_images().images):
        path = tmp_path / f"photo{i}.jpg"
        Image.fromarray(photo).save(path, quality=90)
        np.testing.assert_array_equal(read_image(path).permute(1, 2, 0).numpy(), np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("kind", ["truncated", "text", "missing"])
def test_unreadable_image_warns_with_its_path_and_returns_none(files, kind):
    dataset = ImageDataset([(files[kind], 5, 1)], to_tensor)
    with pytest.warns(UnreadableImageWarning, match="skipping unreadable image") as record:
        img, label, camid = dataset[0]
    assert img is None and (label, camid) == (5, 1)
    (message,) = [str(w.message) for w in record if w.category is UnreadableImageWarning]
    assert files[kind] in message
    assert ".cpp" not in message  # the reason, without torchvision's source location
    reason = {"truncated": "truncated", "text": "Unsupported image file", "missing": "No such file or directory"}[kind]
    assert reason in message


def test_collate_skip_drops_and_counts(files):
    items = [(files["good"][0], 4, 0), (files["truncated"], 5, 1), (files["good"][1], 6, 2), (files["text"], 7, 0)]
    dataset = ImageDataset(items, build_transform("reid", 16, 8, train=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imgs, labels, camids, skipped = collate_skip([dataset[i] for i in range(len(items))])
    assert sorted(str(w.message).split()[3].rstrip(":") for w in caught
                  if w.category is UnreadableImageWarning) == sorted([files["truncated"], files["text"]])
    assert imgs.shape == (2, 3, 16, 8) and imgs.dtype == torch.float32
    assert labels.tolist() == [4, 6] and labels.dtype == torch.int64
    assert camids.tolist() == [0, 2] and camids.dtype == torch.int64
    assert skipped == 2


def test_collate_skip_all_failed_is_an_empty_batch():
    imgs, labels, camids, skipped = collate_skip([(None, 1, 0), (None, 2, 1), (None, 3, 0)])
    assert imgs.shape[0] == 0 and imgs.ndim == 4 and imgs.dtype == torch.float32
    assert labels.shape == (0,) and labels.dtype == torch.int64 and camids.shape == (0,)
    assert skipped == 3


def test_transform_dict_chooses_by_camid(files):
    transforms = {0: lambda img: torch.zeros(1), 1: lambda img: torch.ones(1)}
    dataset = ImageDataset([(files["good"][0], 0, 1), (files["good"][1], 0, 0)], transforms)
    assert dataset[0][0].item() == 1 and dataset[1][0].item() == 0
    with pytest.raises(ValueError, match="no transform for camid 2"):
        ImageDataset([(files["good"][0], 0, 2)], transforms)
    with pytest.raises(TypeError, match="callable"):
        ImageDataset([(files["good"][0], 0, 0)], "resize")


def test_training_loader_skips_counts_and_repeats(files):
    """The loader train.py builds: PKSampler -> SeededBatches -> SeededDataset(ImageDataset) -> collate_skip."""
    paths = files["good"] + [files["truncated"]]
    items = [(paths[i % 3], i // 3, 0) for i in range(12)]  # 4 identities x 3 images, one of each unreadable
    train_set = SeededDataset(ImageDataset(items, build_transform("reid", 16, 8, train=True)))
    sampler = PKSampler([item[1] for item in items], batch_size=4, num_instances=2, seed=3)
    sampler.set_epoch(1)

    def run(num_workers):
        loader = DataLoader(train_set, batch_sampler=SeededBatches(sampler, 3, 1), collate_fn=collate_skip,
                            num_workers=num_workers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreadableImageWarning)
            return list(loader)

    batches = run(0)
    expected = list(sampler)
    assert len(batches) == len(sampler) == len(expected)
    for (imgs, labels, _, skipped), indices in zip(batches, expected):
        readable = [i for i in indices if i % 3 != 2]
        assert skipped == len(indices) - len(readable)
        assert labels.tolist() == [items[i][1] for i in readable]
        assert imgs.shape == (len(readable), 3, 16, 8)
    for first, again in zip(batches, run(2)):  # same crops and flips whatever the number of workers
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1]) and first[3] == again[3]


WORKER_SCRIPT = """
import sys
import torch
from torch.utils.data import DataLoader
from datasets.image_dataset import ImageDataset, collate_skip
dataset = ImageDataset([(sys.argv[1], 0, 0), (sys.argv[2], 1, 0)], lambda img: torch.zeros(3, 4, 4))
(imgs, labels, _, skipped), = list(DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate_skip))
print(skipped, labels.tolist(), tuple(imgs.shape))
"""


@pytest.mark.slow  # a fresh interpreter (pytest's warning capture would swallow the worker's warning)
def test_warning_from_a_loader_worker_reaches_stderr(files, repo_root):
    result = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, files["text"], files["good"][0]], cwd=repo_root,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "1 [1] (1, 3, 4, 4)"
    assert f"skipping unreadable image {files['text']}" in result.stderr
