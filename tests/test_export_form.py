"""network/fast/export.py: the export forms give the model's outputs (channel-major window attention on
every window layout, the padded fallback, grouped convolutions as depthwise sums), leave the model alone,
and the TensorRT check names what TensorRT's ONNX parser would refuse."""
import pytest
import torch
from torch import nn

from network import DBN
from network.fast import export as exporting
from network.levit import LocalEnhanceAttention


@pytest.mark.parametrize("size", [(8, 8), (16, 8), (32, 16), (64, 32), (12, 20)])
def test_channel_major_attention_matches_the_model_on_every_window_layout(size):
    torch.manual_seed(0)
    attention = LocalEnhanceAttention(heads=2, window=8)
    nn.init.uniform_(attention.logit_scale, 1.0, 5.0)  # one above log 100: the clamp must hold
    with torch.no_grad():
        attention.logit_scale[0] = 5.0
    q, k, v = (torch.randn(3, 16, *size) for _ in range(3))
    form = exporting.ChannelMajorAttention(attention)
    with torch.no_grad():
        assert torch.allclose(form(q, k, v), attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride,bias", [(1, True), (2, False)])
def test_grouped_convolution_as_depthwise_sum_is_the_same_convolution(stride, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(96, 96, 3, stride, 1, groups=24, bias=bias)
    x = torch.randn(2, 96, 16, 8)
    with torch.no_grad():
        assert torch.allclose(exporting.GroupedAsDepthwise(conv)(x), conv(x), atol=1e-5)
    with pytest.raises(ValueError, match="does not keep its channel count"):
        exporting.GroupedAsDepthwise(nn.Conv2d(96, 192, 3, groups=24))


@pytest.fixture(scope="module")
def dbn():
    torch.manual_seed(0)
    model = DBN(num_classes=10, net="small", pretrained=None).eval()
    for m in model.modules():  # BatchNorm statistics that fold into something other than the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("runtime", exporting.RUNTIMES)
def test_export_form_gives_the_models_embeddings_and_leaves_it_alone(dbn, runtime):
    before = {k: v.clone() for k, v in dbn.state_dict().items()}
    form = exporting.export_form(dbn, runtime)
    assert not dbn.fused and all(torch.equal(v, before[k]) for k, v in dbn.state_dict().items())
    kinds = {type(m).__name__ for m in form.modules()}
    assert ({"ChannelMajorAttention", "GroupedAsDepthwise"} <= kinds) == (runtime == "onnxruntime")
    x = torch.rand(2, 3, 128, 64)
    with torch.no_grad():
        expected, got = torch.cat(dbn(x), 1), torch.cat(form(x), 1)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; choose one of onnxruntime, openvino"):
        exporting.export_form(dbn, "tensorrt")


def test_tensorrt_check_names_the_opset_and_the_operators_it_would_refuse(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    good = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(good, tmp_path / "good.onnx")
    assert exporting.tensorrt_problems(str(tmp_path / "good.onnx")) == []
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Bernoulli", ["h"], ["y"])], "g",
                              [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "bad.onnx")
    assert exporting.tensorrt_problems(str(tmp_path / "bad.onnx")) == [
        "opset 21 (TensorRT 10 reads 9 to 20)", "operators TensorRT does not list: Bernoulli"]


def test_the_multiply_adds_docs_deployment_counts():
    """docs/deployment.md: 605 M convolution multiply-adds per 256x128 image, 465 M in 1x1 convolutions,
    264 M of them with 384 input channels."""
    counts = {"all": 0, "1x1": 0, "1x1 384": 0}

    def count(conv, inputs, output):
        macs = output.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        counts["all"] += macs
        if conv.kernel_size == (1, 1):
            counts["1x1"] += macs
            counts["1x1 384"] += macs if conv.in_channels == 384 else 0
    model = DBN(num_classes=751, net="small", pretrained=None).eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.rand(1, 3, 256, 128))
    assert {k: round(v / 1e6) for k, v in counts.items()} == {"all": 605, "1x1": 465, "1x1 384": 264}
