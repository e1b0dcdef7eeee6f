"""Parameter and FLOP counts of a model, as train.py prints them and the benchmark tabulates them."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from network.dbn import DBN


def count_params(model):
    """All parameters, trainable and frozen (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model, height, width):
    """FLOPs of one eval-mode forward of a 1-image batch (2 per multiply-add), as counted by
    torch.utils.flop_counter. Attention runs through SDPA's math backend here so that its two
    matrix products are counted (the fused CPU kernel has no FLOP formula). A model built on
    the meta device is counted without computing anything."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model.eval()(torch.rand(1, 3, height, width, device=device))
    return counter.get_total_flops()


def model_summary(model, net, height, width):
    """One line: the DBN's variant, classes, parameters (trained ones) and FLOPs per height x width image."""
    with torch.device("meta"):  # shapes only: counting needs no memory and no compute
        meta = DBN(num_classes=model.num_classes, net=net, pretrained=None, mlp_ratio=model.mlp_ratio)
    flops = count_flops(meta, height, width)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"model: DBN LEViT-{net}, {model.num_classes} classes, {count_params(model):,} parameters "
            f"({trainable:,} trained), {flops / 1e9:.2f} GFLOPs ({flops / 2e9:.2f} G multiply-adds) "
            f"per {height}x{width} image")
