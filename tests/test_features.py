"""evaluation/features.py: the test-time feature, the FeatureExtractor on every input kind, its errors."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from network import DBN, CheckpointError
from network.fast import to_inference_dtype
from tests.helpers import with_formula_weights
from evaluation import features
from evaluation.features import FeatureExtractor, FeatureHead, check_dtype, cpu_has_native_bfloat16, dbn_features


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DBN(num_classes=3, pretrained=None).eval()


@pytest.fixture(scope="module")
def extractor(dbn_checkpoint):
    return FeatureExtractor.from_checkpoint(dbn_checkpoint, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = str(tmp_path_factory.mktemp("images") / "0001_c1s1_000001_01.jpg")
    Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_test_time_feature_is_the_flip_sum_of_five_embeddings_normalised(model):
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        plain = torch.cat(model(x), 1)
        flipped = torch.cat(model(x.flip(3)), 1)
        assert torch.allclose(dbn_features(model, x), F.normalize(plain + flipped, dim=1))
        assert torch.allclose(dbn_features(model, x, flip=False), F.normalize(plain, dim=1))
        assert torch.allclose(dbn_features(model, x, normalize=False), plain + flipped)
        assert torch.allclose(FeatureHead(model)(x), dbn_features(model, x))
    assert dbn_features(model, x).dtype == torch.float32


def test_few_images_and_their_flips_run_as_one_batch(model):
    """Up to JOINT_FLIP_BATCH images go through the model once with their flips (the same features
    as two calls); more images take two calls."""
    from evaluation.features import JOINT_FLIP_BATCH
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return model(x)
    for n in (1, JOINT_FLIP_BATCH, JOINT_FLIP_BATCH + 2):
        x = torch.rand(n, 3, 64, 32)
        calls.clear()
        with torch.no_grad():
            want = F.normalize(torch.cat(model(x), 1) + torch.cat(model(x.flip(3)), 1), dim=1)
            calls.clear()
            got = dbn_features(counted, x)
        assert calls == ([2 * n] if n <= JOINT_FLIP_BATCH else [n, n])
        assert (got - want).abs().max() < 1e-5


def test_extractor_reads_size_and_transform_from_the_checkpoint(extractor):
    assert (extractor.img_height, extractor.img_width, extractor.family) == (64, 32, "reid")
    assert extractor.model.fused and extractor.feature_dim == 1920


def test_every_input_kind_gives_the_same_features(extractor, image_file):
    pil = Image.open(image_file).convert("RGB")
    rgb = np.asarray(pil)
    reference = extractor(image_file)
    assert reference.shape == (1, 1920) and reference.dtype == np.float32
    assert np.allclose(np.linalg.norm(reference, axis=1), 1, atol=1e-6)
    same = {
        "PIL": extractor(pil),
        "RGB array": extractor(rgb),
        "BGR array": extractor(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True),
        "uint8 tensor": extractor(torch.from_numpy(rgb.copy()).permute(2, 0, 1)),
        "float tensor": extractor(extractor.preprocess(pil)),  # already at the model's size: used as it is
        "frame + whole-frame box": extractor(rgb, boxes=[(0, 0, 64, 128)]),
        "file frame + whole-frame box": extractor(image_file, boxes=[(0, 0, 64, 128)]),
    }
    for kind, feats in same.items():
        assert np.array_equal(feats, reference), kind
    assert not np.allclose(extractor(rgb, bgr=True), reference)  # the flag does swap the channels


def test_boxes_batches_and_flip(extractor, image_file):
    rgb = np.asarray(Image.open(image_file).convert("RGB"))
    boxes = [(0, 0, 32, 64), (10.4, 20.2, 60, 127.5), (-5, -5, 200, 300)]  # the last one is clipped to the frame
    crops = [Image.fromarray(rgb[0:64, 0:32]), Image.fromarray(rgb[20:128, 10:60]), Image.fromarray(rgb)]
    feats = extractor(rgb, boxes=boxes)
    assert feats.shape == (3, 1920)
    for k, crop in enumerate(crops):  # batched (batch_size 4) against one at a time
        assert np.allclose(feats[k], extractor(crop)[0], atol=1e-5), k
    batch = torch.stack([extractor.preprocess(c) for c in crops] * 2)  # 6 images: batches of 4 and 2
    assert np.allclose(extractor(batch), np.concatenate([feats, feats]), atol=1e-5)
    assert extractor(rgb, boxes=[]).shape == (0, 1920)
    no_flip = FeatureExtractor(extractor.model, 64, 32, flip=False)
    with torch.no_grad():
        expected = F.normalize(torch.cat(extractor.model(extractor.preprocess(crops[2])[None]), 1), dim=1)
    assert np.allclose(no_flip(rgb), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("bad,kind,message", [
    (np.zeros((8, 8, 3), np.float32), TypeError, r"arrays must be uint8 \(H, W, 3\), got float32 \(8, 8, 3\)"),
    (np.zeros((8, 8), np.uint8), TypeError, r"arrays must be uint8 \(H, W, 3\), got uint8 \(8, 8\)"),
    (torch.zeros(1, 8, 8), TypeError, r"float tensors must be \(3, H, W\) or \(B, 3, H, W\), got \(1, 8, 8\)"),
    (3.5, TypeError, "unsupported image float: give a path, a PIL image"),
])
def test_bad_inputs_say_what_is_accepted(extractor, bad, kind, message):
    with pytest.raises(kind, match=message):
        extractor(bad)


def test_bad_boxes_and_arguments(extractor, model, image_file, tmp_path):
    with pytest.raises(ValueError, match=r"box 1 \(70, 0, 80, 10\) holds no pixel of the 64x128 frame"):
        extractor(image_file, boxes=[(0, 0, 10, 10), (70, 0, 80, 10)])
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        FeatureExtractor(model, 64, 32, batch_size=0)
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=f"cannot read image {missing}: "):
        extractor(missing)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"cannot read image {tmp_path / 'bad.jpg'}: "):
        extractor([image_file, str(tmp_path / "bad.jpg")])


def test_transform_flag_that_contradicts_the_checkpoint(dbn_checkpoint):
    with pytest.raises(CheckpointError) as err:
        FeatureExtractor.from_checkpoint(dbn_checkpoint, transform="metric", device="cpu")
    assert str(err.value) == (f"{dbn_checkpoint} was trained with the 'reid' transforms (dataset market1501) but "
                              "--transform metric was given; pass --transform reid or leave it out")


def test_bare_state_dict_takes_the_arguments_or_the_default_size(model, tmp_path):
    path = str(tmp_path / "bare.pth")
    torch.save(model.state_dict(), path)
    default = FeatureExtractor.from_checkpoint(path, device="cpu")
    assert (default.img_height, default.img_width, default.family) == (256, 128, "reid")
    given = FeatureExtractor.from_checkpoint(path, img_height=64, img_width=64, transform="metric", device="cpu")
    assert (given.img_height, given.img_width, given.family) == (64, 64, "metric")


def test_num_workers_default_is_at_most_the_available_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert features.get_args_parser().parse_args(["--weights", "w.pth"]).num_workers == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert features.get_args_parser().parse_args(["--weights", "w.pth"]).num_workers == 4


# --- precision and compiling -------------------------------------------------------------------

def photographs():
    """The two photographs scikit-learn ships (a temple in China, a flower; 427x640 RGB)."""
    from sklearn.datasets import load_sample_images
    return [np.array(img) for img in load_sample_images().images]


@pytest.mark.skipif(not cpu_has_native_bfloat16(), reason="bfloat16 is offered on CPUs with AVX512-BF16 or AMX")
@pytest.mark.parametrize("weights_of", ["init", "formula 0", "formula 1"])
def test_bfloat16_features_agree_with_float32_on_photographs(weights_of):
    """The test-time features (flip-averaged, normalised) of real photographs through the bfloat16
    path have cosine similarity above 0.999 to float32's. Weights: DBN-S's own initialisation and
    two seeds of the formula weights (measured: 0.99993 to 0.99997). The golden example's weights
    with their BN statistics are worse conditioned: 0.9999 and 0.9983 on these two photographs."""
    torch.manual_seed(0)
    model = DBN(751, net="small", pretrained=None).eval()
    if weights_of != "init":
        with_formula_weights(model, int(weights_of.split()[1]))
    model.fuse()
    f32 = FeatureExtractor(model, 256, 128)(photographs())
    bf16 = FeatureExtractor(model, 256, 128, dtype="bfloat16")(photographs())
    assert f32.dtype == bf16.dtype == np.float32
    cosine = (f32 * bf16).sum(1)  # both L2-normalised
    assert cosine.min() > 0.999, cosine
    assert not np.array_equal(f32, bf16)  # it really ran in bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left alone


def test_inference_dtype_keeps_the_first_convolution_and_the_batchnorms_in_float32():
    """network.fast.to_inference_dtype(bfloat16): the stem's first convolution (the [0, 1] input) and the five
    BatchNorm1d stay float32, every other weight is bfloat16, and the output is float32."""
    model = to_inference_dtype(DBN(10, net="small", pretrained=None).eval().fuse(), torch.bfloat16)
    kept = {name for name, p in model.named_parameters() if p.dtype == torch.float32}
    assert kept and all(name.startswith(("stem.0.", "bn_list.")) for name in kept)
    assert {p.dtype for name, p in model.named_parameters() if name not in kept} == {torch.bfloat16}
    assert any(name.startswith("stem.0.") for name in kept) and any(name.startswith("bn_list.") for name in kept)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 32))
    assert all(e.dtype == torch.float32 for e in out)


def test_dtype_checks_say_what_is_offered(monkeypatch):
    with pytest.raises(ValueError, match="float16 inference is offered on CUDA only; on the CPU use bfloat16"):
        check_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="dtype 'int8': choose one of float32, bfloat16, float16"):
        check_dtype("int8", "cpu")
    monkeypatch.setattr(features, "cpu_has_native_bfloat16", lambda: False)
    with pytest.raises(ValueError, match="this CPU has neither AVX512-BF16 nor AMX, so bfloat16 would be emulated"):
        FeatureExtractor(DBN(3, pretrained=None), 64, 32, dtype="bfloat16")
    check_dtype("float32", "cpu")


def test_inference_dtype_is_for_eval_mode():
    with pytest.raises(RuntimeError, match="to_inference_dtype is for inference: call .eval\\(\\) first"):
        to_inference_dtype(DBN(3, pretrained=None), torch.bfloat16)


@pytest.mark.slow
def test_compiled_features_equal_eager(model):
    """torch.compile (inductor, frozen weights, static shapes): the same features within 1e-4 for
    batches padded up to a power of two (5 -> 8, 7 -> 8) and for a single image; batches 5 and 7
    share one graph."""
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    fused = DBN(3, pretrained=None)
    fused.load_state_dict(model.state_dict())
    fused.eval().fuse()
    eager = FeatureExtractor(fused, 64, 32)
    compiled = FeatureExtractor(fused, 64, 32, compile=True)
    for batch in (torch.rand(5, 3, 64, 32), torch.rand(1, 3, 64, 32), torch.rand(7, 3, 64, 32)):
        want, got = eager.features_of_batch(batch), compiled.features_of_batch(batch)
        assert got.shape == want.shape
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # batch 8 and batch 1
