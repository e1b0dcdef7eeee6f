"""LEViT backbone: a conv stem and three stages of local-enhance blocks with windowed cosine attention.

Submodule names are the released checkpoint's key names, so a released backbone file loads with a
strict `load_state_dict` (after `checkpoint_filter_fn` has stripped wrapper prefixes).
Input: RGB in [0, 1], NCHW, no mean/std normalisation (the release was trained that way).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import StochasticDepth

from . import kernels

# Constructor arguments of the released backbones; the fields match the released file names.
VARIANTS = {
    "small": dict(stem=16, embed_dim=96, mlp_ratio=1.0, layers=[4, 7, 4], num_heads=[1, 2, 4],
                  split_size=[8, 8, 8], drop_path=0.05, use_vit=[1, 1, 0]),
    "large": dict(stem=16, embed_dim=192, mlp_ratio=1.0, layers=[4, 7, 4], num_heads=[2, 4, 8],
                  split_size=[8, 8, 8], drop_path=0.10, use_vit=[1, 1, 0]),
}
# Released ImageNet backbone files (place them under network/). The window is 8 although the
# names say ss777.
RELEASED_FILES = {
    "small": "stem16_dim96_ratio1_layers474_heads124_ss777_dp005_vit110.pth",
    "large": "stem16_dim192_ratio1_layers474_heads248_ss777_dp010_vit110.pth",
}

MAX_LOGIT_SCALE = math.log(100.0)
NORM_EPS = 1e-12  # as F.normalize


class Group4Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state_dict keys) for LEViT's 3x3 convolutions with groups of 4
    channels: the stride-1 ones run forward and backward in network/kernels.py's kernels where
    kernels.group4_conv_trains allows (float32 on the CPU, eager, no autocast: CPU training and the
    unfused model's evaluation), else as nn.Conv2d. Measured at the demo's batch-32 shapes, forward
    and backward together: 1.5-2.7x oneDNN."""

    native_kernel = True

    def forward(self, x):
        if self.native_kernel and kernels.group4_conv_trains(self, x):
            return kernels.group4_conv3x3_trainable(x, self.weight, self.bias)
        return super().forward(x)


def conv_bn(in_dim, out_dim, kernel, stride=1, groups=1):
    """[conv (no bias), BN]: the unit every layer of the network is built from."""
    conv = Group4Conv2d if kernel == 3 and in_dim == out_dim == 4 * groups else nn.Conv2d
    return [conv(in_dim, out_dim, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_dim)]


class ConvNormAct(nn.Module):
    """Stem unit: 3x3 conv, BN, ReLU (keys `conv`, `norm`)."""

    def __init__(self, in_dim, out_dim, stride):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


def is_channels_last(x):
    """True for a 4-D tensor laid out NHWC (and not also plainly contiguous)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def scaled_normalize_forward(x, scale):
    """(x * scale / max(|x|, eps), |x| clamped, scale / |x|): ScaledNormalize's forward, in plain ops."""
    # Under autocast q and k arrive in float16/bfloat16 while the scale is a float32 parameter:
    # the norm and the products are computed in (at least) float32 and the result is cast back
    # to x's dtype, so SDPA sees one dtype and the backward's inputs match.
    compute = torch.promote_types(x.dtype, torch.float32)
    xc = x.to(compute)
    norm = torch.linalg.vector_norm(xc, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
    inv = norm.reciprocal() if scale is None else scale.to(compute) / norm
    return (xc * inv).to(x.dtype), norm, inv


def scaled_normalize(x, scale):
    """ScaledNormalize where a gradient may be needed; without one (inference, tracing for export) the
    same forward in plain torch ops, which TorchScript and ONNX can serialise (a Python autograd
    Function they cannot)."""
    if torch.is_grad_enabled() and not torch.jit.is_tracing():
        return ScaledNormalize.apply(x, scale)
    return scaled_normalize_forward(x, scale)[0]


class ScaledNormalize(torch.autograd.Function):
    """x * scale / max(|x|, eps) along the last dim (F.normalize times a per-head scale).

    The values and gradients of composing it from torch ops, with a hand-written backward that
    makes two passes over x instead of about six (it runs on every q and k of every attention
    block, and the training step is bound by memory traffic): for y = x * r with r = scale / |x|,
    dL/dx = r * (g - x * <g, x> / |x|^2) and dL/dscale = sum of <g, x> / |x|.
    `scale` broadcasts against x's (..., heads, T, 1), or is None (no scale, no gradient).
    """

    @staticmethod
    def forward(ctx, x, scale):
        out, norm, inv = scaled_normalize_forward(x, scale)
        ctx.save_for_backward(x, norm, inv)
        ctx.scale_dtype = None if scale is None else scale.dtype
        ctx.scale_shape = None if scale is None else scale.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        x, norm, inv = ctx.saved_tensors
        xc, grad = x.to(norm.dtype), grad.to(norm.dtype)  # no copies in float32
        dot = torch.linalg.vecdot(grad, xc, dim=-1).unsqueeze(-1)  # <g, x>
        grad_x = grad_scale = None
        if ctx.needs_input_grad[0]:
            # where |x| was clamped to eps the factor is a constant: no second term
            coef = torch.where(norm > NORM_EPS, dot / (norm * norm), 0.0)
            grad_x = torch.addcmul(grad, xc, coef, value=-1).mul_(inv).to(x.dtype)
        if ctx.scale_shape is not None and ctx.needs_input_grad[1]:
            grad_scale = (dot / norm).sum_to_size(ctx.scale_shape).to(ctx.scale_dtype)
        return grad_x, grad_scale


ONEDNN_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fused_cpu_kernels(x):
    """True where InferenceConv may call oneDNN's fused convolution and matrix-product operators
    for x: eager (not while torch.compile traces: inductor makes its own fusions), no gradient (the
    operators have no backward), on the CPU, in float32 or bfloat16, with oneDNN built in."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not torch.is_grad_enabled()
            and ONEDNN_POINTWISE and not torch.compiler.is_compiling())


class InferenceConv(nn.Module):
    """A convolution whose BatchNorm has been folded in, for inference (LEViT.optimize): y = conv(x)
    [+ add] [then ReLU], as one oneDNN call where fused_cpu_kernels allows, else as plain ops.

    A 1x1 convolution over a channels_last map is a matrix product over its pixels: the map's
    (B, H, W, C) memory is multiplied by the (out, in) weight with no copy (measured on one core:
    oneDNN's matrix product takes half the time of the 1x1 convolution at batch 1 to 8, where
    PyTorch sends float32 1x1 convolutions to its own im2col + BLAS path; the same at batch 32).
    """

    def __init__(self, conv, relu=False):
        super().__init__()
        self.pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) \
            and conv.groups == 1
        weight = conv.weight.detach()
        self.weight = nn.Parameter(weight.flatten(1).clone() if self.pointwise else weight.clone(),
                                   requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype,
                                                                                     device=weight.device)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups, self.relu = conv.groups, bool(relu)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # LEViT's 3x3 convolutions with groups of 4 channels: the native CPU kernel where it is built
        # (a model optimized on a GPU does not build it)
        self.group4 = weight.device.type == "cpu" and kernels.supports_group4_conv(conv)
        self._group4_key = self._group4_weights = None

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

    # Under torch.compile a bfloat16 1x1 convolution goes to inductor as a linear layer (measured
    # faster at batch 1: 16.0 against 19.2 ms for DBN-S on one core); a float32 one stays a
    # convolution (inductor's float32 linear layer was 1.4x slower at batch 32 here).
    traced_as_linear = True

    def forward(self, x, add=None):
        if self.group4 and kernels.group4_conv_applies(x, add):
            if add is not None:  # a cropped attention output (padded windows) is not dense
                add = add.contiguous(memory_format=torch.channels_last)
            return kernels.group4_conv3x3(x, *self.group4_weights(), add, self.stride[0], self.relu)
        fast = fused_cpu_kernels(x)
        if self.pointwise:
            t = x.permute(0, 2, 3, 1)  # (B, H, W, C): the memory of a channels_last map
            if t.is_contiguous() and (add is None or add.permute(0, 2, 3, 1).is_contiguous()):
                if fast and add is None:
                    y = torch.ops.mkldnn._linear_pointwise(t, self.weight, self.bias, "relu" if self.relu else "none",
                                                           [], "")
                    return y.permute(0, 3, 1, 2)
                # float32: the matrix product, then the sum in place (measured 0-18% faster than the
                # fused binary operator and than a convolution and a sum, batch 1 to 32)
                if fast and not self.relu and x.dtype == torch.float32:
                    y = torch.ops.mkldnn._linear_pointwise(t, self.weight, self.bias, "none", [], "")
                    return y.add_(add.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                if fast and not self.relu:
                    y = torch.ops.mkldnn._linear_pointwise.binary(t, add.permute(0, 2, 3, 1), self.weight, self.bias,
                                                                  "add")
                    return y.permute(0, 3, 1, 2)
            if self.traced_as_linear and x.dtype != torch.float32 and t.is_contiguous() and torch.compiler.is_compiling():
                y = F.linear(t, self.weight, self.bias).permute(0, 3, 1, 2)
            else:
                y = F.conv2d(x, self.weight[:, :, None, None], self.bias)
        elif fast and (add is None or add.is_contiguous(memory_format=torch.channels_last) == is_channels_last(x)):
            if add is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                    "relu" if self.relu else "none", [], "")
            # ReLU as a post-op of the sum in float32 only (in bfloat16 the operator refuses add + ReLU)
            fuse_relu = self.relu and x.dtype == torch.float32
            y = torch.ops.mkldnn._convolution_pointwise.binary(
                x, add, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups, "add", None,
                "relu" if fuse_relu else None, [], "")
            return y.relu_() if self.relu and not fuse_relu else y
        else:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if add is not None:
            y = y + add
        return F.relu(y) if self.relu else y


def inference_attention(q, k, v, scale, mask):
    """Inference attention on the CPU for float32 or bfloat16 q, k, v: q and k normalised in float32
    and kept there, the logits and softmax in float32 (the softmax in place when eager), the
    probabilities in v's dtype for the product with v. In bfloat16 as close to float32 as SDPA's
    bfloat16 kernel (q and k are not rounded at all) and measured 1.3-1.5x faster than it at the
    window sizes of LEViT (64 tokens, 32-96 channels a head); in float32 about 6% faster for DBN-S
    at batch 32 than normalising apart and calling SDPA (its 64-token windows are too short for
    its blocked kernel)."""
    q, k = scaled_normalize_forward(q.float(), scale)[0], scaled_normalize_forward(k.float(), None)[0]
    logits = torch.matmul(q, k.transpose(-2, -1))
    if mask is not None:
        logits = logits.masked_fill_(~mask, float("-inf"))
    if kernels.capturing_graph():
        probs = logits.softmax(-1)
    else:
        probs = torch.softmax(logits, -1, out=logits)
    return torch.matmul(probs.to(v.dtype), v)


class LocalEnhanceAttention(nn.Module):
    """Cosine attention inside non-overlapping window x window windows, one scale per head.

    Any feature map size works: q, k and v are zero-padded up to a multiple of the window,
    padded keys are masked out and the output is cropped back. When the size is already a
    multiple of the window no padding code runs.
    """

    def __init__(self, heads, window):
        super().__init__()
        self.heads = heads
        self.window = window
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))

    # inference on the CPU goes to network/kernels.py's window_attention where it applies (False: torch ops)
    native_kernel = True

    def to_windows(self, t, memory_format):
        # (B, C, H, W) -> (B * nH * nW, heads, ws * ws, d); channel c belongs to head c // d.
        # Reading in the input's own memory order keeps the gradient in that format too.
        B, C, H, W = t.shape
        ws, h = self.window, self.heads
        if memory_format == torch.channels_last:
            t = t.permute(0, 2, 3, 1).view(B, H // ws, ws, W // ws, ws, h, C // h)
            return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, h, ws * ws, C // h)
        t = t.view(B, h, C // h, H // ws, ws, W // ws, ws)
        return t.permute(0, 3, 5, 1, 4, 6, 2).reshape(-1, h, ws * ws, C // h)

    def from_windows(self, t, B, C, H, W, memory_format):
        # (B * nH * nW, heads, ws * ws, d) -> (B, C, H, W) in the input's memory format (mixed
        # formats make every later elementwise op and conv, forward and backward, much slower)
        ws, h = self.window, self.heads
        t = t.view(B, H // ws, W // ws, h, ws, ws, C // h)
        if memory_format == torch.channels_last:
            return t.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return t.permute(0, 3, 6, 1, 4, 2, 5).reshape(B, C, H, W)

    def key_mask(self, H, W, Hp, Wp, device):
        # (nH * nW, 1, 1, ws * ws) bool, True where the key is a real (unpadded) position
        ws = self.window
        valid = torch.zeros(Hp, Wp, dtype=torch.bool, device=device)
        valid[:H, :W] = True
        valid = valid.view(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3)
        return valid.reshape(-1, 1, 1, ws * ws)

    def forward(self, q, k, v):
        # cosine attention: unit-length q and k; the per-head scale exp(min(logit_scale, log 100))
        # is folded into q (one multiply instead of two), so SDPA runs with scale 1
        scale = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()  # (heads, 1, 1)
        if self.native_kernel and kernels.window_attention_applies(q, k, v, self.heads, self.window):
            return kernels.window_attention(q, k, v, scale.flatten().float(), self.heads, self.window)
        B, C, H, W = q.shape
        ws = self.window
        memory_format = torch.channels_last if is_channels_last(q) else torch.contiguous_format
        pad_h, pad_w = -H % ws, -W % ws
        mask = None
        if pad_h or pad_w:
            q, k, v = (F.pad(t, (0, pad_w, 0, pad_h)) for t in (q, k, v))
            mask = self.key_mask(H, W, H + pad_h, W + pad_w, q.device).repeat(B, 1, 1, 1)
        Hp, Wp = H + pad_h, W + pad_w
        q, k, v = (self.to_windows(t, memory_format) for t in (q, k, v))
        if q.dtype in (torch.float32, torch.bfloat16) and q.device.type == "cpu" and not torch.is_grad_enabled():
            out = inference_attention(q, k, v, scale, mask)
        else:
            q, k = scaled_normalize(q, scale), scaled_normalize(k, None)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        out = self.from_windows(out, B, C, Hp, Wp, memory_format)
        if pad_h or pad_w:
            out = out[:, :, :H, :W]
        return out


class LocalEnhanceMLP(nn.Module):
    """1x1 conv up to the hidden width, 3x3 grouped conv (carries the block's stride), 1x1 conv out."""

    def __init__(self, dim, hidden, out_dim, stride):
        super().__init__()
        self.proj_in = nn.Sequential(*conv_bn(dim, hidden, 1), nn.ReLU(inplace=True))
        self.local_enhance = nn.Sequential(*conv_bn(hidden, hidden, 3, stride, hidden // 4),
                                           nn.ReLU(inplace=True))
        self.proj_out = nn.Sequential(*conv_bn(hidden, out_dim, 1))

    def forward(self, x):
        return self.proj_out(self.local_enhance(self.proj_in(x)))


class LocalEnhanceBlock(nn.Module):
    """x = x + dp(proj(attn(q, k, v) + v_spe(v)))  [when use_vit];  x = skip(x) + dp(mlp(x))."""

    def __init__(self, dim, out_dim, heads, window, mlp_ratio, stride, drop_path, use_vit):
        super().__init__()
        self.use_vit = bool(use_vit)
        if self.use_vit:
            self.q = nn.Sequential(*conv_bn(dim, dim, 3, groups=dim // 4))
            self.k = nn.Sequential(*conv_bn(dim, dim, 3, groups=dim // 4))
            self.v = nn.Sequential(*conv_bn(dim, dim, 3, groups=dim // 4))
            self.v_spe = nn.Sequential(*conv_bn(dim, dim, 3, groups=dim // 4))
            self.attns = LocalEnhanceAttention(heads, window)
            self.proj = nn.Sequential(nn.ReLU(inplace=True), *conv_bn(dim, dim, 1))  # its input is a fresh sum
        self.mlp = LocalEnhanceMLP(dim, int(mlp_ratio * out_dim), out_dim, stride)
        if stride == 1 and dim == out_dim:
            self.skip = nn.Identity()
        else:
            self.skip = nn.Sequential(*conv_bn(dim, dim, 3, stride, dim // 4), *conv_bn(dim, out_dim, 1))
        self.drop_path = StochasticDepth(drop_path, "row")

    optimized = False  # set by optimize()

    def forward(self, x):
        if self.optimized:
            return self.forward_optimized(x)
        if self.use_vit:
            v = self.v(x)
            attn = self.attns(self.q(x), self.k(x), v)
            x = x + self.drop_path(self.proj(attn + self.v_spe(v)))
        return self.skip(x) + self.drop_path(self.mlp(x))

    @torch.no_grad()
    def optimize(self):
        """Inference form of a fused block (BatchNorm folded, eval): every conv an InferenceConv with its
        ReLU and the residual sums fused in (attention + v_spe(v), then ReLU; x + proj; skip + mlp)."""
        first = lambda seq: seq[0]  # noqa: E731  the conv of a [conv, Identity] pair
        if self.use_vit:
            self.q, self.k, self.v = (InferenceConv(first(m)) for m in (self.q, self.k, self.v))
            self.v_spe = InferenceConv(first(self.v_spe), relu=True)  # the proj's ReLU on the sum
            self.proj = InferenceConv(self.proj[1])
        mlp = self.mlp
        mlp.proj_in = InferenceConv(first(mlp.proj_in), relu=True)
        mlp.local_enhance = InferenceConv(first(mlp.local_enhance), relu=True)
        mlp.proj_out = InferenceConv(first(mlp.proj_out))
        if isinstance(self.skip, nn.Sequential):
            self.skip = nn.Sequential(InferenceConv(self.skip[0]), InferenceConv(self.skip[2]))
        self.optimized = True
        return self

    def forward_optimized(self, x):
        if self.use_vit:
            v = self.v(x)
            attn = self.attns(self.q(x), self.k(x), v)
            x = self.proj(self.v_spe(v, add=attn), add=x)
        mlp = self.mlp
        return mlp.proj_out(mlp.local_enhance(mlp.proj_in(x)), add=self.skip(x))


class StageModule(nn.Module):
    """`layers` local-enhance blocks; the first maps dim -> out_dim with stride `stride`."""

    def __init__(self, dim, out_dim, layers, heads, window, mlp_ratio, stride, drop_paths, use_vit):
        super().__init__()
        self.layers = nn.Sequential(*[
            LocalEnhanceBlock(dim if i == 0 else out_dim, out_dim, heads, window, mlp_ratio,
                              stride if i == 0 else 1, drop_paths[i], use_vit)
            for i in range(layers)])

    def forward(self, x):
        return self.layers(x)


class Fusable:
    """`fuse()` folds every BN into the conv before it, for inference; a fused model refuses to train."""

    fused = False

    @torch.no_grad()
    def fuse(self):
        """Fold conv+BN pairs in place (eval only; state_dict keys change). Returns the model."""
        fuse_conv_bn(self)
        self.fused = True
        return self

    @torch.no_grad()
    def optimize(self):
        """After fuse(), for inference in eager PyTorch and under torch.compile: each block in its
        inference form (LocalEnhanceBlock.optimize: ReLUs and residual sums fused into the
        convolutions, 1x1 convolutions as matrix products on the CPU) and the stem's ReLUs fused. Same
        outputs up to rounding; state_dict keys change again. Not for TorchScript or ONNX export
        (export the fused model). Returns the model."""
        if not self.fused:
            raise RuntimeError(f"optimize: fuse() this {type(self).__name__} first")
        for m in list(self.modules()):
            if isinstance(m, LocalEnhanceBlock) and not m.optimized:
                m.optimize()
            elif isinstance(m, ConvNormAct) and isinstance(m.conv, nn.Conv2d):
                m.conv, m.act = InferenceConv(m.conv, relu=True), nn.Identity()
        self.optimized = True
        return self

    optimized = False

    def train(self, mode: bool = True):
        if mode and self.fused:
            raise RuntimeError(f"this {type(self).__name__} was fused for inference (BatchNorm folded into "
                               "the convs) and cannot train; build a new model to train")
        return super().train(mode)


class LEViT(Fusable, nn.Module):
    def __init__(self, num_classes: int = 1000, stem: int = 16, embed_dim: int = 96,
                 mlp_ratio: float = 1., layers=(4, 7, 4), num_heads=(1, 2, 4),
                 split_size=(8, 8, 8), drop_path: float = 0.05, use_vit=(1, 1, 0)):
        super().__init__()
        for name, value in (("layers", layers), ("num_heads", num_heads),
                            ("split_size", split_size), ("use_vit", use_vit)):
            if len(value) != 3:
                raise ValueError(f"LEViT: {name} needs one value per stage (3), got {list(value)}")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_features = 4 * embed_dim
        self.stem = nn.Sequential(ConvNormAct(3, stem, 2), ConvNormAct(stem, stem, 1),
                                  ConvNormAct(stem, 2 * stem, 2), ConvNormAct(2 * stem, 2 * stem, 1))
        # stochastic depth rises linearly from 0 to drop_path over all blocks of all stages
        num_blocks = sum(layers)
        rates = [drop_path * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        dims = [2 * stem, embed_dim, 2 * embed_dim, 4 * embed_dim]
        for i in range(3):
            start = sum(layers[:i])
            setattr(self, f"stage{i + 1}", StageModule(
                dims[i], dims[i + 1], layers[i], num_heads[i], split_size[i], mlp_ratio, 2,
                rates[start:start + layers[i]], use_vit[i]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.num_features, num_classes)
        init_weights(self)
        # channels_last: the grouped 3x3 convs run several times faster on CPU (oneDNN) in this
        # layout. Call .to(memory_format=torch.contiguous_format) to get the plain NCHW model.
        self.to(memory_format=torch.channels_last)

    def forward_features(self, x):
        x = match_memory_format(x, self.stem[0].conv.weight)
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return torch.flatten(self.avgpool(x), 1)  # (B, 4E)

    def forward(self, x):
        return self.head(self.forward_features(x))


def match_memory_format(x, weight):
    """The input in the layout and dtype of the model's (first conv) weights: mixing layouts is slow."""
    x = x.to(weight.dtype)
    if is_channels_last(weight):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def init_weights(module):
    """BN weight 1, bias 0; conv and linear weights Kaiming normal; linear bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def fuse_conv_bn(model):
    """Fold each BatchNorm2d into the preceding conv, in place; returns the model in eval mode."""
    model.eval()
    for m in list(model.modules()):
        if isinstance(m, ConvNormAct) and isinstance(m.norm, nn.BatchNorm2d):
            m.conv, m.norm = fuse_conv_bn_eval(m.conv, m.norm), nn.Identity()
        elif isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.BatchNorm2d):
                    m[i], m[i + 1] = fuse_conv_bn_eval(m[i], m[i + 1]), nn.Identity()
    return model
