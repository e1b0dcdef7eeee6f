"""A tiny, learnable ImageFolder for pretrain.py's tests and its documented dry run.

    python -m datasets.shapes --root data/shapes --classes 4 --train-per-class 24 --val-per-class 8 --size 64

Writes `root/train/<class>/*.png` and `root/val/<class>/*.png` (datasets.imagefolder's layout). Class c is a
filled shape (disc, square, triangle, cross, ring, bar, repeating after 6) in a colour of its own (hues
spread evenly around the colour wheel), placed at a random position and scale on a dark, noisy
background: a few epochs tell the classes apart. One numpy generator seeded by `seed` draws everything,
so a seed gives identical files.
"""
import argparse
import colorsys
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")


def _draw_shape(draw, shape, cx, cy, r, colour):
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        w = max(r // 3, 1)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(r // 3, 1))
    else:  # bar
        draw.rectangle((cx - r, cy - max(r // 3, 1), cx + r, cy + max(r // 3, 1)), fill=colour)


def draw_image(label, num_classes, size, rng):
    """One RGB image (PIL) of class `label`: its shape and colour on a noisy dark background."""
    hue = label / num_classes
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, 0.95))
    background = rng.integers(0, 70, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(background)
    r = int(rng.uniform(0.22, 0.38) * size)
    cx, cy = (int(rng.integers(r, size - r + 1)) for _ in range(2))
    _draw_shape(ImageDraw.Draw(img), SHAPES[label % len(SHAPES)], cx, cy, r, colour)
    return img


def generate_imagefolder(root, classes=4, train_per_class=24, val_per_class=8, size=64, seed=0):
    """Write the ImageFolder tree under `root` (train/ and val/, one folder per class) and return `root`."""
    if classes < 2 or train_per_class < 1 or val_per_class < 1 or size < 16:
        raise ValueError(f"need classes >= 2, train/val images per class >= 1 and size >= 16, got {classes}, "
                         f"{train_per_class}, {val_per_class}, {size}")
    for split in ("train", "val"):
        if os.path.isdir(os.path.join(root, split)) and os.listdir(os.path.join(root, split)):
            raise FileExistsError(f"{os.path.join(root, split)} already exists and is not empty; remove it or "
                                  "choose another --root")
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = os.path.join(root, split, f"class{label:03d}_{SHAPES[label % len(SHAPES)]}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                draw_image(label, classes, size, rng).save(os.path.join(folder, f"{i:05d}.png"))
    return root


def get_args_parser():
    p = argparse.ArgumentParser(description="Write a tiny learnable ImageFolder (train/ and val/) for pretrain.py.")
    p.add_argument("--root", required=True, help="folder to write train/ and val/ into (pretrain.py --data-root)")
    p.add_argument("--classes", type=int, default=4, help="classes, each a shape and colour of its own")
    p.add_argument("--train-per-class", type=int, default=24, help="training images of each class")
    p.add_argument("--val-per-class", type=int, default=8, help="validation images of each class")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="same seed, identical files")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        generate_imagefolder(args.root, args.classes, args.train_per_class, args.val_per_class, args.size, args.seed)
    except (ValueError, FileExistsError) as err:
        print(f"shapes: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) images "
          f"under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
