"""The networks the benchmark's figures are judged against.

- Release-style DBN-S: the same network and weights as network.DBN, written the way research code
  writes it (BatchNorm not folded, NCHW, attention as explicit F.normalize, matmul, softmax and
  matmul per window). A stand-in for the release's own implementation, which this project does not
  ship; its outputs equal ours (tested).
- OSNet x1_0 (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019),
  as torchreid's osnet_x1_0: channels 64, 256, 384, 512; two omni-scale blocks per stage, each with
  four streams of 1 to 4 lite 3x3 convs (1x1 conv + depthwise 3x3) and one shared unified
  aggregation gate; 512-d feature. About 2.2 M parameters and 0.98 G multiply-adds at 256x128
  (the paper's figures, checked in tests/test_bench.py). Defined here for the benchmark only.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from network.levit import MAX_LOGIT_SCALE, LocalEnhanceAttention


class ExplicitAttention(LocalEnhanceAttention):
    """LocalEnhanceAttention as research code writes it: normalize, q @ k^T, scale, softmax, @ v."""

    def forward(self, q, k, v):
        B, C, H, W = q.shape
        if H % self.window or W % self.window:
            raise ValueError(f"release-style attention needs sides that are multiples of {self.window}, got {H}x{W}")
        fmt = torch.contiguous_format
        q, k, v = (self.to_windows(t, fmt) for t in (q, k, v))  # (B * windows, heads, ws*ws, d)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()
        out = attn.softmax(dim=-1) @ v
        return self.from_windows(out, B, C, H, W, fmt)


def release_style(model):
    """A copy of DBN `model` (eval mode, not fused) in the research-code form described above."""
    if getattr(model, "fused", False):
        raise ValueError("release_style needs a model whose BatchNorm is not folded")
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    for module in model.modules():
        if isinstance(module, LocalEnhanceAttention):
            module.__class__ = ExplicitAttention
    return model


def conv_bn_relu(in_dim, out_dim, kernel=1, stride=1, groups=1, relu=True):
    layers = [nn.Conv2d(in_dim, out_dim, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_dim)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class LiteConv3x3(nn.Sequential):
    """1x1 conv, depthwise 3x3 conv, BN, ReLU."""

    def __init__(self, in_dim, out_dim):
        super().__init__(nn.Conv2d(in_dim, out_dim, 1, bias=False),
                         nn.Conv2d(out_dim, out_dim, 3, 1, 1, groups=out_dim, bias=False),
                         nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True))


class ChannelGate(nn.Module):
    """The unified aggregation gate: x * sigmoid(fc2(relu(fc1(avgpool(x))))), shared by the streams."""

    def __init__(self, dim, reduction=16):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, dim // reduction, 1)
        self.fc2 = nn.Conv2d(dim // reduction, dim, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class OSBlock(nn.Module):
    """1x1 reduction to out/4, four streams of 1..4 lite 3x3 convs, gated sum, 1x1 expansion, residual."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        mid = out_dim // 4
        self.conv1 = conv_bn_relu(in_dim, mid)
        self.streams = nn.ModuleList(
            nn.Sequential(*[LiteConv3x3(mid, mid) for _ in range(depth)]) for depth in range(1, 5))
        self.gate = ChannelGate(mid)
        self.conv3 = conv_bn_relu(mid, out_dim, relu=False)
        self.downsample = conv_bn_relu(in_dim, out_dim, relu=False) if in_dim != out_dim else nn.Identity()

    def forward(self, x):
        y = self.conv1(x)
        y = sum(self.gate(stream(y)) for stream in self.streams)
        return F.relu(self.conv3(y) + self.downsample(x))


class OSNet(nn.Module):
    """OSNet x1_0: eval forward returns the 512-d feature (fc after global pooling), as torchreid."""

    def __init__(self, num_classes=751, channels=(64, 256, 384, 512), feature_dim=512):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.conv1 = conv_bn_relu(3, c0, 7, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.conv2 = nn.Sequential(OSBlock(c0, c1), OSBlock(c1, c1), conv_bn_relu(c1, c1), nn.AvgPool2d(2, 2))
        self.conv3 = nn.Sequential(OSBlock(c1, c2), OSBlock(c2, c2), conv_bn_relu(c2, c2), nn.AvgPool2d(2, 2))
        self.conv4 = nn.Sequential(OSBlock(c2, c3), OSBlock(c3, c3))
        self.conv5 = conv_bn_relu(c3, c3)
        self.fc = nn.Sequential(nn.Linear(c3, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.maxpool(self.conv1(x))))))
        x = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # (B, 512)
        return x if not self.training else self.classifier(x)
