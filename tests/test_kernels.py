"""network/fast/kernels.py: the native grouped-convolution kernel against torch's convolution, its use
in the inference and training forms (eager and compiled), what a user sees when it cannot be built,
and LEVIT_REQUIRE_KERNELS=1 turning the skips of these tests into failures."""
import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from network import DBN
from network.fast import (Group4Conv2d, InferenceAttention, InferenceConv, inference_form, kernels, optimize,
                          training_form)
from network.levit import LocalEnhanceAttention

from tests.helpers import ROOT, with_formula_weights

# skips without the kernels, fails instead under LEVIT_REQUIRE_KERNELS=1 (conftest.native_kernels)
needs_kernels = pytest.mark.usefixtures("native_kernels")


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def grouped_conv(x, weight, bias, add, stride, relu):
    y = F.conv2d(x, weight, bias, stride, 1, 1, weight.shape[0] // 4)
    if add is not None:
        y = y + add
    return y.relu() if relu else y


def test_packed_weight_layout():
    """packed[kh * 3 + kw, r, c] = weight[c, (c % 4 + r) % 4, kh, kw], element by element."""
    weight = torch.randn(16, 4, 3, 3)
    packed = kernels.pack_group4_weight(weight)
    assert packed.shape == (9, 4, 16) and packed.dtype == torch.float32
    for kh in range(3):
        for kw in range(3):
            for r in range(4):
                for c in range(16):
                    assert packed[kh * 3 + kw, r, c] == weight[c, (c % 4 + r) % 4, kh, kw]


SHAPES = [(2, 32, 64, 32, 1), (1, 96, 32, 16, 2), (3, 48, 7, 5, 1), (2, 64, 9, 11, 2), (1, 16, 1, 1, 1),
          (1, 16, 2, 3, 2), (2, 32, 13, 21, 1)]  # sides below, at and past the 8- and 4-pixel blocks


@needs_kernels
@pytest.mark.parametrize("batch,channels,height,width,stride", SHAPES)
@pytest.mark.parametrize("with_add,relu", [(False, False), (False, True), (True, False), (True, True)])
def test_group4_conv3x3_equals_grouped_conv2d(batch, channels, height, width, stride, with_add, relu):
    """float32: conv (padding 1, groups of 4), + bias, + the sum term, ReLU: torch's result within
    float32 rounding, every border and block tail included; a channels_last result."""
    if channels % kernels.vector_lanes():
        pytest.skip("channels not a multiple of this CPU's vector")
    torch.manual_seed(0)
    x = channels_last(torch.randn(batch, channels, height, width))
    weight, bias = torch.randn(channels, 4, 3, 3), torch.randn(channels)
    want = grouped_conv(x, weight, bias, None, stride, False)
    add = channels_last(torch.randn_like(want)) if with_add else None
    want = grouped_conv(x, weight, bias, add, stride, relu)
    got = kernels.group4_conv3x3(x, kernels.pack_group4_weight(weight), bias, add, stride, relu)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(got, want) < 1e-5


@needs_kernels
@pytest.mark.parametrize("stride", [1, 2])
def test_group4_conv3x3_in_bfloat16(stride):
    """bfloat16 maps and weights (as a model's after to_inference_dtype), float32 sums: the float32
    result over the same bfloat16 inputs, rounded once to bfloat16 (at most one bfloat16 step off
    where the sum order tips the rounding); a NaN stays a NaN."""
    torch.manual_seed(0)
    x = channels_last(torch.randn(2, 32, 12, 10)).bfloat16()
    weight, bias = torch.randn(32, 4, 3, 3).bfloat16().float(), torch.randn(32)
    add = channels_last(torch.randn(2, 32, 12 // stride, 10 // stride)).bfloat16()
    want = grouped_conv(x.float(), weight, bias, add.float(), stride, True)
    got = kernels.group4_conv3x3(x, kernels.pack_group4_weight(weight), bias, add, stride, True)
    assert got.dtype == torch.bfloat16
    step = want.abs().clamp_min(1e-30) * 2.0 ** -7
    assert ((got.float() - want).abs() <= step).all()
    assert (got == want.bfloat16()).float().mean() > 0.99
    x[0, 0, 5, 5] = float("nan")
    got = kernels.group4_conv3x3(x, kernels.pack_group4_weight(weight), bias, None, 1, False)
    assert got.float().isnan().sum() == 9 * 4 and not got.float().isinf().any()  # 9 pixels, 4 channels


@needs_kernels
def test_group4_conv3x3_refuses_what_it_does_not_compute():
    weight, bias = kernels.pack_group4_weight(torch.randn(16, 4, 3, 3)), torch.zeros(16)
    with pytest.raises(RuntimeError, match="a channels_last input"):
        kernels.group4_conv3x3(torch.randn(1, 16, 8, 8), weight, bias)
    with pytest.raises(RuntimeError, match="stride 1 or 2, got 3"):
        kernels.group4_conv3x3(channels_last(torch.randn(1, 16, 8, 8)), weight, bias, stride=3)
    with pytest.raises(RuntimeError, match="the sum's term must be a channels_last"):
        kernels.group4_conv3x3(channels_last(torch.randn(1, 16, 8, 8)), weight, bias, add=torch.randn(1, 16, 4, 4))


TRAIN_SHAPES = [(2, 32, 32, 16, True), (3, 96, 16, 8, False), (2, 192, 8, 4, True), (4, 384, 4, 2, False),
                (2, 64, 5, 3, True), (1, 16, 1, 1, False), (2, 48, 13, 21, True)]


@needs_kernels
@pytest.mark.parametrize("batch,channels,height,width,with_bias", TRAIN_SHAPES)
def test_trainable_group4_conv_has_conv2d_output_and_gradients(batch, channels, height, width, with_bias):
    """Stride 1, float32: output and the input, weight and bias gradients of F.conv2d within float32
    rounding (borders, 1x1 maps and block tails included), for weights laid out either way."""
    if channels % kernels.vector_lanes():
        pytest.skip("channels not a multiple of this CPU's vector")
    torch.manual_seed(0)
    x = channels_last(torch.randn(batch, channels, height, width)).requires_grad_()
    weight = torch.randn(channels, 4, 3, 3)
    weight = (channels_last(weight) if with_bias else weight).requires_grad_()
    bias = torch.randn(channels, requires_grad=True) if with_bias else None
    grad = torch.randn(batch, channels, height, width)
    leaves = [t for t in (x, weight, bias) if t is not None]
    got = kernels.group4_conv3x3_trainable(x, weight, bias)
    got_grads = torch.autograd.grad(got, leaves, grad)
    want = F.conv2d(x, weight, bias, 1, 1, 1, channels // 4)
    want_grads = torch.autograd.grad(want, leaves, grad)
    assert got.is_contiguous(memory_format=torch.channels_last) and rel_err(got, want) < 1e-5
    for g, w, leaf in zip(got_grads, want_grads, leaves):
        assert g.shape == w.shape and rel_err(g, w) < 1e-5
        if leaf.dim() == 4:  # the gradient in its tensor's layout
            assert g.is_contiguous(memory_format=torch.channels_last) == \
                leaf.is_contiguous(memory_format=torch.channels_last)


def test_weight_layouts_of_the_gradient_kernels():
    """unpack_group4_weight inverts pack_group4_weight; transpose_group4_weight swaps the input and
    output channels of each group and turns the kernel by 180 degrees, element by element."""
    weight = torch.randn(8, 4, 3, 3)
    assert torch.equal(kernels.unpack_group4_weight(kernels.pack_group4_weight(weight)), weight)
    turned = kernels.transpose_group4_weight(weight)
    for g in range(2):
        for i in range(4):
            for o in range(4):
                assert torch.equal(turned[4 * g + i, o], weight[4 * g + o, i].flip(0, 1))


@needs_kernels
def test_group4_weight_gradient_refuses_what_it_does_not_compute():
    x = channels_last(torch.randn(1, 16, 8, 8))
    grad_of = torch.ops.levit_kernels.group4_conv3x3_weight_grad
    with pytest.raises(RuntimeError, match="a channels_last float32 CPU input"):
        grad_of(torch.randn(1, 16, 8, 8), x)
    with pytest.raises(RuntimeError, match="a channels_last float32 gradient of"):
        grad_of(x, channels_last(torch.randn(1, 16, 4, 4)))
    with pytest.raises(RuntimeError, match="a channels_last float32 CPU input"):
        grad_of(x.bfloat16(), x.bfloat16())


def seeded_step(model, x, labels):
    """The loss and the parameters' gradients of one DBN training step (stochastic depth seeded)."""
    from losses import ReIDLoss
    torch.manual_seed(5)
    model.zero_grad(set_to_none=True)
    logits, embeddings = model(x)
    loss = ReIDLoss()(logits, embeddings, labels)[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def backbone_grads(model, x):
    """The parameters' gradients of a fixed weighted sum of DBN's first branch (stem to branch_1) in
    eval mode. (In train mode BatchNorm's batch statistics over a few pixels amplify rounding: there
    a correctly rounded float64 convolution's gradients are as far from torch's float32 ones as the
    kernels'; and the other branch ends in a max pool, whose gradient follows an argmax that
    rounding may move.)"""
    model.zero_grad(set_to_none=True)
    out = model.branch_1(model.layer2(model.layer1(model.stem(x))))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def norm_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@needs_kernels
def test_training_step_runs_the_stride_1_grouped_convolutions_in_the_kernels(monkeypatch):
    """A DBN-S training step on the CPU sends each stride-1 grouped convolution to the kernels,
    forward and backward, with torch's loss and finite gradients; with gradients on in eval mode,
    the first branch's gradients are torch's within float32 rounding. The stride-2 convolutions, and
    everything under CPU autocast, stay with torch."""
    torch.manual_seed(0)
    model = training_form(with_formula_weights(DBN(12, net="small", pretrained=None)).train())
    convs = [m for m in model.modules() if isinstance(m, Group4Conv2d)]
    stride_1 = [m for m in convs if m.stride == (1, 1)]
    assert len(convs) == 67 and 0 < len(stride_1) < len(convs)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, Group4Conv2d):
            m.native_kernel = False
    calls = []
    trainable = kernels.group4_conv3x3_trainable
    monkeypatch.setattr(kernels, "group4_conv3x3_trainable", lambda *a: calls.append(a) or trainable(*a))
    x, labels = torch.rand(8, 3, 64, 32), torch.arange(4).repeat_interleave(2)
    loss, grads = seeded_step(model, x, labels)
    assert len(calls) == len(stride_1)
    calls.clear()
    want_loss, want_grads = seeded_step(plain, x, labels)
    assert not calls and abs(loss - want_loss) < 1e-5 * abs(want_loss)
    assert grads.keys() == want_grads.keys() and all(g.isfinite().all() for g in grads.values())

    calls.clear()
    grads, want = backbone_grads(model.eval(), x), backbone_grads(plain.eval(), x)
    assert len(calls) == sum(m.stride == (1, 1) for m in model.branch_1.modules() if isinstance(m, Group4Conv2d)) + \
        sum(m.stride == (1, 1) for part in (model.layer1, model.layer2) for m in part.modules()
            if isinstance(m, Group4Conv2d))
    assert grads.keys() == want.keys()
    for name, grad in want.items():
        assert norm_err(grads[name], grad) < 1e-4, name
    model.train()
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seeded_step(model, x, labels)
    assert not calls


@needs_kernels
def test_grouped_convolution_keeps_torch_ops_where_the_kernels_do_not_train():
    """Group4Conv2d runs as nn.Conv2d for NCHW or bfloat16 input, stride 2, and in traced or exported
    graphs (which must run without the library)."""
    conv = Group4Conv2d(32, 32, 3, 1, 1, groups=8, bias=False)
    x = channels_last(torch.randn(1, 32, 8, 8))
    assert kernels.group4_conv_trains(conv, x)
    assert not kernels.group4_conv_trains(conv, x.contiguous())
    assert not kernels.group4_conv_trains(conv, x.bfloat16())
    assert not kernels.group4_conv_trains(Group4Conv2d(32, 32, 3, 2, 1, groups=8), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.group4_conv_trains(conv, x)
    with torch.no_grad():
        traced = torch.jit.trace(conv, x)
    assert "levit_kernels" not in str(traced.inlined_graph)
    assert "levit_kernels" not in str(torch.export.export(conv, (x,)).graph)


@needs_kernels
def test_optimized_model_runs_its_grouped_convolutions_and_attention_in_the_kernels(monkeypatch):
    """Every 3x3 convolution with groups of 4 and every window attention of an optimized DBN-S goes to
    the kernels (eager, no gradient, channels_last), with the same embeddings as oneDNN and torch's
    operators; with gradients on, or in NCHW, none does."""
    torch.manual_seed(0)
    model = inference_form(with_formula_weights(DBN(751, net="small", pretrained=None)))
    convs = [m for m in model.modules() if isinstance(m, InferenceConv) and m.groups > 1]
    assert convs and all(m.group4 for m in convs)
    attentions = [m for m in model.modules() if isinstance(m, LocalEnhanceAttention)]
    calls, attention_calls = [], []
    conv, attention = kernels.group4_conv3x3, kernels.window_attention
    monkeypatch.setattr(kernels, "group4_conv3x3", lambda *a: calls.append(a) or conv(*a))
    monkeypatch.setattr(kernels, "window_attention", lambda *a: attention_calls.append(a) or attention(*a))
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        got = torch.cat(model(x), 1)
    assert len(calls) == len(convs) and len(attention_calls) == len(attentions) == 11
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, InferenceConv):
            m.group4 = False
        if isinstance(m, LocalEnhanceAttention):
            m.native_kernel = False
    calls.clear()
    attention_calls.clear()
    with torch.no_grad():
        want = torch.cat(plain(x), 1)
    assert not calls and not attention_calls and rel_err(got, want) < 1e-5
    torch.cat(model(x), 1)  # gradients on: plain ops
    with torch.no_grad():
        model.to(memory_format=torch.contiguous_format)(x)
    assert not calls and not attention_calls


@needs_kernels
def test_compiled_model_calls_the_kernel_without_graph_breaks():
    """Under torch.compile the kernel is an operator of the graph (its output shape registered):
    one graph for a block, no break, the eager block's output."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = optimize(with_formula_weights(DBN(751, net="small", pretrained=None)).eval().fuse())
    block = model.layer2.layers[1]
    x = channels_last(torch.randn(1, 192, 8, 4))
    with torch.no_grad():
        want = block(x)
        explained = torch._dynamo.explain(block)(x)
        got = torch.compile(block)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    ops = {str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert any("levit_kernels.group4_conv3x3" in op for op in ops)
    assert any("levit_kernels.window_attention" in op for op in ops)
    assert rel_err(got, want) < 1e-5


def python_with_env(code, **env):
    """(exit status, stdout, stderr) of `code` run by this Python in the repository root."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=120)
    return done.returncode, done.stdout, done.stderr


FALLBACK = """
import torch
from network import DBN
from network.fast import inference_form, kernels
model = inference_form(DBN(10, net="small", pretrained=None))
with torch.no_grad():
    out = model(torch.rand(1, 3, 64, 32))
print(kernels.available(), any(getattr(m, "group4", False) for m in model.modules()), len(out))
"""


@pytest.mark.parametrize("cxx,message", [
    ("no-such-compiler", "no C++ compiler: 'no-such-compiler' is not on the PATH (set CXX to one)"),
    ("false", "compiling network/fast/csrc with ")])
def test_without_a_compiler_the_model_runs_in_onednn_and_says_why(tmp_path, cxx, message):
    status, out, err = python_with_env(FALLBACK, CXX=cxx, LEVIT_KERNELS_CACHE=str(tmp_path))
    assert status == 0, err
    assert out.split() == ["False", "False", "5"]
    assert message in err and ("LEViT's grouped convolutions and window attention run in oneDNN and torch's "
                               "operators instead (slower, same results up to rounding)") in err
    assert err.count("native CPU kernels are not available") == 1  # once per process


def test_a_compiler_that_hangs_is_stopped_with_a_message(tmp_path, monkeypatch):
    compiler = tmp_path / "slow-c++"
    compiler.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo slow 1.0; exit 0; fi\nsleep 30\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("LEVIT_KERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "BUILD_TIMEOUT", 0.5)
    with pytest.raises(kernels.KernelBuildError, match=r"compiling network/fast/csrc with .*slow-c\+\+ took over 0.5 s; stopped"):
        kernels.build()
    assert os.listdir(tmp_path / "cache") == []  # no half-written library left


def test_levit_kernels_0_turns_them_off_silently(tmp_path):
    status, out, err = python_with_env(FALLBACK, LEVIT_KERNELS="0", LEVIT_KERNELS_CACHE=str(tmp_path))
    assert status == 0, err
    assert out.split() == ["False", "False", "5"] and "not available" not in err
    assert os.listdir(tmp_path) == []


GATED = "tests/test_kernels.py::test_vector_width_follows_the_cpu_capability"  # a test that needs the kernels


@pytest.mark.parametrize("require", ["1", ""])
def test_levit_require_kernels_turns_the_skip_into_a_failure(tmp_path, require):
    """Without a compiler a test that needs the kernels skips, saying why; with LEVIT_REQUIRE_KERNELS=1
    (as CI sets it) it fails with the same reason instead."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", GATED],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CXX": "no-such-compiler",
                               "LEVIT_KERNELS_CACHE": str(tmp_path), "LEVIT_REQUIRE_KERNELS": require})
    reason = "the native kernels are not available"
    if require:
        assert done.returncode != 0 and "1 error" in done.stdout, done.stdout[-3000:]
        assert f"LEVIT_REQUIRE_KERNELS=1 but {reason}: they could not be built: no C++ compiler: " \
               "'no-such-compiler' is not on the PATH" in done.stdout
    else:
        assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout[-3000:]
        assert f"{reason} here: they could not be built: no C++ compiler" in done.stdout


@needs_kernels
def test_the_library_is_built_once_and_named_by_what_it_depends_on(tmp_path, monkeypatch):
    """The cached library is reused (not rebuilt), and its name changes with the compiler flags'
    CPU capability, so machines of different CPUs sharing a cache do not load each other's."""
    monkeypatch.setenv("LEVIT_KERNELS_CACHE", str(tmp_path))
    path = kernels.build()
    assert os.path.dirname(path) == str(tmp_path) and os.listdir(tmp_path) == [os.path.basename(path)]
    mtime = os.stat(path).st_mtime_ns
    assert kernels.build() == path and os.stat(path).st_mtime_ns == mtime
    capability = torch.backends.cpu.get_cpu_capability()
    other = "AVX2" if capability != "AVX2" else "DEFAULT"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    assert kernels.library_path(kernels.compiler()) != path


# ---------------------------------------------------------------- window attention

ATTENTION_SHAPES = [(2, 32, 64, 32, 1), (2, 96, 32, 16, 2), (1, 192, 16, 8, 2), (2, 32, 13, 10, 2),
                    (1, 96, 5, 3, 1), (1, 64, 9, 17, 4), (1, 128, 8, 8, 1)]  # border windows; 16 to 128 channels a head


def attention_inputs(batch, channels, height, width, heads, seed=0):
    torch.manual_seed(seed)
    attn = InferenceAttention(heads, 8).eval()
    with torch.no_grad():
        attn.logit_scale.uniform_(1.0, 5.0)  # scales up to the clamp at 100
    q, k, v = (channels_last(torch.randn(batch, channels, height, width)) for _ in range(3))
    return attn, q, k, v


@needs_kernels
@pytest.mark.parametrize("batch,channels,height,width,heads", ATTENTION_SHAPES)
def test_window_attention_equals_the_torch_path_and_the_reference(batch, channels, height, width, heads):
    """float32: the kernel's output equals LocalEnhanceAttention's torch path (SDPA, taken with
    gradients on) and the per-window reference within float32 rounding, border windows included."""
    from tests.test_network import reference_attention
    attn, q, k, v = attention_inputs(batch, channels, height, width, heads)
    with torch.no_grad():
        if not kernels.window_attention_applies(q, k, v, heads, 8):
            pytest.skip("channels a head not a multiple of this CPU's vector")
    with torch.no_grad():
        got = attn(q, k, v)
        want = reference_attention(attn, q, k, v)
    torch_path = attn(q, k, v).detach()
    assert got.shape == q.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(got, torch_path) < 1e-5 and rel_err(got, want) < 1e-5


@needs_kernels
@pytest.mark.parametrize("batch,channels,height,width,heads", ATTENTION_SHAPES[1:4])
def test_window_attention_in_bfloat16_is_as_close_to_float32_as_the_torch_path(batch, channels, height, width,
                                                                               heads):
    """bfloat16 maps: within 3e-2 of float32 (the rounding of q, k and v to bfloat16, with logit
    scales up to 100: the torch path is as far) and no further from it than the torch path in
    bfloat16 (plus rounding); a bfloat16 channels_last result."""
    attn, q, k, v = attention_inputs(batch, channels, height, width, heads)
    with torch.no_grad():
        want = attn(q, k, v)
        qb, kb, vb = (t.bfloat16() for t in (q, k, v))
        got = attn(qb, kb, vb)
        attn.native_kernel = False
        torch_path = attn(qb, kb, vb)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(got.float(), want) < 3e-2
    assert rel_err(got.float(), want) < rel_err(torch_path.float(), want) + 5e-3


@needs_kernels
def test_window_attention_applies_only_where_it_computes_the_same():
    attn, q, k, v = attention_inputs(1, 32, 16, 16, 2)
    with torch.no_grad():
        assert kernels.window_attention_applies(q, k, v, 2, 8)
        assert not kernels.window_attention_applies(q, k, v, 2, 7)  # another window
        assert not kernels.window_attention_applies(q.contiguous(), k, v, 2, 8)  # NCHW
        assert not kernels.window_attention_applies(q, k.bfloat16(), v, 2, 8)  # mixed dtypes
        assert not kernels.window_attention_applies(q.double(), k.double(), v.double(), 2, 8)
        assert not kernels.window_attention_applies(q, k, v, 32, 8)  # 1 channel a head
    assert not kernels.window_attention_applies(q, k, v, 2, 8)  # gradients on
    with pytest.raises(RuntimeError, match="window 8, got 4"):
        torch.ops.levit_kernels.window_attention(q, k, v, torch.ones(2), 2, 4)
    with pytest.raises(RuntimeError, match="one shape and dtype"):
        torch.ops.levit_kernels.window_attention(q, k.contiguous(), v, torch.ones(2), 2, 8)


@needs_kernels
def test_traced_attention_keeps_torch_ops():
    """While tracing (TorchScript, ONNX) or exporting the attention stays in torch's operators, so an
    exported graph holds no operator of this library."""
    attn, q, k, v = attention_inputs(1, 32, 16, 16, 2)
    with torch.no_grad():
        traced = torch.jit.trace(attn, (q, k, v))
        assert "levit_kernels" not in str(traced.inlined_graph)
        assert rel_err(traced(q, k, v), attn(q, k, v)) < 1e-5
        exported = torch.export.export(attn, (q, k, v))
    assert "levit_kernels" not in str(exported.graph)


@needs_kernels
def test_vector_width_follows_the_cpu_capability():
    """16 lanes where torch reports AVX512, 8 for AVX2, 4 otherwise; bfloat16 pair products only with
    AVX512-BF16."""
    capability = torch.backends.cpu.get_cpu_capability()
    assert kernels.vector_lanes() == {"AVX512": 16, "AVX2": 8}.get(capability, 4)
    assert kernels.bfloat16_dot() == (capability == "AVX512" and torch.cpu._is_avx512_bf16_supported())


@pytest.mark.slow
@needs_kernels
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_kernels_built_for_narrower_vectors_pass_the_same_tests(capability, tmp_path):
    """A CPU without AVX512 gets 8-lane (AVX2) or 4-lane (SSE) builds of the same source: this file's
    kernel tests, run in a process where torch reports that capability (ATEN_CPU_CAPABILITY), pass
    against torch's operators. Inductor gets a cache folder of its own (the capability is not part
    of its cache key), and with ATEN_CPU_CAPABILITY=default it cannot compile at all (its generated
    code needs at::vec), so the compiled test runs for AVX2 only."""
    skip = ("not narrower_vectors and not without_a_compiler and not levit_kernels_0 and not built_once"
            " and not require_kernels")
    if capability == "default":
        skip += " and not compiled_model"
    cache = tmp_path / "kernels"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py", "-k", skip],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "ATEN_CPU_CAPABILITY": capability, "LEVIT_KERNELS_CACHE": str(cache),
             "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
    assert len(os.listdir(cache)) == 1  # built for this capability
