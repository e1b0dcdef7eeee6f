"""The layers of the CPU inference form: a convolution with its BatchNorm folded in and its ReLU and
residual sum fused (InferenceConv), the window attention with the native kernel and a float32
softmax (InferenceAttention), and the block that uses them (InferenceBlock). Eval only: their
weights do not train. Built by network.fast.inference from a fused model's layers."""
import torch
import torch.nn.functional as F
from torch import nn

from network.levit import (MAX_LOGIT_SCALE, ConvNormAct, LocalEnhanceAttention, LocalEnhanceBlock, is_channels_last,
                          scaled_normalize_forward)

from . import cpu, kernels


class InferenceConv(nn.Module):
    """y = relu?(conv(x) + bias [+ add]) for a convolution whose BatchNorm has been folded in.

    The path is set by the convolution's kind when it is built and taken per call where the input
    allows it, else the next: the native group-4 kernel (3x3, groups of 4 channels), then oneDNN's
    fused operators (a 1x1 convolution as a matrix product over the pixels of a channels_last map,
    whose (B, H, W, C) memory needs no copy; any other convolution as oneDNN's fused convolution),
    then torch's operators (always valid: gradients, NCHW, other dtypes, traced graphs).
    """

    # Under torch.compile a bfloat16 1x1 convolution goes to inductor as a linear layer (faster at
    # batch 1); a float32 one stays a convolution (inductor's float32 linear layer is slower at batch 32).
    traced_as_linear = True

    def __init__(self, conv, relu=False):
        super().__init__()
        self.pointwise = (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
                          and conv.groups == 1)
        weight = conv.weight.detach()
        # (out, in) for a pointwise convolution (a matrix product), else (out, in / groups, kh, kw)
        self.weight = nn.Parameter(weight.flatten(1).clone() if self.pointwise else weight.clone(), requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups, self.relu = conv.groups, bool(relu)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # the native kernel where it is built and computes this convolution (set False to keep oneDNN)
        self.group4 = weight.device.type == "cpu" and kernels.supports_group4_conv(conv)
        self._group4_key = self._group4_weights = None

    def forward(self, x, add=None):
        # x (B, in, H, W), add None or (B, out, H', W') -> (B, out, H', W')
        if self.group4 and kernels.group4_conv_applies(x, add):
            return self.group4_forward(x, add)
        if cpu.onednn_applies(x) and self.onednn_takes(x, add):
            return self.matmul_forward(x, add) if self.pointwise else self.onednn_conv_forward(x, add)
        return self.torch_forward(x, add)

    def group4_weights(self):
        """(packed weight, float32 bias) for kernels.group4_conv3x3, re-made when the weights change
        (a copy, a cast to another dtype); under torch.compile as graph ops, which freezing folds."""
        if torch.compiler.is_compiling():
            return kernels.pack_group4_weight(self.weight), self.bias.float()
        key = (self.weight.data_ptr(), self.weight.dtype, self.weight._version, self.bias.data_ptr(), self.bias._version)
        if self._group4_key != key:
            self._group4_weights = (kernels.pack_group4_weight(self.weight), self.bias.float().contiguous())
            self._group4_key = key
        return self._group4_weights

    def group4_forward(self, x, add):
        if add is not None:  # a cropped attention output (padded windows) is not dense
            add = add.contiguous(memory_format=torch.channels_last)
        return kernels.group4_conv3x3(x, *self.group4_weights(), add, self.stride[0], self.relu)

    def onednn_takes(self, x, add):
        """The layouts oneDNN's fused operators take: for the matrix product a channels_last x and sum
        term (their (B, H, W, C) memory dense) and no ReLU after a sum; for a convolution a sum term in
        x's layout."""
        if self.pointwise:
            return (x.permute(0, 2, 3, 1).is_contiguous() and not (self.relu and add is not None)
                    and (add is None or add.permute(0, 2, 3, 1).is_contiguous()))
        return add is None or add.is_contiguous(memory_format=torch.channels_last) == is_channels_last(x)

    def matmul_forward(self, x, add):
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C): the memory of a channels_last map
        if add is None:
            y = cpu.linear(t, self.weight, self.bias, self.relu)
        elif x.dtype == torch.float32:  # float32: the product, then the sum in place (faster than the fused sum)
            y = cpu.linear(t, self.weight, self.bias).add_(add.permute(0, 2, 3, 1))
        else:
            y = cpu.linear_add(t, add.permute(0, 2, 3, 1), self.weight, self.bias)
        return y.permute(0, 3, 1, 2)

    def onednn_conv_forward(self, x, add):
        args = (self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
        if add is None:
            return cpu.conv(x, *args, relu=self.relu)
        return cpu.conv_add(x, add, *args, relu=self.relu)

    def torch_forward(self, x, add):
        if not self.pointwise:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        elif (self.traced_as_linear and x.dtype != torch.float32 and torch.compiler.is_compiling()
              and x.permute(0, 2, 3, 1).is_contiguous()):
            y = F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)
        else:
            y = F.conv2d(x, self.weight[:, :, None, None], self.bias)
        if add is not None:
            y = y + add
        return F.relu(y) if self.relu else y


def inference_attention(q, k, v, scale, mask):
    """Cosine attention of (N, heads, T, d) float32 or bfloat16 windows on the CPU without a gradient:
    q and k normalised in float32 and kept there, the logits and softmax in float32 (the softmax in
    place when eager), the probabilities in v's dtype for the product with v. In bfloat16 as close to
    float32 as SDPA's bfloat16 kernel (q and k are not rounded at all); at LEViT's 64-token windows
    faster than SDPA, whose blocked kernel is made for longer sequences."""
    q, k = scaled_normalize_forward(q.float(), scale)[0], scaled_normalize_forward(k.float(), None)[0]
    logits = torch.matmul(q, k.transpose(-2, -1))  # (N, heads, T, T)
    if mask is not None:
        logits = logits.masked_fill_(~mask, float("-inf"))
    probs = logits.softmax(-1) if cpu.capturing_graph() else torch.softmax(logits, -1, out=logits)
    return torch.matmul(probs.to(v.dtype), v)


class InferenceAttention(LocalEnhanceAttention):
    """LocalEnhanceAttention (same parameter) for inference on the CPU: the native window_attention
    kernel where it applies (8x8 windows, channels_last, no gradient), else the model's windows with
    inference_attention in float32 or bfloat16 without a gradient, else the model's own path."""

    native_kernel = True  # False: torch's operators only

    @classmethod
    def from_attention(cls, attention):
        new = cls(attention.heads, attention.window)
        new.logit_scale = nn.Parameter(attention.logit_scale.detach().clone(), requires_grad=False)
        return new

    def forward(self, q, k, v):
        if self.native_kernel and kernels.window_attention_applies(q, k, v, self.heads, self.window):
            scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()  # (heads, 1, 1)
            return kernels.window_attention(q, k, v, scale.flatten().float(), self.heads, self.window)
        return super().forward(q, k, v)

    def attend(self, q, k, v, scale, mask):
        if q.dtype in (torch.float32, torch.bfloat16) and q.device.type == "cpu" and not torch.is_grad_enabled():
            return inference_attention(q, k, v, scale, mask)
        return super().attend(q, k, v, scale, mask)


class InferenceBlock(nn.Module):
    """A fused LocalEnhanceBlock in eval mode with its ReLUs and residual sums in the convolutions:
    x = proj(v_spe(v) + attn, then ReLU) + x  [when use_vit];  x = proj_out(...) + skip(x)."""

    def __init__(self, block):
        super().__init__()
        self.use_vit = block.use_vit
        if self.use_vit:  # q, k, v, v_spe: [conv, Identity]; proj: [ReLU, conv, Identity]
            self.q, self.k, self.v = (InferenceConv(m[0]) for m in (block.q, block.k, block.v))
            self.v_spe = InferenceConv(block.v_spe[0], relu=True)  # the proj's ReLU on the sum
            self.attns = InferenceAttention.from_attention(block.attns)
            self.proj = InferenceConv(block.proj[1])
        mlp = block.mlp  # each [conv, Identity(, ReLU)]
        self.proj_in = InferenceConv(mlp.proj_in[0], relu=True)
        self.local_enhance = InferenceConv(mlp.local_enhance[0], relu=True)
        self.proj_out = InferenceConv(mlp.proj_out[0])
        if isinstance(block.skip, nn.Sequential):  # [conv, Identity, conv, Identity]
            self.skip = nn.Sequential(InferenceConv(block.skip[0]), InferenceConv(block.skip[2]))
        else:
            self.skip = nn.Identity()

    def forward(self, x):
        if self.use_vit:
            v = self.v(x)
            attn = self.attns(self.q(x), self.k(x), v)
            x = self.proj(self.v_spe(v, add=attn), add=x)
        return self.proj_out(self.local_enhance(self.proj_in(x)), add=self.skip(x))


def replace_children(model, kind, make):
    """In place: every submodule of `model` that is a `kind` becomes make(child), unless that is None.
    The fast forms (training, inference, export) are built with it."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                new = make(child)
                if new is not None:
                    setattr(parent, name, new)
    return model


def replace_layers(model):
    """In place: every LocalEnhanceBlock of a fused model an InferenceBlock, every stem unit's
    convolution an InferenceConv with its ReLU."""
    replace_children(model, LocalEnhanceBlock, InferenceBlock)
    for unit in model.modules():
        if isinstance(unit, ConvNormAct) and isinstance(unit.conv, nn.Conv2d):
            unit.conv, unit.act = InferenceConv(unit.conv, relu=True), nn.Identity()
    return model
