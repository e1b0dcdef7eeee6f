"""Native CPU kernels for LEViT, compiled from network/fast/csrc on first use and cached on disk.

- `group4_conv3x3(x, packed, bias, add=None, stride=1, relu=False)`: LEViT's 3x3 convolutions with
  groups of 4 channels over channels_last float32 or bfloat16 maps, bias, residual sum and ReLU
  fused. `InferenceConv` (network/fast/layers.py, the inference form) calls it.
- `group4_conv3x3_trainable(x, weight, bias=None)`: the same stride-1 convolution with a backward
  (the input gradient by the kernel above with transpose_group4_weight, the weight gradient by
  `group4_conv3x3_weight_grad`), float32; `Group4Conv2d` calls it where `group4_conv_trains` allows
  (the training form, network/fast/training.py).
- `window_attention(q, k, v, scale, heads)`: the cosine attention in 8x8 windows read from and
  written to the channels_last maps, without window copies or padding. `InferenceAttention`
  (the inference form) calls it without a gradient.

They run eager and under torch.compile (their output shapes are registered); traced and exported
graphs keep torch's own operators. `python -m benchmarks --what model` compares the model with
and without them ("no native" rows).

The build needs a C++20 compiler (`$CXX`, else `c++`; what torch.compile needs on the CPU too) and
takes 10-20 s, once per machine: the library is kept under `$LEVIT_KERNELS_CACHE` (default
`~/.cache/levit_reid/kernels`), named by a hash of the sources, torch's version, the compiler and
the CPU's vector extensions (AVX512, AVX2 or neither, as torch reports them), so a shared home
directory serves machines of different CPUs. Without a compiler, or when the build fails,
`available()` is False, a warning says why once, and everything runs in oneDNN and torch's
operators (same outputs up to rounding). `LEVIT_KERNELS=0` turns the kernels off. Tests that need
the kernels skip without them, or fail where `LEVIT_REQUIRE_KERNELS=1` is set (CI).
"""
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

import torch

from . import cpu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
SOURCES = [os.path.join(CSRC, name) for name in ("group4_conv3x3.cpp", "window_attention.cpp")]
HEADERS = [os.path.join(CSRC, "vec.h")]
# compiler flags for the CPU capability torch reports (the instruction sets the kernel may use)
ARCH_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
              "AVX2": ["-mavx2", "-mfma"]}


BUILD_TIMEOUT = 600  # seconds; the build takes 10-20 s


class KernelBuildError(RuntimeError):
    """The kernels could not be built or loaded; the message says why."""


def required():
    """True when LEVIT_REQUIRE_KERNELS=1 (CI): tests that need the kernels fail without them instead of skipping."""
    return os.environ.get("LEVIT_REQUIRE_KERNELS", "").strip() == "1"


def enabled():
    """False when LEVIT_KERNELS=0 (or off/false/no) is set."""
    return os.environ.get("LEVIT_KERNELS", "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir():
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                           "levit_reid", "kernels")
    return os.environ.get("LEVIT_KERNELS_CACHE") or default


def compiler():
    """The C++ compiler's path: $CXX, else c++ on the PATH; KernelBuildError when there is none."""
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        raise KernelBuildError(f"no C++ compiler: {name!r} is not on the PATH (set CXX to one)")
    return path


def build_command(cxx, output):
    """The compile-and-link command of the kernels' shared library."""
    torch_dir = os.path.dirname(torch.__file__)
    lib = os.path.join(torch_dir, "lib")
    flags = ["-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
             *ARCH_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])]
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and cpu.avx512_bf16():
        flags.append("-mavx512bf16")
    if sys.platform == "darwin":
        flags += ["-undefined", "dynamic_lookup"]
    return [cxx, *flags, "-I", os.path.join(torch_dir, "include"), *SOURCES, "-L", lib, "-ltorch_cpu", "-lc10",
            f"-Wl,-rpath,{lib}", "-o", output]


def library_path(cxx):
    """Where the library built for this source, torch, compiler and CPU capability is kept."""
    source = b""
    for path in SOURCES + HEADERS:
        with open(path, "rb") as f:
            source += f.read()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join(x if isinstance(x, bytes) else x.encode() for x in (
        source, torch.__version__, version, torch.backends.cpu.get_cpu_capability(), platform.machine(),
        " ".join(build_command(cxx, "")))))
    return os.path.join(cache_dir(), f"levit_kernels_{key.hexdigest()[:16]}.so")


def build():
    """The path of the built library, compiling it first when it is not in the cache (the output is
    written to a temporary name and renamed, so processes building at once do not clash)."""
    cxx = compiler()
    path = library_path(cxx)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    try:
        try:
            done = subprocess.run(build_command(cxx, tmp), capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise KernelBuildError(f"compiling {os.path.relpath(CSRC, REPO)} with {cxx} took over "
                                   f"{BUILD_TIMEOUT} s; stopped") from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
            raise KernelBuildError(f"compiling {os.path.relpath(CSRC, REPO)} with {cxx} failed:\n{tail}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _group4_conv3x3_shape(x, packed, bias, add, stride, relu):
    """The kernel's output for torch.compile's tracing: shape, dtype and channels_last layout."""
    B, C, H, W = x.shape
    return torch.empty((B, C, (H - 1) // stride + 1, (W - 1) // stride + 1), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@functools.cache
def _ops():
    """torch.ops.levit_kernels once the library is loaded, or None (with one warning saying why)."""
    if not enabled():
        return None
    global _lanes, _unavailable
    try:
        torch.ops.load_library(build())
        torch.library.register_fake("levit_kernels::group4_conv3x3", _group4_conv3x3_shape)
        torch.library.register_fake("levit_kernels::window_attention", _window_attention_shape)
        torch.library.register_fake("levit_kernels::group4_conv3x3_weight_grad", _weight_grad_shape)
        _lanes = int(torch.ops.levit_kernels.vector_lanes())
        return torch.ops.levit_kernels
    except (KernelBuildError, OSError) as e:
        _unavailable = str(e)
        warnings.warn(f"network.fast.kernels: the native CPU kernels are not available ({e}); LEViT's grouped "
                      "convolutions and window attention run in oneDNN and torch's operators instead (slower, "
                      "same results up to rounding)", stacklevel=3)
        return None


_unavailable = None  # why the last build or load failed


def available():
    """True when the kernels are on and built (building them on the first call)."""
    return _ops() is not None


def unavailable_reason():
    """Why the kernels do not run here (None when they do)."""
    if available():
        return None
    return "turned off by LEVIT_KERNELS=0" if not enabled() else f"they could not be built: {_unavailable}"


def bfloat16_dot():
    """True when bfloat16 maps use AVX512-BF16's pair products (the weights rounded to bfloat16)."""
    ops = _ops()
    return ops is not None and bool(ops.bfloat16_dot())


_lanes = None  # vector_lanes() once the library is loaded


def vector_lanes():
    """Channels in one of the kernels' vectors (16 with AVX512, 8 with AVX, else 4); None without the
    kernels. While torch.compile traces, the value of the library loaded before (nothing is built then)."""
    if not torch.compiler.is_compiling():
        _ops()
    return _lanes


def supports_group4_conv(conv):
    """True for a convolution the kernel computes: 3x3, padding 1, stride 1 or 2 (both ways), no
    dilation, groups of 4 input and 4 output channels, channels a multiple of the vector width."""
    lanes = vector_lanes()
    return (lanes is not None and tuple(conv.kernel_size) == (3, 3) and tuple(conv.padding) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and tuple(conv.stride) in ((1, 1), (2, 2))
            and conv.in_channels == conv.out_channels == 4 * conv.groups and conv.in_channels % lanes == 0)


def group4_conv_applies(x, add=None):
    """True when group4_conv3x3 takes this input (and sum term, once laid out channels_last): a
    channels_last float32 or bfloat16 CPU map, no gradient (the kernel has no backward), the term of
    x's dtype."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not torch.is_grad_enabled()
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and (add is None or add.dtype == x.dtype))


ATTENTION_WINDOW = 8
# vectors of channels a head the attention kernel is built for (LEViT's 16 to 96 channels at 4 to 16 lanes)
ATTENTION_HEAD_VECTORS = (1, 2, 3, 4, 6, 8, 12, 16, 24)


def window_attention_applies(q, k, v, heads, window):
    """True when window_attention takes these maps: CPU float32 or bfloat16 q, k, v of one shape and
    dtype, channels_last, no gradient, 8x8 windows, channels a head a multiple of the vector width
    (ATTENTION_HEAD_VECTORS of them), with the kernels built; not while tracing or exporting."""
    if not (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) and not torch.is_grad_enabled()
            and window == ATTENTION_WINDOW and q.dim() == 4):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_exporting():  # an exported graph keeps torch's own ops
        return False
    lanes = vector_lanes()
    head_dim = q.shape[1] // heads
    return (lanes is not None and q.shape[1] == heads * head_dim and head_dim % lanes == 0
            and head_dim // lanes in ATTENTION_HEAD_VECTORS
            and all(t.shape == q.shape and t.dtype == q.dtype and t.is_contiguous(memory_format=torch.channels_last)
                    for t in (q, k, v)))


def window_attention(q, k, v, scale, heads, window=ATTENTION_WINDOW):
    """LEViT's cosine window attention for inference (network/fast/csrc/window_attention.cpp): `scale` the
    (heads,) float32 factors exp(min(logit_scale, log 100)); maps as window_attention_applies says.
    Windows cut by the border hold fewer tokens, as the masked padding of the plain path."""
    if not torch.compiler.is_compiling() and not available():
        raise KernelBuildError("the native CPU kernels are not available (see the warning, or LEVIT_KERNELS)")
    return torch.ops.levit_kernels.window_attention(q, k, v, scale, heads, window)


def _window_attention_shape(q, k, v, scale, heads, window):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device, memory_format=torch.channels_last)


def pack_group4_weight(weight):
    """(C, 4, 3, 3) grouped weights -> the kernel's (9, 4, C) float32 layout:
    packed[kh * 3 + kw, r, c] = weight[c, (c % 4 + r) % 4, kh, kw]."""
    C = weight.shape[0]
    c = torch.arange(C, device=weight.device)
    r = torch.arange(4, device=weight.device)
    rotated = weight.float()[c[None, :], (c[None, :] % 4 + r[:, None]) % 4]  # (4, C, 3, 3)
    return rotated.permute(2, 3, 0, 1).reshape(9, 4, C).contiguous()


def group4_conv3x3(x, packed, bias, add=None, stride=1, relu=False):
    """relu?(conv(x) + bias + add) for a channels_last float32/bfloat16 x (see the module docstring);
    `packed` from pack_group4_weight, `bias` float32. Returns a channels_last tensor of x's dtype."""
    if not torch.compiler.is_compiling() and not available():
        raise KernelBuildError("the native CPU kernels are not available (see the warning, or LEVIT_KERNELS)")
    return torch.ops.levit_kernels.group4_conv3x3(x, packed, bias, add, stride, relu)


def _weight_grad_shape(x, grad):
    return torch.empty((9, 4, x.shape[1]), dtype=torch.float32, device=x.device)


def unpack_group4_weight(packed):
    """The inverse of pack_group4_weight: (9, 4, C) -> (C, 4, 3, 3), weight[c, (c % 4 + r) % 4] = packed[:, r, c]."""
    C = packed.shape[2]
    c = torch.arange(C, device=packed.device)
    r = torch.arange(4, device=packed.device)
    weight = packed.new_empty(C, 4, 9)
    weight[c[None, :], (c[None, :] % 4 + r[:, None]) % 4] = packed.permute(1, 2, 0)  # (4, C, 9)
    return weight.view(C, 4, 3, 3)


def transpose_group4_weight(weight):
    """The weights of the input gradient of a stride-1 grouped 3x3 convolution as one of its kind: within
    each group, input and output channels swapped and the kernel turned by 180 degrees
    (grad_x = conv(grad_y, w') with w'[4g + i, o, kh, kw] = w[4g + o, i, 2 - kh, 2 - kw])."""
    C = weight.shape[0]
    return weight.reshape(C // 4, 4, 4, 3, 3).transpose(1, 2).flip(3, 4).reshape(C, 4, 3, 3)


class _Group4Conv3x3(torch.autograd.Function):
    """A stride-1 grouped 3x3 convolution (groups of 4) with its backward in the kernels: the input
    gradient as the forward kernel with transpose_group4_weight, the weight gradient by
    group4_conv3x3_weight_grad, the bias gradient as a sum."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # dense channels_last as the kernels read it: a no-op in eager (group4_conv_trains checked it), and
        # a guarantee under torch.compile, where the input is whatever buffer the graph hands over
        x = x.contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        b = bias.float().contiguous() if bias is not None else x.new_zeros(weight.shape[0], dtype=torch.float32)
        return torch.ops.levit_kernels.group4_conv3x3(x, pack_group4_weight(weight), b, None, 1, False)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            zeros = grad.new_zeros(weight.shape[0], dtype=torch.float32)
            grad_x = torch.ops.levit_kernels.group4_conv3x3(
                grad, pack_group4_weight(transpose_group4_weight(weight)), zeros, None, 1, False)
        if ctx.needs_input_grad[1]:
            packed = torch.ops.levit_kernels.group4_conv3x3_weight_grad(x, grad)
            grad_w = torch.empty_like(weight).copy_(unpack_group4_weight(packed))  # the weight's layout
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def group4_conv_trains(conv, x):
    """True when group4_conv3x3_trainable takes this stride-1 convolution (supports_group4_conv) and
    input, gradients on or off: a channels_last float32 CPU map and float32 weights, no autocast,
    eager or under torch.compile (whose graph calls the kernels as operators, forward and backward),
    not while torch.jit traces or torch.export exports (their files keep torch's operators)."""
    if not (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and tuple(conv.stride) == (1, 1) and not torch.is_autocast_enabled("cpu")):
        return False
    return not (torch.jit.is_tracing() or torch.compiler.is_exporting()) and supports_group4_conv(conv)


def group4_conv3x3_trainable(x, weight, bias=None):
    """conv2d(x, weight, bias, padding=1, groups=C // 4) through the kernels, forward and backward
    (see group4_conv_trains for the inputs it takes). Returns a channels_last float32 map."""
    if not torch.compiler.is_compiling() and not available():
        raise KernelBuildError("the native CPU kernels are not available (see the warning, or LEVIT_KERNELS)")
    return _Group4Conv3x3.apply(x, weight, bias)
