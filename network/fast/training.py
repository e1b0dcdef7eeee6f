"""The CPU training form: LEViT's stride-1 3x3 convolutions with groups of 4 channels run forward and
backward in the native kernels (network/fast/kernels.py) where they apply, else as nn.Conv2d.

    model = network.fast.training_form(model)   # train.py and pretrain.py do this on the CPU
"""
import torch
from torch import nn

from . import kernels
from .layers import replace_children


class Group4Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state_dict keys) for a 3x3 convolution with groups of 4 channels:
    stride 1 runs in the kernels where kernels.group4_conv_trains allows (float32 channels_last CPU
    maps, eager, no autocast), anything else as nn.Conv2d."""

    native_kernel = True  # False: always nn.Conv2d

    def forward(self, x):
        if self.native_kernel and kernels.group4_conv_trains(self, x):
            return kernels.group4_conv3x3_trainable(x, self.weight, self.bias)
        return super().forward(x)


def is_group4_conv(module):
    """True for a plain nn.Conv2d 3x3, padding 1, with groups of 4 input and 4 output channels."""
    return (type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.padding == (1, 1)
            and module.in_channels == module.out_channels == 4 * module.groups)


def as_group4_conv(conv):
    """A Group4Conv2d holding `conv`'s own parameters (the same tensors: an optimizer built on
    either trains both)."""
    with torch.device("meta"):
        new = Group4Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new


def training_form(model):
    """`model` with each 3x3 convolution with groups of 4 channels a Group4Conv2d holding the same
    parameters, in place (state_dict keys and values unchanged); returns `model`. Build the
    optimizer after it. The kernels are built (or loaded) here, so that a torch.compile of the model that
    follows finds them and calls them from its graph."""
    kernels.available()
    return replace_children(model, nn.Conv2d, lambda conv: as_group4_conv(conv) if is_group4_conv(conv) else None)
