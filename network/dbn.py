"""DBN ReID head on a LEViT backbone: two branches from stage3, five pooled and BN'd embeddings.

`stem`, `layer1`, `layer2` are the backbone's stem, stage1 and stage2; `branch_1` is its stage3
with the first block's stride set to 1 (output stride 16); `branch_2` is an independent copy.
Embeddings, in order: avg(branch_1), avg(branch_2), max(branch_1), max(top half of branch_2),
max(bottom half of branch_2); each has its own BatchNorm1d (`bn_list`) and classifier (`class_list`).

In training mode the input batch is first augmented as the release does it, image by image, with
draws from torch's global generator (seeded by train.py, restored on resume): BatchDrop when
`drop` > 0, else random erasing when `erasing` > 0 (see `erasing_boxes` and `batch_drop_boxes`).
"""
import copy
import math
import os
import warnings

import torch
from torch import nn

from .checkpoint import (RELEASE_SOURCE, CheckpointError, checkpoint_filter_fn, detect_architecture, load_reid_weights,
                         read_checkpoint, read_reid_checkpoint, resolve_settings, unwrap_state_dict)
from .levit import LEViT, RELEASED_FILES, VARIANTS, Fusable, match_memory_format

NETWORK_DIR = os.path.dirname(os.path.abspath(__file__))
NUM_PARTS = (1, 2)  # horizontal parts max-pooled per branch: branch_1 whole, branch_2 in two halves
# the valid values of DBN's regularisation arguments (train.py checks its flags of the same names against them)
RANGES = {
    "drop": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "erasing": (lambda v: v == 0.0 or 0.02 <= v <= 1.0, "is the largest erased area fraction: 0 (off) or in [0.02, 1]"),
    "drop_path": (lambda v: v is None or 0.0 <= v < 1.0, "must be in [0, 1) (0 = off)"),
}


class PretrainedNotFound(CheckpointError):
    """DBN(pretrained="auto") found no released backbone file: `path` (where it was looked for),
    `variant` ("small" or "large") and `source` (where the file comes from) say what is missing;
    the caller decides whether to stop or to start from random weights (pretrained=None)."""

    def __init__(self, path, variant):
        self.path, self.variant, self.source = path, variant, RELEASE_SOURCE
        super().__init__(f"no pretrained LEViT-{variant} backbone at {path}: copy the released file "
                         f"{RELEASED_FILES[variant]} there (it comes from {RELEASE_SOURCE}), pass "
                         "pretrained=<path to a backbone file>, or pretrained=None for random weights")


def out_of_range(**values):
    """(name, "<rule>, got <value>") of the first of `values` (names of RANGES) outside its range, or None."""
    for name, value in values.items():
        valid, rule = RANGES[name]
        if not valid(value):
            return name, f"{rule}, got {value}"
    return None


def released_path(net):
    """Where the released backbone file of variant `net` is looked for: network/<file name>."""
    return os.path.join(NETWORK_DIR, RELEASED_FILES[net])


def _uniform(low, high):
    """One draw of U(low, high) from torch's global generator, as a Python float."""
    return low + (high - low) * torch.rand(()).item()


def _randint(low, high):
    """One integer drawn uniformly from low..high, both ends included."""
    return int(torch.randint(low, high + 1, ()))


def erasing_boxes(batch, height, width, scale):
    """The release's random erasing draw for `batch` images of height x width, largest area fraction
    `scale`: per image, in this order, u ~ U[0, 1) and, when u <= 0.5, area A = U(0.02, scale) * H * W,
    aspect a = U(0.3, 1/0.3), w = min(round(sqrt(A * a)), W), h = min(round(A / w), H), top in
    0..H-h, left in 0..W-w. The rectangle is always placed, never re-drawn. Returns (top, bottom,
    left, right) per image, end exclusive; (0, 0, 0, 0) for an image left alone."""
    boxes = []
    for _ in range(batch):
        if torch.rand(()).item() > 0.5:
            boxes.append((0, 0, 0, 0))
            continue
        area = _uniform(0.02, scale) * height * width
        aspect = _uniform(0.3, 1 / 0.3)
        w = min(max(round(math.sqrt(area * aspect)), 1), width)  # max(., 1): only images under 42 pixels need it
        h = min(round(area / w), height)
        top, left = _randint(0, height - h), _randint(0, width - w)
        boxes.append((top, top + h, left, left + w))
    return boxes


def batch_drop_boxes(batch, height, width, drop):
    """The release's BatchDrop draw: per image a centre y in 0..H, then x in 0..W (ends included);
    side L = round(sqrt(round(drop * H * W))); rows max(0, y - L // 2) .. min(H, y + L // 2) and the
    same for the columns (end exclusive). Every image gets one. Returns (top, bottom, left, right)."""
    half = round(math.sqrt(round(drop * height * width))) // 2
    boxes = []
    for _ in range(batch):
        y = _randint(0, height)
        x = _randint(0, width)
        boxes.append((max(0, y - half), min(height, y + half), max(0, x - half), min(width, x + half)))
    return boxes


def zero_boxes(x, boxes):
    """x (B, C, H, W) with the rectangle boxes[i] = (top, bottom, left, right) of image i set to 0 in
    every channel; a new tensor (x is left alone)."""
    b = torch.tensor(boxes, dtype=torch.int64).to(x.device)  # (B, 4)
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows >= b[:, :1]) & (rows < b[:, 1:2])  # (B, H)
    in_cols = (cols >= b[:, 2:3]) & (cols < b[:, 3:4])  # (B, W)
    return x.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)


class DBN(Fusable, nn.Module):
    def __init__(self, num_classes: int = 751, std: float = 0.1, net: str = "small",
                 drop: float = 0.0, erasing: float = 0.0, pretrained: str | None = "auto",
                 mlp_ratio: float | None = None, drop_path: float | None = None):
        """`pretrained`: path to a backbone file, None (random initialisation) or "auto"
        (network/<released file>; PretrainedNotFound when it is not there). `mlp_ratio`
        overrides the variant's; a pretrained file whose MLP widths say otherwise wins.
        `drop_path`: the largest stochastic depth rate (the last block's), overriding the
        variant's (0.05 small, 0.10 large; the large one is ambiguous, see docs/recipe.md)."""
        super().__init__()
        if net not in VARIANTS:
            raise ValueError(f"DBN: unknown net {net!r}; choose one of {sorted(VARIANTS)}")
        problem = out_of_range(drop=drop, erasing=erasing, drop_path=drop_path)
        if problem:
            raise ValueError(f"DBN: {' '.join(problem)}")
        self.num_classes = num_classes
        self.num_parts = NUM_PARTS
        self.drop = drop  # BatchDrop area fraction (replaces erasing when > 0)
        self.erasing = erasing  # random erasing: largest area fraction

        cfg = dict(VARIANTS[net])
        if mlp_ratio is not None:
            cfg["mlp_ratio"] = float(mlp_ratio)
        if drop_path is not None:
            cfg["drop_path"] = float(drop_path)
        state_dict, source = self._read_pretrained(pretrained, net)
        if state_dict is not None:
            arch = detect_architecture(state_dict)
            if arch["embed_dim"] == cfg["embed_dim"] and arch["mlp_ratio"] not in (None, cfg["mlp_ratio"]):
                warnings.warn(f"DBN: {source} has MLP widths of mlp_ratio {arch['mlp_ratio']:g} "
                              f"(LEViT-{net} default {cfg['mlp_ratio']:g}); building that architecture", stacklevel=2)
                cfg["mlp_ratio"] = arch["mlp_ratio"]
        self.net, self.mlp_ratio, self.drop_path = net, cfg["mlp_ratio"], cfg["drop_path"]

        backbone = LEViT(num_classes=1, **cfg)
        self.stem, self.layer1, self.layer2 = backbone.stem, backbone.stage1, backbone.stage2
        # branch_1: stage3 at stride 1 (the first block's MLP 3x3 conv and its skip's first conv)
        self.branch_1 = backbone.stage3
        first = self.branch_1.layers[0]
        first.mlp.local_enhance[0].stride = (1, 1)
        first.skip[0].stride = (1, 1)
        self.branch_2 = copy.deepcopy(self.branch_1)

        self.feature_dim_single = backbone.num_features  # F = 4E
        num_embeddings = len(self.num_parts) + sum(self.num_parts)
        self.pool_list = nn.ModuleList(
            [nn.AdaptiveAvgPool2d(1) for _ in self.num_parts] + [nn.AdaptiveMaxPool2d((p, 1)) for p in self.num_parts])
        self.bn_list = nn.ModuleList(nn.BatchNorm1d(self.feature_dim_single) for _ in range(num_embeddings))
        self.class_list = nn.ModuleList(
            nn.Linear(self.feature_dim_single, num_classes, bias=False) for _ in range(num_embeddings))
        for i, bn in enumerate(self.bn_list):
            nn.init.normal_(bn.weight, 1.0, std)
            nn.init.normal_(bn.bias, 0.0, std)
            if i >= len(self.num_parts):  # the max-pooled embeddings keep a frozen bias
                bn.bias.requires_grad_(False)
        for fc in self.class_list:
            nn.init.normal_(fc.weight, 0.0, 0.001)

        if state_dict is not None:
            self.load_state_dict(checkpoint_filter_fn(state_dict, self, source=source))
        self.to(memory_format=torch.channels_last)  # as LEViT: fast grouped convs on CPU

    @classmethod
    def from_checkpoint(cls, path, net=None, img_height=None, img_width=None, device="cpu", fallback_net=None):
        """(model in eval mode on `device`, info) from a DBN file: what train.py writes to --save-path,
        its _last.pth checkpoint or a bare state_dict such as the release's params/ema.pth.

        The variant, MLP ratio, classes and parts come from the file (from the weights' shapes for a
        bare state_dict); `net`, `img_height`, `img_width` are the flags: used where the file says
        nothing, a CheckpointError naming both where they contradict it. `info` holds the file's
        description (network.checkpoint.INFO_KEYS, "format_version", "source") with "variant",
        "img_height" and "img_width" resolved (the size stays None when neither gives it);
        `fallback_net` is the variant used when neither the file nor `net` says.
        """
        state_dict, info = read_reid_checkpoint(path)
        net, height, width = resolve_settings(info, net, img_height, img_width, fallback_net)
        mlp_ratio = info["mlp_ratio"] if info["mlp_ratio"] not in (None, VARIANTS[net]["mlp_ratio"]) else None
        if info["num_parts"] not in (None, list(NUM_PARTS)):
            raise CheckpointError(f"{path}: a DBN with parts {info['num_parts']} per branch; this code builds "
                                  f"{list(NUM_PARTS)} (the release's)")
        model = cls(num_classes=info["num_classes"] or 1, net=net, pretrained=None, mlp_ratio=mlp_ratio)
        load_reid_weights(model, state_dict)
        info = dict(info, variant=net, img_height=height, img_width=width)
        return model.eval().to(device), info

    @property
    def feature_dim(self):
        """Length of the concatenated test-time feature (5F)."""
        return len(self.bn_list) * self.feature_dim_single

    @staticmethod
    def _read_pretrained(pretrained, net):
        if pretrained is None:
            return None, None
        if pretrained == "auto":
            pretrained = released_path(net)
            if not os.path.isfile(pretrained):
                raise PretrainedNotFound(pretrained, net)
        return unwrap_state_dict(read_checkpoint(pretrained)), pretrained

    # the draws are Python numbers (.item()) from torch's global generator, image by image: under
    # torch.compile both augmentations run eagerly (a graph break), so they draw the eager run's stream
    @torch.compiler.disable
    def random_erase(self, x):
        """The release's batch-level random erasing of x (B, C, H, W): see `erasing_boxes`."""
        return zero_boxes(x, erasing_boxes(x.shape[0], x.shape[-2], x.shape[-1], self.erasing))

    @torch.compiler.disable
    def batch_drop(self, x):
        """The release's BatchDrop of x (B, C, H, W): see `batch_drop_boxes`."""
        return zero_boxes(x, batch_drop_boxes(x.shape[0], x.shape[-2], x.shape[-1], self.drop))

    def forward(self, x):
        if self.training and self.drop > 0:
            x = self.batch_drop(x)
        elif self.training and self.erasing > 0:
            x = self.random_erase(x)
        x = match_memory_format(x, self.stem[0].conv.weight)
        x = self.layer2(self.layer1(self.stem(x)))  # (B, 2E, H/16, W/16)
        branches = (self.branch_1(x), self.branch_2(x))  # (B, F, H/16, W/16) each
        pooled = [self.pool_list[i](b) for i, b in enumerate(branches)]
        for i, b in enumerate(branches):
            parts = self.pool_list[len(branches) + i](b)  # (B, F, parts, 1)
            pooled += list(parts.unbind(2))
        embeddings = [bn(torch.flatten(p, 1)) for bn, p in zip(self.bn_list, pooled)]  # (B, F) each
        if not self.training:
            return embeddings
        logits = [fc(e) for fc, e in zip(self.class_list, embeddings)]
        return logits, embeddings[:len(branches)]
