"""The export form of a DBN for the inference runtimes deployers use, and the files they read.

    form = network.fast.export_form(model, "onnxruntime")   # or "openvino"
    save_onnx(FeatureHead(form), example, "dbn.onnx")        # standard ONNX operators, opset 20
    save_openvino("dbn.onnx", "dbn.xml")                     # OpenVINO IR: dbn.xml and dbn.bin

Neither the native kernels nor the CPU inference form travel in an exported graph: a runtime sees
the network's operators and lays them out itself. The export form is a copy of the model, BatchNorm
folded, plain NCHW, whose operators are arranged the way each runtime runs them fastest; its
outputs are the model's up to float32 rounding (export.py checks the file against eager PyTorch).

- "onnxruntime": the window attention keeps each window's channels ahead of its tokens
  (ChannelMajorAttention), so that partitioning a map into windows moves whole rows of pixels, not
  single numbers: ONNX Runtime's Transpose copies contiguous runs, and its MatMul takes the
  transposed operands without a copy. The grouped 3x3 convolutions of 4 channels per group (no
  fast path in ONNX Runtime) run as four depthwise convolutions (GroupedAsDepthwise), which its
  blocked-layout kernels run, where a map has at least DEPTHWISE_MIN_CHANNELS channels.
- "openvino": the model as it is. OpenVINO fuses the attention's token-major pattern (normalise,
  MatMul, Softmax, MatMul) into its own attention operator and has a fast grouped convolution;
  the ONNX Runtime form runs slower there (`python -m benchmarks --what deploy` runs both forms).

docs/deployment.md has the measurements behind each choice.
"""
import copy
import importlib.util
import os
import tempfile
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from network.levit import MAX_LOGIT_SCALE, NORM_EPS, LocalEnhanceAttention

from .layers import replace_children

RUNTIMES = ("onnxruntime", "openvino")
ONNX_OPSET = 20  # the newest opset TensorRT 10's ONNX parser reads (9 to 20)
# Below this many channels (the first stage's 32 at 64x32 for a 256x128 input) the four depthwise
# convolutions and their channel gathers cost more in ONNX Runtime than the grouped convolution.
DEPTHWISE_MIN_CHANNELS = 96


class ChannelMajorAttention(LocalEnhanceAttention):
    """LocalEnhanceAttention on windows laid out (windows, heads, d, tokens): the partition keeps
    each window row's pixels contiguous (no partition at all where the map is one window wide and
    one high), the scores are q^T k, the output v p^T comes back channel-major. The per-head scale
    is a constant. A map that is not a whole number of windows takes the model's own (padded) path."""

    def __init__(self, attention):
        super().__init__(attention.heads, attention.window)
        self.load_state_dict(attention.state_dict())
        scale = torch.clamp(attention.logit_scale.detach(), max=MAX_LOGIT_SCALE).exp()
        self.register_buffer("scale", scale.view(attention.heads, 1, 1))

    def partition(self, t):
        # (B, C, H, W) -> (B * windows, heads, d, ws * ws)
        B, C, H, W = t.shape
        ws, h = self.window, self.heads
        rows, cols = H // ws, W // ws
        if cols == 1:  # a window is ws whole rows: contiguous already
            t = t.reshape(B, h, C // h, rows, ws * W)
            if rows == 1:
                return t.reshape(B, h, C // h, ws * W)
            return t.permute(0, 3, 1, 2, 4).reshape(B * rows, h, C // h, ws * W)
        t = t.reshape(B, h, C // h, rows, ws, cols, ws).permute(0, 3, 5, 1, 2, 4, 6)
        return t.reshape(B * rows * cols, h, C // h, ws * ws)

    def merge(self, t, B, C, H, W):
        # the inverse of partition
        ws, h = self.window, self.heads
        rows, cols = H // ws, W // ws
        if cols == 1:
            if rows == 1:
                return t.reshape(B, C, H, W)
            return t.reshape(B, rows, h, C // h, ws * W).permute(0, 2, 3, 1, 4).reshape(B, C, H, W)
        t = t.reshape(B, rows, cols, h, C // h, ws, ws).permute(0, 3, 4, 1, 5, 2, 6)
        return t.reshape(B, C, H, W)

    def forward(self, q, k, v):
        B, C, H, W = q.shape
        if H % self.window or W % self.window:
            return super().forward(q, k, v)
        q, k, v = self.partition(q), self.partition(k), self.partition(v)
        q = q * (self.scale / torch.linalg.vector_norm(q, dim=-2, keepdim=True).clamp_min(NORM_EPS))
        k = k / torch.linalg.vector_norm(k, dim=-2, keepdim=True).clamp_min(NORM_EPS)
        p = torch.softmax(torch.matmul(q.transpose(-2, -1), k), dim=-1)  # (windows, heads, queries, keys)
        return self.merge(torch.matmul(v, p.transpose(-2, -1)), B, C, H, W)


class GroupedAsDepthwise(nn.Module):
    """A grouped convolution of n input channels per group as the sum of n depthwise convolutions:
    out[c] = sum_j w[c, j] * x[n * (c // n) + j], the j-th over x's channels gathered in that order."""

    def __init__(self, conv):
        super().__init__()
        per, channels = conv.in_channels // conv.groups, conv.out_channels
        if channels != conv.in_channels:
            raise ValueError(f"GroupedAsDepthwise: {conv} does not keep its channel count")
        self.stride, self.padding, self.per = conv.stride, conv.padding, per
        weight = conv.weight.detach()
        self.weights = nn.ParameterList(
            nn.Parameter(weight[:, j:j + 1].clone(), requires_grad=False) for j in range(per))
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        group_start = torch.arange(channels) // per * per
        self.register_buffer("sources", torch.stack([group_start + j for j in range(per)]))  # (per, channels)

    def forward(self, x):
        channels = x.shape[1]
        out = None
        for j in range(self.per):
            term = F.conv2d(x.index_select(1, self.sources[j]), self.weights[j], self.bias if j == 0 else None,
                            self.stride, self.padding, groups=channels)
            out = term if out is None else out + term
        return out


def missing_packages(names):
    """The optional packages among `names` (requirements-export.txt) this environment lacks."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def packages_error(what, names, missing):
    """The usage message of `what` (a flag and its value) that needs `names` and lacks `missing`."""
    return (f"{what} needs the {', '.join(names[:-1])} and {names[-1]} packages (missing: {', '.join(missing)}); "
            "install them with: pip install -r requirements-export.txt")


def _depthwise(conv):
    grouped = conv.groups > 1 and conv.groups < conv.in_channels and conv.in_channels == conv.out_channels
    return GroupedAsDepthwise(conv) if grouped and conv.in_channels >= DEPTHWISE_MIN_CHANNELS else None


@torch.no_grad()
def export_form(model, runtime):
    """A copy of the LEViT or DBN `model` in eval mode, BatchNorm folded, NCHW, in `runtime`'s form
    (see the module docstring). The given model is not changed."""
    if runtime not in RUNTIMES:
        raise ValueError(f"export_form: unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    model = copy.deepcopy(model).eval()
    if not model.fused:
        model.fuse()
    model = model.to(memory_format=torch.contiguous_format)
    if runtime == "onnxruntime":
        replace_children(model, LocalEnhanceAttention, ChannelMajorAttention)
        replace_children(model, nn.Conv2d, _depthwise)
    return model


def save_onnx(module, example, path):
    """Write `module` (eval mode) to the ONNX file `path` (torch.onnx, dynamo), traced on the batch
    `example`, its batch dimension dynamic; input "images", output "features"."""
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        torch.onnx.export(module, (example,), path, dynamo=True, dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET,
                          input_names=["images"], output_names=["features"], external_data=False)


# The ONNX operators TensorRT 10's ONNX parser supports (onnx-tensorrt's operator support matrix,
# opsets 9 to 20), of those a PyTorch export of a convolutional network or a transformer produces.
TENSORRT_OPERATORS = frozenset("""
    Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
    ConvTranspose Cos CumSum DepthToSpace Div Einsum Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual HardSigmoid HardSwish Identity
    InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min
    Mod Mul Neg Not Or Pad Pow PRelu Range Reciprocal ReduceL1 ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin
    ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ScatterElements ScatterND Shape Sigmoid Sign Sin Size
    Slice Softmax Softplus SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Unsqueeze Where Xor
""".split())
TENSORRT_MAX_OPSET = 20


def tensorrt_problems(onnx_path):
    """What in the ONNX file `onnx_path` TensorRT 10's ONNX parser would refuse, as far as it can be told
    without TensorRT: the ONNX checker's complaints (with shape inference), an opset above
    TENSORRT_MAX_OPSET, operators of other domains or outside TENSORRT_OPERATORS. Empty when none."""
    import onnx
    model = onnx.load(onnx_path)
    problems = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        problems.append(f"the ONNX checker refuses it: {str(err).splitlines()[0]}")
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > TENSORRT_MAX_OPSET:
            problems.append(f"opset {opset.version} (TensorRT 10 reads 9 to {TENSORRT_MAX_OPSET})")
        elif opset.domain not in ("", "ai.onnx"):
            problems.append(f"operators of the domain {opset.domain!r}")
    unsupported = sorted({node.op_type for node in model.graph.node} - TENSORRT_OPERATORS)
    if unsupported:
        problems.append(f"operators TensorRT does not list: {', '.join(unsupported)}")
    return problems


def openvino_weights(xml_path):
    """The .bin file OpenVINO writes beside `xml_path`."""
    return os.path.splitext(xml_path)[0] + ".bin"


def save_openvino(onnx_path, xml_path):
    """Convert the ONNX file `onnx_path` to OpenVINO's IR, `xml_path` and the .bin beside it, weights in
    float32 (OpenVINO compresses them to float16 unless told not to)."""
    import openvino
    openvino.save_model(openvino.convert_model(onnx_path), xml_path, compress_to_fp16=False)


def module_to_openvino(module, example, xml_path):
    """Export `module` to ONNX in a temporary folder and convert it to OpenVINO IR at `xml_path`."""
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = os.path.join(folder, "model.onnx")
        save_onnx(module, example, onnx_path)
        save_openvino(onnx_path, xml_path)


def onnxruntime_session(path, threads=None):
    """A callable x (numpy float32) -> first output, for the ONNX file `path` in ONNX Runtime's CPU
    provider with every graph optimisation, `threads` intra-op threads (None: its default)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_session(path, threads=None):
    """A callable x (numpy float32) -> first output, for an OpenVINO IR or ONNX file on the CPU in float32
    (OpenVINO would otherwise run bfloat16 on CPUs that have it), `threads` inference threads."""
    import openvino
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        compiled = openvino.Core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0]
