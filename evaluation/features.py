"""Test-time features of a DBN: one definition for the test scripts, extract.py, search.py and export.py.

Test-time feature (as the release): the five eval-mode BN embeddings concatenated (5F), summed with
those of the horizontally flipped image, L2-normalised; similarity is the dot product. The input is
RGB in [0, 1] after the test transform of the dataset family (datasets.transforms.build_transform),
with no mean/std normalisation.

    from evaluation.features import FeatureExtractor
    extract = FeatureExtractor.from_checkpoint("params/ema.pth")
    feats = extract(["a.jpg", "b.jpg"])              # (2, 5F) float32, L2-normalised
    feats = extract(frame, boxes=[(10, 20, 74, 148)], bgr=True)   # crops of an OpenCV frame
"""
import argparse
import hashlib
import json
import numbers
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.image_dataset import DECODE_ERRORS, ImageDataset, collate_skip, read_image
from datasets.transforms import FAMILIES, build_transform
from network import DBN, CheckpointError

from utils.checks import positive_int
from utils.device import DeviceError, pick_device
from utils.cli import default_workers, require_at_least

DEFAULT_SIZE = (256, 128)  # a bare state_dict's input size when nothing else gives one (Market-1501's)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_native_bfloat16():
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX): there oneDNN's bfloat16
    convolutions and matrix products are faster than float32; elsewhere they are emulated and slower."""
    from network.fast import native_bfloat16
    return native_bfloat16()


def check_dtype(dtype, device):
    """ValueError saying why when inference in `dtype` (a DTYPES name) is not offered on `device`:
    float16 is for CUDA only, bfloat16 on the CPU needs native support (see cpu_has_native_bfloat16)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    device = torch.device(device)
    if dtype == "float32":
        return
    if device.type == "cuda":
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"bfloat16: {torch.cuda.get_device_name(device)} does not support it; use float16")
        return
    if dtype == "float16":
        raise ValueError("float16 inference is offered on CUDA only; on the CPU use bfloat16 (where the CPU has "
                         "AVX512-BF16 or AMX) or float32")
    if not cpu_has_native_bfloat16():
        raise ValueError("bfloat16: this CPU has neither AVX512-BF16 nor AMX, so bfloat16 would be emulated "
                         "and slower than float32; use float32")


class CompiledModel(nn.Module):
    """torch.compile of an eval-mode model (inductor, weights frozen into the graph as constants),
    with static shapes: a batch is padded with zero images up to the next power of two and the
    outputs cut back, so at most one graph per power of two is compiled (each on its first call,
    tens of seconds; measured: static graphs compile several times faster than one dynamic-batch
    graph and run faster). The images of a batch do not interact in eval mode, so padding changes
    no output. The graphs are kept for the life of the object."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        self.compiled = torch.compile(model, dynamic=False, options={"freezing": True})

    @property
    def feature_dim(self):
        return self.model.feature_dim

    def forward(self, x):
        n = x.shape[0]
        size = 1 << (n - 1).bit_length()
        if size != n:
            x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
        out = self.compiled(x)
        return out[:n] if torch.is_tensor(out) else [o[:n] for o in out]


def compile_model(model):
    """`model` (eval mode, BatchNorm folded) compiled for inference: see CompiledModel."""
    return CompiledModel(model)


def prepare_for_inference(model, dtype="float32", compile=False, optimize=True):
    """An eval-mode DBN ready for features: network.fast.inference_form's new module (the caller's
    model is left alone): BatchNorm folded, in the inference form of network.fast.optimize unless
    `optimize` is false (ReLUs and residual sums fused into the convolutions, 1x1 convolutions as
    matrix products: the same features up to rounding), in `dtype` by network.fast.to_inference_dtype
    (a BN after a bfloat16 conv loses much more precision, hence folding first), and compiled when
    `compile` (compile_model). The returned callable maps a float32 batch to the five embeddings."""
    from network.fast import inference_form
    model = inference_form(model, DTYPES[dtype], optimize)
    return compile_model(model) if compile else model


JOINT_FLIP_BATCH = 2  # up to this many images, the images and their flips go through the model as one batch


def dbn_features(model, imgs, flip=True, normalize=True):
    """(B, 3, H, W) float in [0, 1] -> (B, 5F) float32: the concatenated embeddings of DBN `model`
    (eval mode), plus those of the horizontally flipped images (`flip`), L2-normalised (`normalize`).

    For B <= JOINT_FLIP_BATCH (a tracker's crop or two) the images and their flips run as one batch
    of 2B: measured on one core, one batch-2 call takes 0.7-0.8x the time of two batch-1 calls
    (float32 and bfloat16), one batch-4 call 0.8-0.9x that of two batch-2 calls; a batch of 8 gains
    nothing over two of 4, or loses. Not while tracing or compiling (an exported graph keeps the two
    calls, valid for any batch)."""
    n = imgs.shape[0]
    flipped = torch.flip(imgs, dims=[3]) if flip else None
    eager = not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
                 or isinstance(n, torch.SymInt))
    if flip and eager and n <= JOINT_FLIP_BATCH:
        both = torch.cat(model(torch.cat([imgs, flipped])), dim=1).float()
        feats = both[:n] + both[n:]
    else:
        feats = torch.cat(model(imgs), dim=1).float()
        if flip:
            feats = feats + torch.cat(model(flipped), dim=1).float()
    return F.normalize(feats, dim=1) if normalize else feats


class FeatureHead(nn.Module):
    """A DBN wrapped to map a (B, 3, H, W) batch in [0, 1] to its test-time features (for export)."""

    def __init__(self, model, flip=True, normalize=True):
        super().__init__()
        self.model, self.flip, self.normalize = model, bool(flip), bool(normalize)

    def forward(self, x):
        return dbn_features(self.model, x, self.flip, self.normalize)


def load_for_inference(weights, net=None, img_height=None, img_width=None, transform=None, device="cpu", *,
                       default_size=DEFAULT_SIZE, default_net=None):
    """(fused eval-mode DBN on `device`, info) from a checkpoint: the one loader of every inference tool.

    The variant, the input size and the transform family come from the file where it records them;
    `net`, `img_height`, `img_width` and `transform` fill in what it does not say and must agree with
    what it does; where neither says, the size is `default_size` (info["size_assumed"] is then True:
    a bare state_dict does not record it), the family "reid" and the variant `default_net`. info's
    "img_height", "img_width" and "transform" are filled in. A contradiction raises
    network.CheckpointError naming both sides.
    """
    model, info = DBN.from_checkpoint(weights, net=net, img_height=img_height, img_width=img_width,
                                      fallback_net=default_net)
    if transform is not None and info["transform"] not in (None, transform):
        raise CheckpointError(f"{weights} was trained with the {info['transform']!r} transforms "
                              f"(dataset {info['dataset']}) but --transform {transform} was given; "
                              f"pass --transform {info['transform']} or leave it out")
    family = info["transform"] or transform or "reid"
    if family not in FAMILIES:
        raise CheckpointError(f"{weights}: unknown transform family {family!r}; expected one of {', '.join(FAMILIES)}")
    assumed = None in (info["img_height"], info["img_width"])
    info["weights_id"] = weights_id(model)  # before BatchNorm folding: the checkpoint's own weights
    height = info["img_height"] or default_size[0]
    width = info["img_width"] or default_size[1]
    info = dict(info, img_height=height, img_width=width, transform=family, size_assumed=assumed)
    return model.fuse().to(device), info


def weights_id(model):
    """The identity of a model's weights: a short SHA-256 of its state_dict (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


PROVENANCE_KEYS = ("weights_id", "variant", "img_height", "img_width", "transform", "flip", "dtype")


def provenance(weights_id, variant, img_height, img_width, transform, flip, dtype):
    """What produced a set of features (stored with them in an .npz): features compare only when every
    field agrees."""
    return dict(zip(PROVENANCE_KEYS, (weights_id, variant, int(img_height), int(img_width), transform, bool(flip),
                                      dtype)))


def provenance_differences(a, b):
    """[(field, a's value, b's value)] of the PROVENANCE_KEYS on which two provenances differ."""
    return [(k, a.get(k), b.get(k)) for k in PROVENANCE_KEYS if a.get(k) != b.get(k)]


def read_provenance(data):
    """The provenance stored in an opened .npz (np.load), or None when it records none."""
    if "provenance" not in data.files:
        return None
    try:
        value = json.loads(str(data["provenance"]))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@torch.no_grad()  # not inference_mode: a compiled graph's frozen weights are made outside it
def extract_features(model, loader, device, desc="features", *, flip=True, progress=True, dim=None):
    """Test-time features of every image the loader yields: the one feature loop of the evaluation and
    the tools. `model` is in eval mode (or its inference form); batches are `(imgs, labels, camids, ...)`
    as `datasets.image_dataset.collate_skip` makes them, and a batch whose images were all unreadable is
    skipped. Returns (features (N, 5F) float32 L2-normalised, labels (N,) int64, camids (N,) int64) on
    the CPU; `dim` is F's 5F when no batch comes (default: model.feature_dim).
    """
    feats, labels, camids = [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", file=sys.stderr, disable=not progress):
        if batch[0].shape[0] == 0:
            continue
        feats.append(dbn_features(model, batch[0].to(device, non_blocking=True), flip=flip).cpu())
        labels.append(torch.as_tensor(batch[1], dtype=torch.int64))
        camids.append(torch.as_tensor(batch[2], dtype=torch.int64))
    if not feats:
        empty = torch.zeros(0, dtype=torch.int64)
        return torch.zeros(0, dim if dim is not None else getattr(model, "feature_dim", 0)), empty, empty.clone()
    return torch.cat(feats), torch.cat(labels), torch.cat(camids)


def _is_path(obj):
    return isinstance(obj, (str, os.PathLike))


def _box(box, size, k):
    """(x1, y1, x2, y2) in pixels -> integer PIL crop box clipped to the frame; ValueError when empty."""
    if len(box) != 4 or not all(isinstance(v, numbers.Real) for v in box):
        raise ValueError(f"box {k}: expected (x1, y1, x2, y2) numbers, got {box!r}")
    width, height = size
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x2 <= x1 or y2 <= y1:
        shown = ", ".join(f"{float(v):g}" for v in box)
        raise ValueError(f"box {k} ({shown}) holds no pixel of the {width}x{height} frame "
                         "(boxes are x1, y1, x2, y2 with x1 < x2 and y1 < y2)")
    return x1, y1, x2, y2


class FeatureExtractor:
    """Callable: images -> (N, 5F) float32 L2-normalised features (numpy), with the test scripts'
    preprocessing (the dataset family's test transform) and flip averaging, in batches on `device`.

    An image is a file path, a PIL image, a uint8 (H, W, 3) numpy array (RGB, or BGR with
    bgr=True, as OpenCV frames come), a uint8 (3, H, W) tensor, or a float tensor (3, H, W) in
    [0, 1]; a float (B, 3, H, W) tensor or a uint8 (B, H, W, 3) array is B images. Pass one image or
    a list. With `boxes` [(x1, y1, x2, y2), ...] (pixels) the input is one frame and the features
    are those of its crops, in the order of the boxes.
    """

    def __init__(self, model, img_height, img_width, transform="reid", device="cpu", batch_size=64, flip=True,
                 dtype="float32", compile=False):
        """`dtype` "bfloat16" (a CPU with AVX512-BF16 or AMX, or CUDA) or "float16" (CUDA) runs all but
        the stem's first convolution and the last BatchNorm1d in that precision (check_dtype refuses where unsupported);
        `compile` runs the model through torch.compile (CompiledModel: one graph per power-of-two
        batch size, compiled on its first batch and kept for the life of the extractor). Features are float32 either way."""
        positive_int("batch_size", batch_size)
        self.device = torch.device(device)
        check_dtype(dtype, self.device)
        self.model = model.eval().to(self.device)
        self.dtype, self.compiled = dtype, bool(compile)
        self.run = prepare_for_inference(self.model, dtype, compile)
        self.img_height, self.img_width, self.family = int(img_height), int(img_width), transform
        self.transform = build_transform(transform, self.img_height, self.img_width, train=False)
        self.batch_size, self.flip = int(batch_size), bool(flip)
        self.info = {}  # what the checkpoint said (from_checkpoint fills it in)

    @classmethod
    def from_checkpoint(cls, weights, net=None, img_height=None, img_width=None, transform=None, device="auto",
                        batch_size=64, flip=True, dtype="float32", compile=False):
        """Build from a checkpoint (see load_for_inference): the variant, size and transform family come
        from the file where it records them. `.info` keeps what the file said."""
        device = pick_device(device)
        model, info = load_for_inference(weights, net, img_height, img_width, transform, device)
        extractor = cls(model, info["img_height"], info["img_width"], info["transform"], device, batch_size, flip,
                        dtype, compile)
        extractor.info = info
        return extractor

    @property
    def feature_dim(self):
        return self.model.feature_dim

    @property
    def provenance(self):
        """What produces these features (see provenance()): the weights, variant, input, transform, flip, dtype."""
        if "weights_id" not in self.info:
            self.info["weights_id"] = weights_id(self.model)
        return provenance(self.info["weights_id"], self.model.net, self.img_height, self.img_width, self.family,
                          self.flip, self.dtype)

    # -- inputs -----------------------------------------------------------------------------------
    def decode(self, image, bgr=False):
        """One image in the form datasets.image_dataset.read_image gives for a file (an RGB PIL image),
        so the test transform treats every input kind as it treats the test scripts' files. Where
        read_image's output type changes, the in-memory branches below must follow it."""
        if _is_path(image):
            try:
                return read_image(image)
            except DECODE_ERRORS as err:
                raise ValueError(f"cannot read image {os.fspath(image)}: {err}") from None
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if torch.is_tensor(image) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0).cpu().numpy()
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise TypeError(f"arrays must be uint8 (H, W, 3), got {image.dtype} {image.shape}; float images "
                                "go in as torch tensors (3, H, W) in [0, 1]")
            return Image.fromarray(np.ascontiguousarray(image[:, :, ::-1] if bgr else image), "RGB")
        raise TypeError(f"unsupported image {type(image).__name__}: give a path, a PIL image, a uint8 (H, W, 3) "
                        "array, a uint8 (3, H, W) tensor or a float (3, H, W) tensor in [0, 1]")

    def preprocess(self, image, bgr=False):
        """One image -> the model input (3, img_height, img_width) float32 in [0, 1]."""
        if torch.is_tensor(image) and image.is_floating_point():
            if image.ndim != 3 or image.shape[0] != 3:
                raise TypeError(f"float tensors must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
            return self.transform(image.float().cpu())
        return self.transform(self.decode(image, bgr))

    def _images(self, images, boxes, bgr):
        if boxes is not None:
            frame = self.decode(images, bgr)  # a PIL image, or read_image's (3, H, W) tensor for a file
            size = frame.size if isinstance(frame, Image.Image) else (frame.shape[2], frame.shape[1])
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else []
            crops = []
            for k, box in enumerate(boxes):
                x1, y1, x2, y2 = _box(tuple(box), size, k)
                crops.append(frame.crop((x1, y1, x2, y2)) if isinstance(frame, Image.Image)
                             else frame[:, y1:y2, x1:x2])
            return crops
        if torch.is_tensor(images) and images.ndim == 4:
            return list(images.unbind(0))
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return list(images)
        if isinstance(images, (list, tuple)):
            return list(images)
        return [images]

    # -- features ---------------------------------------------------------------------------------
    @torch.no_grad()  # not inference_mode: the compiled graph's frozen weights are made outside it
    def features_of_batch(self, batch):
        """(B, 3, H, W) preprocessed float batch -> (B, 5F) float32 features on the CPU."""
        return dbn_features(self.run, batch.to(self.device), flip=self.flip).cpu()

    def __call__(self, images, boxes=None, bgr=False):
        items = self._images(images, boxes, bgr)
        out = [np.zeros((0, self.feature_dim), np.float32)]
        for start in range(0, len(items), self.batch_size):
            batch = torch.stack([self.preprocess(img, bgr) for img in items[start:start + self.batch_size]])
            out.append(self.features_of_batch(batch).numpy())
        return np.concatenate(out)

    def extract_paths(self, paths, num_workers=0, progress=True, desc="features"):
        """Features of image files through a DataLoader (as the test scripts read them).

        Unreadable files are left out with a warning naming them. Returns (features (N, 5F) float32,
        index (N,) of the path behind each row).
        """
        tagged = [(path, i, 0) for i, path in enumerate(paths)]
        loader = DataLoader(ImageDataset(tagged, self.transform), batch_size=self.batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate_skip, pin_memory=self.device.type == "cuda")
        feats, index, _ = extract_features(self.run, loader, self.device, desc, flip=self.flip, progress=progress,
                                           dim=self.feature_dim)
        return feats.numpy(), index.numpy()


# --- command line (extract.py, search.py, export.py) ---------------------------------------------

def get_args_parser(running=True):
    """The model flags of extract.py, search.py and export.py (a parent parser); `running` adds
    --device, --batch-size and --num-workers (the tools that compute features)."""
    parser = argparse.ArgumentParser(add_help=False)
    g = parser.add_argument_group("model")
    g.add_argument("--weights", required=True,
                   help="DBN checkpoint: the file train.py writes to --save-path (it records the variant, input "
                        "size and transform), its _last.pth, or a bare state_dict such as the release's params/ema.pth")
    g.add_argument("--net", default=None, choices=["small", "large"],
                   help="variant; only needed when the file does not say (the weights' shapes usually do)")
    g.add_argument("--img-height", default=None, type=int,
                   help=f"input height; only needed for a bare state_dict (then default {DEFAULT_SIZE[0]})")
    g.add_argument("--img-width", default=None, type=int,
                   help=f"input width; only needed for a bare state_dict (then default {DEFAULT_SIZE[1]})")
    g.add_argument("--transform", default=None, choices=FAMILIES,
                   help="test transform family (reid: resize; metric: resize +32 and centre crop; university: "
                        "bicubic resize); only needed for a bare state_dict (then reid)")
    g.add_argument("--no-flip", dest="flip", action="store_false",
                   help="features of the image alone, without adding those of its horizontal flip")
    add_dtype_arg(g)
    if not running:
        return parser
    add_compile_arg(g)
    g.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    g.add_argument("--batch-size", default=64, type=int, help="images per forward pass")
    g.add_argument("--num-workers", default=default_workers(), type=int,
                   help="image decoding processes (0: in the main process); 4, or the available cores if fewer")
    return parser


def add_dtype_arg(group):
    group.add_argument("--dtype", default="float32", choices=list(DTYPES),
                       help="precision of the network: bfloat16 needs a CPU with AVX512-BF16 or AMX (faster than "
                            "float32 there) or CUDA; float16 CUDA only. Features are float32 either way")


def add_compile_arg(group):
    group.add_argument("--compile", action="store_true",
                       help="run the network through torch.compile: batches are padded to a power of two and each "
                            "such size compiles once (tens of seconds) on its first batch (see docs/performance.md)")


def check_args(args, parser):
    """Flag checks shared by the three tools; parser.error names the flag."""
    for name in ("img_height", "img_width"):
        value = getattr(args, name)
        if value is not None and value < 16:
            parser.error(f"--{name.replace('_', '-')} must be at least 16 (output stride 16), got {value}")
    if hasattr(args, "batch_size"):  # the tools that compute features (get_args_parser(running=True))
        require_at_least(parser, args, 1, "batch_size")
        require_at_least(parser, args, 0, "num_workers")
    if os.path.isdir(args.weights):
        parser.error(f"--weights {args.weights} is a folder; give the checkpoint file in it (the file train.py "
                     "wrote to --save-path, or the release's params/ema.pth)")
    if not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights}: file not found (the file train.py wrote to --save-path, "
                     "or the release's params/ema.pth)")
    try:
        device = pick_device(getattr(args, "device", "cpu"))
    except (DeviceError, RuntimeError) as err:  # RuntimeError: a name torch.device cannot parse
        parser.error(f"--device {args.device}: {err}")
    try:
        check_dtype(args.dtype, device)
    except ValueError as err:
        parser.error(f"--dtype {err}")


def extractor_from_args(args):
    """FeatureExtractor of the shared flags; network.CheckpointError when the file does not fit them."""
    return FeatureExtractor.from_checkpoint(args.weights, net=args.net, img_height=args.img_height,
                                            img_width=args.img_width, transform=args.transform, device=args.device,
                                            batch_size=args.batch_size, flip=args.flip, dtype=args.dtype,
                                            compile=args.compile)


def describe(extractor):
    """One line: what the features are and how the images are preprocessed."""
    source = extractor.info.get("source", "memory")
    return (f"model: DBN LEViT-{extractor.model.net} from {source}, input {extractor.img_height}x"
            f"{extractor.img_width} ({extractor.family} test transform), {extractor.feature_dim}-d features"
            f"{', flip-averaged' if extractor.flip else ''}, L2-normalised, on {extractor.device}"
            f"{'' if extractor.dtype == 'float32' else ' in ' + extractor.dtype}{', compiled' if extractor.compiled else ''}")
