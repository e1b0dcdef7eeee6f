"""`--what loader`: images/s of the training transforms, file to float tensor, in one process with one
thread (what one loader worker does on one core), on generated JPEGs of the real datasets' sizes,
next to a Pillow pipeline (Pillow decode and antialiased resize, as the code before torchvision.io)."""
import os
import warnings

import torch

from benchmarks import time_alternating

# (name, family, view, output (height, width), source sizes (height, width) drawn from [low, high]
# each side): the real data sets' image sizes and the release's input sizes
LOADER_SETTINGS = [
    ("Market-1501", "reid", None, (256, 128), ((128, 128), (64, 64))),
    ("VeRi-776", "reid", None, (256, 256), ((230, 270), (230, 270))),
    ("University-1652 drone", "university", "drone", (384, 384), ((512, 512), (512, 512))),
    ("University-1652 satellite", "university", "satellite", (384, 384), ((512, 512), (512, 512))),
]


def write_loader_jpegs(folder, sizes, count, seed=0, sites=False):
    """`count` JPEGs (quality 90, as datasets.synthetic writes them) of drawn persons (portrait sizes),
    vehicles or, with `sites`, drone views of sites, each of a size drawn from `sizes` = ((low, high)
    height, (low, high) width)."""
    import numpy as np
    from datasets import drawing
    rng = np.random.default_rng(seed)
    cam = drawing.Camera(rng, 0)
    paths = []
    for i in range(count):
        height, width = (int(rng.integers(low, high + 1)) for low, high in sizes)
        if sites:
            site, _ = drawing.draw_site(rng, size=max(height, width))
            img = drawing.drone_view(site, cam, rng, size=(width, height))
        elif width < height:
            img = drawing.draw_person(drawing.person_identity(rng), cam, rng, size=(width, height))
        else:
            img, _ = drawing.draw_vehicle(drawing.vehicle_identity(rng), cam, rng, size=(width, height))
        path = os.path.join(folder, f"{i:05d}.jpg")
        img.convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def loader_pipelines(family, view, height, width):
    """{name: path -> float32 (3, height, width)}: the training transform on torchvision.io's uint8
    tensor, and the same steps on a Pillow image (Pillow's antialiased resize and rotation)."""
    from PIL import Image
    from torchvision.transforms import v2
    from datasets.image_dataset import read_image
    from datasets.transforms import build_transform, geometric_steps, to_float
    tensor_transform = build_transform(family, height, width, train=True, view=view)
    pil_transform = v2.Compose(geometric_steps(family, height, width, True, view) + [v2.ToImage()] + to_float())

    def tensor_route(path):
        return tensor_transform(read_image(path))

    def pil_route(path):
        with Image.open(path) as img, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Anti-alias option is always applied for PIL")
            return pil_transform(img.convert("RGB"))
    return {"decode_image + uint8 tensor": tensor_route, "Pillow": pil_route}


def bench(args):
    import tempfile
    torch.set_num_threads(1)
    count, repeats = args.images, (3 if args.quick else args.repeats)
    print(f"\nloader: training transforms, file -> float32 tensor, one process, 1 thread (one loader worker on "
          f"one core); {count} generated JPEGs per setting, median of {repeats} alternating runs")
    names = list(loader_pipelines("reid", None, 16, 16))
    print(f"{'setting':26s} {'source':>9s} {'output':>8s} {names[0] + ' img/s':>33s} {names[1] + ' img/s':>14s} "
          f"{'ratio':>6s}")
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as folder:
        for i, (name, family, view, (height, width), sizes) in enumerate(LOADER_SETTINGS):
            sub = os.path.join(folder, str(i))
            os.makedirs(sub)
            paths = write_loader_jpegs(sub, sizes, count, seed=i, sites=view is not None)  # views: University-1652
            runs = {}
            for route, fn in loader_pipelines(family, view, height, width).items():
                def run(fn=fn):
                    torch.manual_seed(0)
                    for path in paths:
                        fn(path)
                runs[route] = run
            seconds = time_alternating(runs, repeats)
            ours, pil = (count / seconds[route] for route in names)
            (h0, h1), (w0, w1) = sizes
            source = f"{h0}x{w0}" if (h0, w0) == (h1, w1) else f"~{(h0 + h1) // 2}x{(w0 + w1) // 2}"
            print(f"{name:26s} {source:>9s} {height}x{width:<4d} {ours:33.0f} {pil:14.0f} {ours / pil:5.2f}x")

