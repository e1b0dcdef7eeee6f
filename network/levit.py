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


def conv_bn(in_dim, out_dim, kernel, stride=1, groups=1):
    """[conv (no bias), BN]: the unit every layer of the network is built from."""
    return [nn.Conv2d(in_dim, out_dim, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_dim)]


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
        # q, k, v: (B, C, H, W) -> (B, C, H, W); the per-head scale exp(min(logit_scale, log 100))
        scale = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()  # (heads, 1, 1)
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
        out = self.attend(q, k, v, scale, mask)
        out = self.from_windows(out, B, C, Hp, Wp, memory_format)
        if pad_h or pad_w:
            out = out[:, :, :H, :W]
        return out

    def attend(self, q, k, v, scale, mask):
        """(N, heads, T, d) windows -> (N, heads, T, d): cosine attention, softmax over the keys where
        `mask` (N, 1, 1, T) is True. The scale is folded into q (one multiply instead of two), so
        SDPA runs with scale 1."""
        q, k = scaled_normalize(q, scale), scaled_normalize(k, None)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


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

    def forward(self, x):
        if self.use_vit:
            v = self.v(x)
            attn = self.attns(self.q(x), self.k(x), v)
            x = x + self.drop_path(self.proj(attn + self.v_spe(v)))
        return self.skip(x) + self.drop_path(self.mlp(x))


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
    """`fuse()` folds every BN into the conv before it, for inference (and export); a fused model refuses
    to train. The CPU inference form built on a fused model is network.fast.inference_form."""

    fused = False

    @torch.no_grad()
    def fuse(self):
        """Fold conv+BN pairs in place (eval only; state_dict keys change). Returns the model."""
        fuse_conv_bn(self)
        self.fused = True
        return self

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
