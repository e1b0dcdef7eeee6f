"""utils/bench.py (model part): parameter and FLOP counting, alternating timing."""
import torch
from torch import nn

import utils.bench as bench
from network import DBN, LEViT, VARIANTS
from network.levit import LocalEnhanceAttention


def hand_count_flops(model, height, width):
    """2 FLOPs per multiply-add: (convs + linears from their shapes, attention as two
    (tokens x window tokens x channels) products over the window-padded map)."""
    total = attn = 0

    def conv(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    def attention(m, inp, out):
        nonlocal attn
        B, C, H, W = inp[0].shape
        ws = m.window
        padded_tokens = (H + -H % ws) * (W + -W % ws)
        attn += 2 * 2 * B * padded_tokens * ws * ws * C

    hooks = []
    for m in model.modules():
        for kind, fn in ((nn.Conv2d, conv), (nn.Linear, linear), (LocalEnhanceAttention, attention)):
            if isinstance(m, kind):
                hooks.append(m.register_forward_hook(fn))
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, height, width, device="meta"))
    for h in hooks:
        h.remove()
    return total, attn


def test_count_flops_includes_attention_and_padding():
    with torch.device("meta"):
        small, dbn = LEViT(**VARIANTS["small"]), DBN(751, net="small", pretrained=None)
    for model, size in ((small, (256, 128)), (small, (250, 120)), (dbn, (256, 128))):
        dense, attn = hand_count_flops(model, *size)
        assert bench.count_flops(model, *size) == dense + attn
        assert attn > 0.05 * dense  # the attention products are really in the count


def test_count_params():
    with torch.device("meta"):
        assert bench.count_params(LEViT(**VARIANTS["large"])) == 9_650_300
        assert bench.count_params(DBN(751, net="large", pretrained=None)) == 16_636_564


def test_time_alternating_alternates_and_takes_the_median(monkeypatch):
    clock = [0.0]
    order = []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def run(name, durations):
        it = iter(durations)

        def fn():
            order.append(name)
            clock[0] += next(it)
        return fn
    # first value of each: the warm-up call, not timed
    seconds = bench.time_alternating({"a": run("a", [9, 1, 5, 2]), "b": run("b", [9, 3, 3, 30])}, repeats=3)
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert seconds == {"a": 2, "b": 3}
