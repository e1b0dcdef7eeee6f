"""network/: state_dict layout vs the release, golden outputs, padding, fusing, checkpoint loading."""
import hashlib
import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import network.dbn
import network.fast
from network import (DBN, LEViT, RELEASED_FILES, VARIANTS, CheckpointError, PretrainedNotFound, checkpoint_filter_fn,
                     load_reid_weights, read_checkpoint)
from network.fast import CHUNK, BatchChunks, InferenceAttention, InferenceBlock, inference_form
from network.levit import LocalEnhanceAttention, ScaledNormalize

from tests.helpers import make_weights, spec_of, with_formula_weights

PARAMS = {("backbone", "small"): 2_819_306, ("backbone", "large"): 9_650_300,
          ("dbn", "small"): 5_132_290, ("dbn", "large"): 16_636_564}


# ---------------------------------------------------------------- helpers

def weights_digest(state_dict):
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def read_tsv(path):
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [(k, [] if s == "scalar" else [int(n) for n in s.split("x")], d) for k, s, d in rows]


def reference_attention(self, q, k, v):
    """Plain window attention: explicit softmax over each window's real tokens only (border
    windows are smaller), one Python loop iteration per window."""
    B, C, H, W = q.shape
    ws, h = self.window, self.heads
    scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # (heads, 1, 1)
    out = torch.zeros(B, C, H, W, dtype=q.dtype)
    for i in range(0, H, ws):
        for j in range(0, W, ws):
            def tokens(t):  # (B, heads, n, d)
                win = t[:, :, i:i + ws, j:j + ws]
                return win.reshape(B, h, C // h, -1).transpose(-1, -2)
            qw, kw, vw = tokens(q), tokens(k), tokens(v)
            logits = F.normalize(qw, dim=-1) @ F.normalize(kw, dim=-1).transpose(-1, -2) * scale
            o = torch.softmax(logits, dim=-1) @ vw
            hh, ww = min(ws, H - i), min(ws, W - j)
            out[:, :, i:i + hh, j:j + ww] = o.transpose(-1, -2).reshape(B, C, hh, ww)
    return out


@pytest.fixture(scope="module")
def golden(data_dir):
    return torch.load(os.path.join(data_dir, "golden_small.pt"), weights_only=True)


@pytest.fixture(scope="module")
def small_backbone_sd():
    return make_weights(spec_of(LEViT(**VARIANTS["small"])), seed=11)


# ---------------------------------------------------------------- layout and sizes

@pytest.mark.parametrize("variant", ["small", "large"])
@pytest.mark.parametrize("kind", ["backbone", "dbn"])
def test_state_dict_matches_release(kind, variant, data_dir):
    model = LEViT(**VARIANTS[variant]) if kind == "backbone" else DBN(751, net=variant, pretrained=None)
    expected = read_tsv(os.path.join(data_dir, f"{kind}_{variant}_state_dict.tsv"))
    assert spec_of(model) == expected
    assert sum(p.numel() for p in model.parameters()) == PARAMS[kind, variant]


@pytest.mark.parametrize("net, default", [("small", 0.05), ("large", 0.10)])
def test_dbn_drop_path_defaults_to_the_variant_and_can_be_overridden(net, default):
    with torch.device("meta"):
        models = {None: DBN(10, net=net, pretrained=None), 0.15: DBN(10, net=net, pretrained=None, drop_path=0.15),
                  0.0: DBN(10, net=net, pretrained=None, drop_path=0.0)}
    for given, model in models.items():
        rate = default if given is None else given
        assert model.drop_path == rate
        # stochastic depth rises linearly over the 15 blocks: 0 in the stem's first, `rate` in the last
        assert model.layer1.layers[0].drop_path.p == 0.0
        assert model.branch_1.layers[-1].drop_path.p == pytest.approx(rate)
        assert model.branch_2.layers[-1].drop_path.p == pytest.approx(rate)
        assert model.layer2.layers[0].drop_path.p == pytest.approx(rate * 4 / 14)
    with pytest.raises(ValueError, match=r"drop_path must be in \[0, 1\) \(0 = off\), got 1.5"):
        DBN(10, pretrained=None, drop_path=1.5)


def test_dbn_outputs_and_frozen_biases():
    model = DBN(10, pretrained=None)
    assert model.feature_dim == 5 * 384
    assert [bn.bias.requires_grad for bn in model.bn_list] == [True, True, False, False, False]
    # branch_1 runs stage3 at stride 1, branch_2 starts as an exact copy of it
    assert model.branch_1.layers[0].mlp.local_enhance[0].stride == (1, 1)
    assert model.branch_1.layers[0].skip[0].stride == (1, 1)
    for a, b in zip(model.branch_1.state_dict().values(), model.branch_2.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand(2, 3, 128, 64)
    with torch.no_grad():
        feats = model.eval()(x)
        logits, emb = model.train()(x)
    assert [tuple(f.shape) for f in feats] == [(2, 384)] * 5
    assert [tuple(z.shape) for z in logits] == [(2, 10)] * 5 and [tuple(e.shape) for e in emb] == [(2, 384)] * 2


def test_dbn_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown net 'medium'.*\['large', 'small'\]"):
        DBN(net="medium", pretrained=None)
    with pytest.raises(ValueError, match=r"erasing .* \[0.02, 1\], got 0.01"):
        DBN(erasing=0.01, pretrained=None)


def test_random_erasing_zeroes_one_rectangle_in_about_half_the_images():
    model = DBN(10, erasing=0.45, pretrained=None)
    x = torch.rand(200, 3, 64, 32) + 0.1  # no zeros before erasing (rand may give exactly 0: x >= 0.1)
    before = x.clone()
    torch.manual_seed(0)
    erased = model.random_erase(x)
    torch.manual_seed(0)
    assert torch.equal(erased, model.random_erase(x))  # global RNG: reproducible
    assert torch.equal(x, before)  # the input is left alone
    zero = (erased == 0).all(1)  # (N, H, W) erased pixels, same in every channel
    hit = zero.flatten(1).any(1)
    assert 60 < hit.sum() < 140
    for z in zero[hit]:
        rows, cols = z.any(1).nonzero(), z.any(0).nonzero()
        box = z[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and z.sum() == box.numel()  # exactly one filled rectangle
        assert 0.01 <= box.numel() / z.numel() <= 0.5
    assert torch.equal(erased[~hit], x[~hit])


def spec_erasing(x, s):
    """The spec's random erasing written out line by line, drawing from torch's global generator in
    the spec's order: u; if u <= 0.5: U(0.02, s), U(0.3, 1/0.3), top, left."""
    out = x.clone()
    _, _, H, W = x.shape
    for i in range(x.shape[0]):
        u = torch.rand(()).item()
        if u <= 0.5:
            A = (0.02 + (s - 0.02) * torch.rand(()).item()) * H * W
            a = 0.3 + (1 / 0.3 - 0.3) * torch.rand(()).item()
            w = min(round(math.sqrt(A * a)), W)
            h = min(round(A / w), H)
            top = int(torch.randint(0, H - h + 1, ()))
            left = int(torch.randint(0, W - w + 1, ()))
            out[i, :, top:top + h, left:left + w] = 0
    return out


def spec_batch_drop(x, d):
    """The spec's BatchDrop written out: centre y in 0..H then x in 0..W, L = round(sqrt(round(d*H*W)))."""
    out = x.clone()
    _, _, H, W = x.shape
    L = round(math.sqrt(round(d * H * W)))
    for i in range(x.shape[0]):
        cy = int(torch.randint(0, H + 1, ()))
        cx = int(torch.randint(0, W + 1, ()))
        out[i, :, max(0, cy - L // 2):min(H, cy + L // 2), max(0, cx - L // 2):min(W, cx + L // 2)] = 0
    return out


@pytest.mark.parametrize("size,s", [((256, 128), 0.45), ((64, 32), 0.2), ((33, 17), 1.0), ((16, 16), 0.02)])
def test_random_erasing_is_the_spec_draw(size, s):
    model = DBN(10, erasing=s, pretrained=None)
    x = torch.rand(40, 3, *size) + 0.1
    for seed in range(3):
        torch.manual_seed(seed)
        ours = model.random_erase(x)
        after = torch.rand(())  # the generator is left where the spec's draws leave it
        torch.manual_seed(seed)
        assert torch.equal(ours, spec_erasing(x, s))
        assert torch.equal(after, torch.rand(()))


def test_random_erasing_draw_distribution():
    """At 256x128 and s = 0.45 half the images are erased and about a third of the rectangles span
    the full width (0.349 for the uniform aspect; torchvision's log-uniform aspect with re-draws
    gives about 0.19, and never the full width)."""
    torch.manual_seed(0)
    boxes = network.dbn.erasing_boxes(8000, 256, 128, 0.45)
    erased = [b for b in boxes if b != (0, 0, 0, 0)]
    assert 0.48 < len(erased) / len(boxes) < 0.52
    full_width = sum(right - left == 128 for _, _, left, right in erased) / len(erased)
    assert 0.32 < full_width < 0.38, full_width
    areas = np.array([(bottom - top) * (right - left) for top, bottom, left, right in erased]) / (256 * 128)
    assert areas.min() >= 0.015 and areas.max() <= 0.46
    assert all(0 <= top < bottom <= 256 and 0 <= left < right <= 128 for top, bottom, left, right in erased)


@pytest.mark.parametrize("size,d", [((256, 128), 0.3), ((64, 32), 0.1), ((33, 17), 0.5)])
def test_batch_drop_is_the_spec_draw(size, d):
    model = DBN(10, drop=d, erasing=0.45, pretrained=None)
    x = torch.rand(30, 3, *size) + 0.1
    for seed in range(3):
        torch.manual_seed(seed)
        ours = model.batch_drop(x)
        torch.manual_seed(seed)
        assert torch.equal(ours, spec_batch_drop(x, d))
    zero = (ours == 0).all(1).flatten(1)
    assert zero.any(1).float().mean() > 0.8  # every image (but those whose square fell off its corner)
    side = round(math.sqrt(round(d * size[0] * size[1]))) // 2 * 2
    assert zero.sum(1).max() == side * side  # a centre well inside: the whole square


def test_training_forward_applies_batch_drop_instead_of_erasing_and_no_dropout():
    """drop > 0: the training forward is the plain model on the BatchDropped batch (no erasing, no
    dropout before the classifiers); eval mode leaves the input alone."""
    torch.manual_seed(0)
    model = DBN(10, drop=0.25, erasing=0.45, pretrained=None)
    plain = DBN(10, drop=0.0, erasing=0.0, pretrained=None)
    plain.load_state_dict(model.state_dict())
    x = torch.rand(4, 3, 64, 32)
    torch.manual_seed(1)
    logits, emb = model.train()(x)
    torch.manual_seed(1)
    dropped = spec_batch_drop(x, 0.25)  # the same draws, then stochastic depth draws the same too
    plain_logits, plain_emb = plain.train()(dropped)
    for a, b in zip(logits + emb, plain_logits + plain_emb):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.eval(), plain.eval()
    with torch.no_grad():
        for a, b in zip(model(x), plain(x)):
            assert torch.equal(a, b)


def test_training_forward_applies_erasing():
    torch.manual_seed(0)
    model = DBN(10, erasing=0.45, pretrained=None)
    plain = DBN(10, erasing=0.0, pretrained=None)
    plain.load_state_dict(model.state_dict())
    x = torch.rand(6, 3, 64, 32)
    torch.manual_seed(2)
    logits, _ = model.train()(x)
    torch.manual_seed(2)
    plain_logits, _ = plain.train()(spec_erasing(x, 0.45))
    for a, b in zip(logits, plain_logits):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- equivalence with the release

def test_golden_small(golden):
    case = golden["cases"][0]
    backbone_weights = make_weights(golden["backbone_spec"], golden["backbone_seed"])
    assert weights_digest(backbone_weights) == golden["backbone_weights_digest"]
    backbone = LEViT(**VARIANTS["small"])
    backbone.load_state_dict({**backbone_weights, **golden["backbone_bn_buffers"]})
    dbn_weights = make_weights(golden["dbn_spec"], golden["dbn_seed"])
    assert weights_digest(dbn_weights) == golden["dbn_weights_digest"]
    dbn = DBN(751, net="small", pretrained=None)
    dbn.load_state_dict({**dbn_weights, **golden["dbn_bn_buffers"]})
    with torch.no_grad():
        features = backbone.eval().forward_features(case["x"])
        logits = backbone(case["x"])
        feats = dbn.eval()(case["x"])
        train_logits, train_feats = dbn.train()(torch.rand(8, 3, 64, 32))  # shapes do not depend on H, W
    assert rel_err(features, case["backbone_features"]) < 1e-4
    assert rel_err(logits, case["backbone_logits"]) < 1e-4
    assert len(feats) == len(case["dbn_feats"]) == 5
    for ours, theirs in zip(feats, case["dbn_feats"]):
        assert rel_err(ours, theirs) < 1e-4
    assert [list(t.shape) for t in train_logits] == golden["train_shapes"]["logits"]
    assert [list(t.shape) for t in train_feats] == golden["train_shapes"]["feats"]


@pytest.mark.parametrize("model_kind,variant,size", [
    ("backbone", "large", (256, 128)), ("dbn", "small", (250, 120)), ("dbn", "large", (90, 70))])
def test_sdpa_path_matches_plain_attention(model_kind, variant, size, monkeypatch):
    """The optimised path (SDPA, folded scale, padding + key mask, channels_last, fused BN)
    against explicit softmax attention over each window's real tokens, NCHW, BN not folded."""
    if model_kind == "backbone":
        model = with_formula_weights(LEViT(**VARIANTS[variant]))
    else:
        model = with_formula_weights(DBN(751, net=variant, pretrained=None))
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        with monkeypatch.context() as m:
            m.setattr(LocalEnhanceAttention, "forward", reference_attention)
            plain = model.to(memory_format=torch.contiguous_format)(x)
        fast = model.to(memory_format=torch.channels_last)(x)
        fused = model.fuse()(x)
    if model_kind == "dbn":
        plain, fast, fused = torch.cat(plain, 1), torch.cat(fast, 1), torch.cat(fused, 1)
    assert rel_err(fast, plain) < 1e-4
    assert rel_err(fused, plain) < 1e-4


def test_no_padding_code_runs_when_sizes_fit(monkeypatch):
    model = with_formula_weights(LEViT(**VARIANTS["small"]))
    x = torch.rand(1, 3, 256, 128)
    with torch.no_grad():
        expected = model(x)

        def fail(*args, **kwargs):
            raise AssertionError("padding code ran for a size that fits the window")
        monkeypatch.setattr(LocalEnhanceAttention, "key_mask", fail)
        monkeypatch.setattr(F, "pad", fail)
        assert torch.equal(model(x), expected)


def test_padded_attention_equals_unpadded_where_windows_are_whole():
    """Windows are independent: on a 13x20 map the whole top-left 8x16 windows give
    bit-for-bit what the same windows give on their own (no padding there)."""
    torch.manual_seed(0)
    attn = LocalEnhanceAttention(heads=2, window=8)
    q, k, v = torch.randn(3, 2, 16, 13, 20).unbind(0)
    with torch.no_grad():
        padded = attn(q, k, v)
        whole = attn(q[..., :8, :16], k[..., :8, :16], v[..., :8, :16])
        plain = reference_attention(attn, q, k, v)
    assert padded.shape == (2, 16, 13, 20)
    assert torch.equal(padded[..., :8, :16], whole)
    assert rel_err(padded, plain) < 1e-5


def test_scaled_normalize_gradients():
    """The hand-written backward against autograd through F.normalize (float64), with a zero
    vector among the rows (|x| clamped to eps) and with and without the per-head scale."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    x[1, 0, 2] = 0.0
    scale = torch.rand(2, 1, 1, dtype=torch.float64) + 0.5
    grad = torch.randn_like(x)
    for use_scale in (True, False):
        xa, sa = x.clone().requires_grad_(True), scale.clone().requires_grad_(True)
        xb, sb = x.clone().requires_grad_(True), scale.clone().requires_grad_(True)
        ours = ScaledNormalize.apply(xa, sa if use_scale else None)
        plain = F.normalize(xb, dim=-1) * (sb if use_scale else 1.0)
        assert torch.allclose(ours, plain, rtol=1e-12, atol=1e-15)
        ours.backward(grad)
        plain.backward(grad)
        assert torch.allclose(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)
        if use_scale:
            assert torch.allclose(sa.grad, sb.grad, rtol=1e-10)
    xs = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    ss = (torch.rand(3, 1, 1, dtype=torch.float64) + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(ScaledNormalize.apply, (xs, ss))


@pytest.mark.parametrize("size,heads", [((16, 24), 2), ((13, 20), 1)])
def test_attention_gradients_match_plain_attention(size, heads):
    """Training goes through the same maths: gradients of q, k, v and logit_scale of the fast
    path (SDPA, hand-written normalisation backward, padding + key mask when the size needs it)
    equal those of explicit attention over each window's real tokens (float64)."""
    torch.manual_seed(0)
    attn = LocalEnhanceAttention(heads=heads, window=8).double()
    with torch.no_grad():
        attn.logit_scale.add_(torch.randn_like(attn.logit_scale))
    inputs = torch.randn(3, 2, 8, *size, dtype=torch.float64).unbind(0)
    grad = torch.randn(2, 8, *size, dtype=torch.float64)
    results = []
    for fn in (attn.forward, lambda q, k, v: reference_attention(attn, q, k, v)):
        attn.zero_grad()
        q, k, v = (t.clone().requires_grad_(True) for t in inputs)
        out = fn(q, k, v)
        out.backward(grad)
        results.append([out, q.grad, k.grad, v.grad, attn.logit_scale.grad.clone()])
    for fast, plain in zip(*results):
        assert rel_err(fast, plain) < 1e-10


@pytest.mark.parametrize("size", [(97, 61), (33, 17)])
def test_any_input_size(size):
    model = DBN(10, pretrained=None).eval()
    with torch.no_grad():
        feats = model(torch.rand(1, 3, *size))
    assert all(f.shape == (1, 384) and torch.isfinite(f).all() for f in feats)


def test_fuse_keeps_outputs(golden):
    """Float64: folding BN into the conv changes nothing but rounding. Float32: the fused and
    channels_last model still meets the release's outputs."""
    model = with_formula_weights(LEViT(**VARIANTS["small"])).double()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)  # float64 convs are slow: a small input
    with torch.no_grad():
        before = model(x)
        after = model.fuse()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert rel_err(after, before) < 1e-12
    with pytest.raises(RuntimeError, match="fused for inference .* cannot train"):
        model.train()
    case = golden["cases"][0]
    backbone = LEViT(**VARIANTS["small"])
    backbone.load_state_dict({**make_weights(golden["backbone_spec"], golden["backbone_seed"]),
                              **golden["backbone_bn_buffers"]})
    with torch.no_grad():
        assert rel_err(backbone.fuse()(case["x"]), case["backbone_logits"]) < 1e-4



@pytest.mark.parametrize("net,size,batch,layout", [
    ("small", (256, 128), 1, "channels_last"), ("small", (250, 120), 2, "channels_last"),
    ("small", (64, 32), 17, "channels_last"), ("small", (96, 48), 2, "nchw"), ("large", (90, 70), 1, "channels_last")])
def test_optimized_inference_form_matches_unfused(net, size, batch, layout):
    """network.fast.inference_form (BatchNorm folded, ReLUs and residual sums fused into oneDNN
    convolutions, 1x1 convolutions as matrix products): the same embeddings as the unfused eager model within 1e-4,
    with sides that need attention padding, from batch 16 on (float32 sums done apart), in NCHW,
    and with gradients enabled (the plain-op path)."""
    torch.manual_seed(0)
    model = with_formula_weights(DBN(751, net=net, pretrained=None))
    x = torch.rand(batch, 3, *size)
    with torch.no_grad():
        want = torch.cat(model(x), 1)
    optimized = inference_form(model)
    if layout == "nchw":
        optimized.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        got = torch.cat(optimized(x), 1)
    assert rel_err(got, want) < 1e-4
    assert rel_err(torch.cat(optimized(x), 1).detach(), want) < 1e-4  # grad enabled: plain ops
    assert any(isinstance(m, InferenceBlock) for m in optimized.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in optimized.modules())
    with pytest.raises(RuntimeError, match="optimize: fuse\\(\\) this DBN first"):
        network.fast.optimize(DBN(3, pretrained=None).eval())



def test_optimized_model_runs_large_cpu_batches_in_chunks(monkeypatch):
    """The inference form on the CPU runs a batch above network.fast.CHUNK images in chunks of it
    (the last one shorter), with the embeddings of one batch within float32 rounding; not while
    tracing, compiling or exporting (their graphs stay valid for any batch), and never an unoptimized
    model."""
    torch.manual_seed(0)
    model = with_formula_weights(DBN(751, net="small", pretrained=None)).fuse()
    optimized = inference_form(model)
    assert isinstance(optimized, BatchChunks)
    sizes = []
    forward = DBN.forward
    monkeypatch.setattr(DBN, "forward", lambda self, x: sizes.append(x.shape[0]) or forward(self, x))
    x = torch.rand(2 * CHUNK + 3, 3, 64, 32)
    with torch.no_grad():
        got = optimized(x)
        assert sizes == [CHUNK, CHUNK, 3]
        sizes.clear()
        want = optimized.model(x)  # one batch
        assert len(got) == len(want) == 5
        assert all(g.shape == w.shape and rel_err(g, w) < 1e-5 for g, w in zip(got, want))
        model(x)
        monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
        optimized(x[:CHUNK + 1])
    assert sizes == [x.shape[0], x.shape[0], CHUNK + 1]


def test_inference_form_is_a_new_module_and_leaves_the_model_alone():
    """inference_form returns a new module (no submodule or tensor shared with the model) and leaves
    the given model's state_dict keys and values, mode and BatchNorms as they were; optimize and
    to_inference_dtype do the same."""
    torch.manual_seed(0)
    model = with_formula_weights(DBN(751, net="small", pretrained=None)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for fast in (inference_form(model), inference_form(model, torch.bfloat16),
                 inference_form(model, optimize=False), network.fast.to_inference_dtype(model, torch.bfloat16)):
        assert fast is not model
        own = {id(m) for m in model.modules()}
        assert not any(id(m) in own for m in fast.modules())
        tensors = {t.data_ptr() for t in model.state_dict().values()}
        assert not any(t.data_ptr() in tensors for t in fast.state_dict().values())
    fused = model.fuse()
    before_fused = {k: v.clone() for k, v in fused.state_dict().items()}
    assert network.fast.optimize(fused) is not fused
    after = fused.state_dict()
    assert list(after) == list(before_fused) and all(torch.equal(after[k], v) for k, v in before_fused.items())
    fresh = with_formula_weights(DBN(751, net="small", pretrained=None)).eval()
    inference_form(fresh)
    now = fresh.state_dict()
    assert list(now) == list(before) and all(torch.equal(now[k], v) for k, v in before.items())
    assert not fresh.fused and any(isinstance(m, torch.nn.BatchNorm2d) for m in fresh.modules())


@pytest.mark.parametrize("module", ["network.levit", "network.dbn", "network"])
def test_the_model_imports_nothing_of_its_speed_forms(module, repo_root):
    """network/levit.py, network/dbn.py and the network package import nothing of network.fast (its
    source names none, and importing it loads none), and nothing of torch's private APIs."""
    import ast
    import subprocess
    import sys
    if module != "network":
        with open(os.path.join(repo_root, *module.split(".")) + ".py") as f:
            tree = ast.parse(f.read())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if "fast" in m.split(".") or "kernels" in m]
        source = ast.unparse(tree)
        for private in ("mkldnn", "torch._C", "torch.cpu._", "torch._dynamo", "torch.ops."):
            assert private not in source, private
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('network.fast')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("size", [(16, 16), (13, 10)])
def test_float32_inference_attention_equals_sdpa_and_the_reference(size):
    """The inference form's float32 attention on the CPU without a gradient takes inference_attention (explicit
    logits, in-place softmax): the SDPA path's output (taken with gradients on) and the per-window
    reference within float32 rounding, padded windows included."""
    torch.manual_seed(0)
    attn = InferenceAttention(heads=2, window=8).eval()
    q, k, v = (torch.randn(2, 32, *size) for _ in range(3))
    with torch.no_grad():
        got = attn(q, k, v)
        want = reference_attention(attn, q, k, v)
    sdpa = attn(q, k, v).detach()
    assert rel_err(got, sdpa) < 1e-5 and rel_err(got, want) < 1e-5


@pytest.mark.parametrize("size", [(16, 16), (13, 10)])
def test_bfloat16_inference_attention_is_as_close_to_float32_as_sdpa(size):
    """The inference form's attention on bfloat16 q, k, v (CPU, no gradient) takes inference_attention (float32
    logits and softmax): within 2e-2 of the float32 attention, and no further from it than SDPA's own
    bfloat16 kernel (plus rounding), padded windows included."""
    torch.manual_seed(0)
    attn = InferenceAttention(heads=2, window=8).eval()
    q, k, v = (torch.randn(2, 32, *size) for _ in range(3))
    with torch.no_grad():
        want = attn(q, k, v)
        got = attn(*(t.bfloat16() for t in (q, k, v)))
        with torch.enable_grad():  # the SDPA path
            sdpa = attn(*(t.bfloat16() for t in (q, k, v))).detach()
    assert got.dtype == torch.bfloat16
    assert rel_err(got.float(), want) < 2e-2
    assert rel_err(got.float(), want) < rel_err(sdpa.float(), want) + 5e-3


# ---------------------------------------------------------------- checkpoints

def save_forms(sd, tmp_path):
    forms = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
             "module": {"module." + k: v for k, v in sd.items()},
             "compiled_ddp": {"state_dict": {"module._orig_mod." + k: v for k, v in sd.items()}}}
    paths = {}
    for name, obj in forms.items():
        paths[name] = tmp_path / f"{name}.pth"
        torch.save(obj, paths[name])
    return paths


def test_backbone_file_forms_load_into_dbn(small_backbone_sd, tmp_path):
    for name, path in save_forms(small_backbone_sd, tmp_path).items():
        model = DBN(10, net="small", pretrained=str(path))
        sd = model.state_dict()
        for key, value in small_backbone_sd.items():
            top, _, rest = key.partition(".")
            targets = {"stem": ["stem"], "stage1": ["layer1"], "stage2": ["layer2"],
                       "stage3": ["branch_1", "branch_2"], "head": []}[top]
            for target in targets:
                assert torch.equal(sd[f"{target}.{rest}"], value), (name, key)


def test_filter_fn_is_pure_and_keeps_the_reid_head(small_backbone_sd):
    model = DBN(10, net="small", pretrained=None)
    given = {"module." + k: v for k, v in small_backbone_sd.items()}
    keys_before = list(given)
    out = checkpoint_filter_fn(given, model)
    assert list(given) == keys_before
    assert set(out) == set(model.state_dict())
    assert torch.equal(out["class_list.0.weight"], model.class_list[0].weight)  # the model's own head
    assert torch.equal(out["branch_2.layers.1.mlp.proj_in.0.weight"],
                       small_backbone_sd["stage3.layers.1.mlp.proj_in.0.weight"])


def test_auto_pretrained_raises_with_the_facts_then_loads(small_backbone_sd, tmp_path, monkeypatch):
    """A missing released backbone is an exception carrying the path, the variant and where the file
    comes from (the caller decides: train.py refuses, exit 2), every time; once the file is there it loads."""
    monkeypatch.setattr(network.dbn, "NETWORK_DIR", str(tmp_path))
    for _ in range(2):  # no state: the second time raises too
        with pytest.raises(PretrainedNotFound, match=r"no pretrained LEViT-small backbone at .*" + RELEASED_FILES["small"]
                           + r".*it comes from the network/ folder of the release, the public LEViT ReID "
                             r"repository\).*pretrained=None for random weights") as err:
            DBN(10, pretrained="auto")
        assert err.value.path == str(tmp_path / RELEASED_FILES["small"]) and err.value.variant == "small"
        assert isinstance(err.value, CheckpointError) and "--" not in str(err.value)
    torch.save({"state_dict": small_backbone_sd}, tmp_path / RELEASED_FILES["small"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = DBN(10, pretrained="auto")
    assert torch.equal(model.layer2.layers[3].q[0].weight, small_backbone_sd["stage2.layers.3.q.0.weight"])


def test_missing_checkpoint_names_path_and_where_files_go(tmp_path):
    path = tmp_path / "nowhere" / "levit.pth"
    with pytest.raises(CheckpointError) as err:
        DBN(10, pretrained=str(path))
    msg = str(err.value)
    assert str(path) in msg and f"network/{RELEASED_FILES['small']}" in msg
    assert f"network/{RELEASED_FILES['large']}" in msg
    assert "they come from the network/ folder of the release, the public LEViT ReID repository" in msg


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unsafe_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"stem.0.conv.weight": torch.zeros(1)}, "extra": RunsCode(marker)}, path)
    for load in (lambda: DBN(10, pretrained=str(path)), lambda: load_reid_weights(DBN(10, pretrained=None), path)):
        with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pth.*would run code.*posix.system.*"
                                                  r"nothing in it was executed"):
            load()
    assert not marker.exists()


def test_unreadable_and_non_state_dict_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"cannot read .*junk.pth as a torch checkpoint: it is corrupt"):
        DBN(10, pretrained=str(junk))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cannot read .*empty.pth as a torch checkpoint"):
        DBN(10, pretrained=str(empty))
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match=r"not a state_dict of tensors"):
        DBN(10, pretrained=str(listed))
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match=r"not a LEViT backbone or DBN ReID state_dict"):
        DBN(10, pretrained=str(other))


@pytest.mark.parametrize("content", [b"KKK", b"hello world\n", bytes(range(256)) * 4],
                         ids=["index-error", "key-error", "binary"])
def test_any_file_torch_cannot_read_is_the_same_refusal(tmp_path, content):
    """Text and random bytes make the unpickler raise IndexError, KeyError, UnicodeDecodeError...:
    every one becomes the CheckpointError of an unreadable file."""
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot read .*notes.pth as a torch checkpoint: it is corrupt"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"cannot read .*notes.pth as a torch checkpoint"):
        DBN(10, pretrained=str(path))


def test_wrong_variant_lists_mismatches_and_names_the_variant(tmp_path):
    path = tmp_path / "large.pth"
    torch.save(LEViT(**VARIANTS["large"]).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        DBN(10, net="small", pretrained=str(path))
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert "layer1.layers.0.attns.logit_scale: file (2, 1, 1) vs model (1, 1, 1)" in msg
    assert "LEViT-large (stem 16, embed_dim 192, mlp_ratio 1" in msg and "net='large'" in msg
    assert "the model is a DBN ReID model like LEViT-small" in msg


def test_large_checkpoint_with_mlp_ratio_2_builds_that(tmp_path, capsys):
    cfg = dict(VARIANTS["large"], mlp_ratio=2.0)
    sd = make_weights(spec_of(LEViT(**cfg)), seed=5)
    path = tmp_path / "large_ratio2.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.warns(UserWarning, match=r"mlp_ratio 2 \(LEViT-large default 1\); building that architecture"):
        model = DBN(10, net="large", pretrained=str(path))
    assert capsys.readouterr().out == ""  # the library does not print
    assert model.mlp_ratio == 2.0
    assert torch.equal(model.branch_2.layers[0].mlp.proj_in[0].weight, sd["stage3.layers.0.mlp.proj_in.0.weight"])


def test_load_reid_weights_forms_and_other_class_counts(tmp_path, capsys):
    trained = with_formula_weights(DBN(751, net="small", pretrained=None), seed=9)
    sd = trained.state_dict()
    for name, path in save_forms(sd, tmp_path).items():
        model = DBN(20, net="small", pretrained=None)
        own_classifier = model.class_list[0].weight.clone()
        with pytest.warns(UserWarning, match="trained on 751 classes, the model has 20"):
            load_reid_weights(model, path)
        loaded = model.state_dict()
        for key, value in sd.items():
            if not key.startswith("class_list."):
                assert torch.equal(loaded[key], value), (name, key)
        assert torch.equal(model.class_list[0].weight, own_classifier)
        assert capsys.readouterr().out == ""  # said as a warning, not printed
    same = DBN(751, net="small", pretrained=None)
    load_reid_weights(same, {"model": sd})
    assert torch.equal(same.class_list[4].weight, sd["class_list.4.weight"])


def test_load_reid_weights_errors(tmp_path, small_backbone_sd):
    small = tmp_path / "small_reid.pth"
    torch.save(DBN(751, net="small", pretrained=None).state_dict(), small)
    with pytest.raises(CheckpointError, match=r"(?s)small_reid.pth does not fit.*like LEViT-small.*net='small'"):
        load_reid_weights(DBN(751, net="large", pretrained=None), small)
    backbone = tmp_path / "backbone.pth"
    torch.save(small_backbone_sd, backbone)
    with pytest.raises(CheckpointError, match=r"LEViT backbone .* not a trained ReID model"):
        load_reid_weights(DBN(751, net="small", pretrained=None), backbone)
    sd = DBN(751, net="small", pretrained=None).state_dict()
    del sd["bn_list.3.running_var"]
    with pytest.raises(CheckpointError, match=r"bn_list.3.running_var: missing from file"):
        load_reid_weights(DBN(751, net="small", pretrained=None), sd)
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*absent.pth"):
        load_reid_weights(DBN(751, net="small", pretrained=None), tmp_path / "absent.pth")


# ---------------------------------------------------------------- mixed precision

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_scaled_normalize_under_autocast(dtype):
    """Under autocast q and k arrive in float16/bfloat16 and the scale is a float32 parameter: the
    output keeps q's dtype (SDPA needs one dtype), and the gradients equal float32 autograd through
    F.normalize on the same rounded inputs, within the low dtype's rounding."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, 64, 48).to(dtype)
    scale = (torch.rand(2, 1, 1) + 9.5).requires_grad_(True)
    grad = torch.randn(4, 2, 64, 48).to(dtype)
    eps = torch.finfo(dtype).eps
    with torch.autocast("cpu", dtype=dtype):
        xa = x.clone().requires_grad_(True)
        out = ScaledNormalize.apply(xa, scale)
        unscaled = ScaledNormalize.apply(x.clone(), None)
    assert out.dtype == dtype and unscaled.dtype == dtype
    out.backward(grad)
    assert xa.grad.dtype == dtype and scale.grad.dtype == torch.float32
    xb, sb = x.float().requires_grad_(True), scale.detach().clone().requires_grad_(True)
    plain = F.normalize(xb, dim=-1) * sb
    plain.backward(grad.float())
    assert rel_err(out.float(), plain) < 2 * eps
    assert rel_err(unscaled.float(), F.normalize(x.float(), dim=-1)) < 2 * eps
    assert rel_err(xa.grad.float(), xb.grad) < 4 * eps
    assert rel_err(scale.grad, sb.grad) < 1e-5


def training_step(model, x, labels, dtype=None):
    """Loss and the flattened gradient of one training step, float32 or under CPU autocast."""
    from losses import ReIDLoss
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same stochastic depth draws
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits, embeddings = model(x)
    loss, _ = ReIDLoss()(logits, embeddings, labels)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    return loss.detach(), grads


# measured on this model and batch: gradient cosine to float32 about 0.98 (float16) and 0.84
# (bfloat16, 8 bits of mantissa; the conv outputs lose precision before BatchNorm subtracts the mean)
MIN_GRAD_COSINE = {torch.float16: 0.95, torch.bfloat16: 0.7}


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_dbn_training_step_under_cpu_autocast(dtype):
    """CPU autocast stands in for CUDA AMP: forward and backward run (the attention's custom
    backward crashed on mixed dtypes), every gradient is float32 and finite, and loss and
    gradient agree with the float32 step within the dtype's precision."""
    torch.manual_seed(0)
    model = DBN(4, net="small", pretrained=None).train()
    x = torch.rand(8, 3, 64, 32)
    labels = torch.arange(4).repeat_interleave(2)
    loss32, grads32 = training_step(model, x, labels)
    loss, grads = training_step(model, x, labels, dtype)
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert abs(loss.item() - loss32.item()) < 0.01 * loss32.item()
    flat, flat32 = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in grads32])
    assert F.cosine_similarity(flat, flat32, dim=0) > MIN_GRAD_COSINE[dtype]
    # the classifiers' gradients (the last layer; measured 0.02-0.04 and 0.17-0.27 in norm)
    for g, g32 in zip(grads[-len(model.class_list):], grads32[-len(model.class_list):]):
        assert ((g - g32).norm() / g32.norm()).item() < (0.1 if dtype == torch.float16 else 0.4)
