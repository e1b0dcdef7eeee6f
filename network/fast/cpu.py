"""What this CPU and this torch build offer the inference form, and the private torch operators it
calls, each behind a capability check with a fallback (plain torch operators) where it is absent.

- oneDNN's fused operators (`torch.ops.mkldnn._linear_pointwise`, `_convolution_pointwise`): a
  convolution or matrix product with its bias, a ReLU and a residual sum in one call, for
  inference only (no backward). `ONEDNN_FUSED` says whether this torch build has them.
- `avx512_bf16()`, `amx_tile()`, `native_bfloat16()`: the CPU's bfloat16 instructions, from
  torch's private CPU checks where they exist (False where they do not).
"""
import torch


def _has_op(namespace, name):
    try:
        return hasattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False


ONEDNN_FUSED = (torch.backends.mkldnn.is_available() and _has_op("mkldnn", "_linear_pointwise")
                and _has_op("mkldnn", "_convolution_pointwise"))


def _cpu_check(name):
    check = getattr(torch.cpu, name, None)
    return bool(check()) if callable(check) else False


def avx512_bf16():
    """True where the CPU has AVX512-BF16 (bfloat16 pair products)."""
    return _cpu_check("_is_avx512_bf16_supported")


def amx_tile():
    """True where the CPU has AMX tiles."""
    return _cpu_check("_is_amx_tile_supported")


def native_bfloat16():
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX): there oneDNN's bfloat16
    convolutions and matrix products are faster than float32; elsewhere they are emulated and slower."""
    return torch.backends.mkldnn.is_available() and (avx512_bf16() or amx_tile())


def capturing_graph():
    """True while torch.jit traces or torch.compile / torch.export capture a graph, which must stay valid
    for any input and keep torch's own operators where the fast paths are eager-only."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def onednn_applies(x):
    """True where oneDNN's fused operators may run on x: eager (not while torch.compile traces:
    inductor makes its own fusions), no gradient (they have no backward), a float32 or bfloat16 CPU
    tensor, operators present in this build."""
    return (ONEDNN_FUSED and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling())


def linear(t, weight, bias, relu=False):
    """relu?(t @ weight.T + bias) for t (..., in) in one oneDNN call."""
    return torch.ops.mkldnn._linear_pointwise(t, weight, bias, "relu" if relu else "none", [], "")


def linear_add(t, add, weight, bias):
    """t @ weight.T + bias + add in one oneDNN call (bfloat16; in float32 linear() then add_ is faster)."""
    return torch.ops.mkldnn._linear_pointwise.binary(t, add, weight, bias, "add")


def conv(x, weight, bias, padding, stride, dilation, groups, relu=False):
    """relu?(conv2d(x) + bias) in one oneDNN call."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups,
                                                   "relu" if relu else "none", [], "")


def conv_add(x, add, weight, bias, padding, stride, dilation, groups, relu=False):
    """relu?(conv2d(x) + bias + add) in one oneDNN call; the ReLU as a post-op in float32 only (in
    bfloat16 the operator refuses add + ReLU, so it runs after)."""
    fuse_relu = relu and x.dtype == torch.float32
    y = torch.ops.mkldnn._convolution_pointwise.binary(x, add, weight, bias, padding, stride, dilation, groups,
                                                       "add", None, "relu" if fuse_relu else None, [], "")
    return y.relu_() if relu and not fuse_relu else y
