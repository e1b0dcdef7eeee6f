"""DBN ReID head on a LEViT backbone: two branches from stage3, five pooled and BN'd embeddings.

`stem`, `layer1`, `layer2` are the backbone's stem, stage1 and stage2; `branch_1` is its stage3
with the first block's stride set to 1 (output stride 16); `branch_2` is an independent copy.
Embeddings, in order: avg(branch_1), avg(branch_2), max(branch_1), max(top half of branch_2),
max(bottom half of branch_2); each has its own BatchNorm1d (`bn_list`) and classifier (`class_list`).
"""
import copy
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from .checkpoint import (RELEASE_SOURCE, checkpoint_filter_fn, detect_architecture, read_checkpoint,
                         unwrap_state_dict)
from .levit import LEViT, RELEASED_FILES, VARIANTS, Fusable, match_memory_format

NETWORK_DIR = os.path.dirname(os.path.abspath(__file__))
_warned_no_pretrained = False


def released_path(net):
    """Where the released backbone file of variant `net` is looked for: network/<file name>."""
    return os.path.join(NETWORK_DIR, RELEASED_FILES[net])


class DBN(Fusable, nn.Module):
    def __init__(self, num_classes: int = 751, num_parts=(1, 2), std: float = 0.1, net: str = "small",
                 drop: float = 0.0, erasing: float = 0.0, pretrained: str | None = "auto",
                 mlp_ratio: float | None = None):
        """`pretrained`: path to a backbone file, None (random initialisation) or "auto"
        (network/<released file> when present, else random with a warning). `mlp_ratio`
        overrides the variant's; a pretrained file whose MLP widths say otherwise wins."""
        super().__init__()
        if net not in VARIANTS:
            raise ValueError(f"DBN: unknown net {net!r}; choose one of {sorted(VARIANTS)}")
        if len(num_parts) != 2:
            raise ValueError(f"DBN: num_parts needs one part count per branch (2), got {list(num_parts)}")
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"DBN: drop must be in [0, 1), got {drop}")
        if erasing != 0.0 and not 0.02 <= erasing <= 1.0:
            raise ValueError(f"DBN: erasing is the largest erased area fraction, 0 (off) or in [0.02, 1]; got {erasing}")
        self.num_classes = num_classes
        self.num_parts = tuple(int(p) for p in num_parts)
        self.drop = drop
        self.erasing = erasing
        self.eraser = v2.RandomErasing(p=0.5, scale=(0.02, erasing), ratio=(0.3, 1 / 0.3), value=0) if erasing else None

        cfg = dict(VARIANTS[net])
        if mlp_ratio is not None:
            cfg["mlp_ratio"] = float(mlp_ratio)
        state_dict, source = self._read_pretrained(pretrained, net)
        if state_dict is not None:
            arch = detect_architecture(state_dict)
            if arch["embed_dim"] == cfg["embed_dim"] and arch["mlp_ratio"] not in (None, cfg["mlp_ratio"]):
                print(f"DBN: {source} has MLP widths of mlp_ratio {arch['mlp_ratio']:g} "
                      f"(LEViT-{net} default {cfg['mlp_ratio']:g}); building that architecture")
                cfg["mlp_ratio"] = arch["mlp_ratio"]
        self.net, self.mlp_ratio = net, cfg["mlp_ratio"]

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

    @property
    def feature_dim(self):
        """Length of the concatenated test-time feature (5F)."""
        return len(self.bn_list) * self.feature_dim_single

    @staticmethod
    def _read_pretrained(pretrained, net):
        global _warned_no_pretrained
        if pretrained is None:
            return None, None
        if pretrained == "auto":
            path = released_path(net)
            if not os.path.isfile(path):
                if not _warned_no_pretrained:
                    warnings.warn(
                        f"DBN: no pretrained LEViT-{net} backbone at network/{RELEASED_FILES[net]}; "
                        "starting from random weights. Accuracy will be far below the README's figures; "
                        f"copy the released file into network/ (it comes from {RELEASE_SOURCE}) to fix this.",
                        stacklevel=3)
                    _warned_no_pretrained = True
                return None, None
            pretrained = path
        return unwrap_state_dict(read_checkpoint(pretrained)), pretrained

    def random_erase(self, x):
        # per image: with probability 0.5 zero a rectangle of area [0.02, erasing] of the image
        return torch.stack([self.eraser(img) for img in x])

    def forward(self, x):
        if self.training and self.eraser is not None:
            x = self.random_erase(x)
        x = match_memory_format(x, self.stem[0].conv.weight)
        x = self.layer2(self.layer1(self.stem(x)))
        branches = (self.branch_1(x), self.branch_2(x))  # (B, F, H/16, W/16) each
        pooled = [self.pool_list[i](b) for i, b in enumerate(branches)]
        for i, b in enumerate(branches):
            parts = self.pool_list[len(branches) + i](b)  # (B, F, parts, 1)
            pooled += list(parts.unbind(2))
        embeddings = [bn(torch.flatten(p, 1)) for bn, p in zip(self.bn_list, pooled)]  # (B, F) each
        if not self.training:
            return embeddings
        logits = [fc(F.dropout(e, self.drop, True) if self.drop else e)
                  for fc, e in zip(self.class_list, embeddings)]
        return logits, embeddings[:len(branches)]
