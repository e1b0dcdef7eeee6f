"""The CPU inference form of a LEViT / DBN: transformations that return a new module and leave the
given model alone (timm's reparameterize, torch.ao's fuse_modules).

    import network.fast
    fast = network.fast.inference_form(model)                    # float32
    fast = network.fast.inference_form(model, torch.bfloat16)    # a CPU with AVX512-BF16 or AMX, or CUDA
    embeddings = fast(x)                                         # as model.eval()(x), up to rounding

- `optimize(fused_model)`: every block an InferenceBlock (network/fast/layers.py: ReLUs and residual
  sums fused into the convolutions, the native kernels and oneDNN's fused operators where they
  apply), the stem's ReLUs fused. Not for TorchScript or ONNX export (export the fused model).
- `to_inference_dtype(dbn, dtype)`: everything in `dtype` but the stem's first convolution and the
  five BatchNorm1d, which stay float32 (the [0, 1] input rounded to bfloat16's 8 bits costs most of
  the features' agreement with float32; the first convolution has 3 input channels, a negligible
  share of the work). Exportable.
- `inference_form(dbn, dtype, optimize=True)`: a copy, BatchNorm folded, optimized, in `dtype`, and
  on the CPU batches above CHUNK images run CHUNK at a time (BatchChunks).
State_dict keys of the returned modules are not the release's: save the model, not its inference form.
"""
import copy

import torch
from torch import nn

from .cpu import capturing_graph
from .layers import replace_layers

CHUNK = 16  # batches above this many images run this many at a time on the CPU: the maps stay in cache


class BatchChunks(nn.Module):
    """`model` (eval mode) with CPU batches above CHUNK images run CHUNK at a time, the outputs
    concatenated; not while a graph is traced, compiled or exported (it must hold for any batch)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def feature_dim(self):
        return self.model.feature_dim

    def forward(self, x):
        if self.training or x.shape[0] <= CHUNK or x.device.type != "cpu" or capturing_graph():
            return self.model(x)
        parts = [self.model(chunk) for chunk in x.split(CHUNK)]  # each a list of (chunk, F) embeddings
        return [torch.cat(embeddings) for embeddings in zip(*parts)]


class InDtype(nn.Module):
    """`module` applied to its input cast to `dtype`."""

    def __init__(self, module, dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x):
        return self.module(x.to(self.dtype))


def _fuse_and_optimize(model):
    if not model.fused:
        model.fuse()
    return replace_layers(model)


@torch.no_grad()
def _cast(model, dtype):
    """In place: see to_inference_dtype."""
    if model.training:
        raise RuntimeError("to_inference_dtype is for inference: call .eval() first")
    model.to(dtype)
    if dtype == torch.float32:
        return model
    model.stem[0].float()
    model.stem[1] = InDtype(model.stem[1], dtype)  # the rest of the stem in dtype
    for i, bn in enumerate(model.bn_list):
        model.bn_list[i] = InDtype(bn.float(), torch.float32)  # (B, F) pooled maps to float32
    return model


@torch.no_grad()
def optimize(model):
    """A copy of the fused (BatchNorm folded, eval mode) LEViT or DBN `model` in its inference form:
    see the module docstring. Same outputs up to rounding."""
    if not getattr(model, "fused", False):
        raise RuntimeError(f"optimize: fuse() this {type(model).__name__} first")
    return replace_layers(copy.deepcopy(model))


def to_inference_dtype(model, dtype):
    """A copy of the eval-mode DBN `model` for inference in `dtype` (see the module docstring); its
    embeddings are float32."""
    if model.training:
        raise RuntimeError("to_inference_dtype is for inference: call .eval() first")
    return _cast(copy.deepcopy(model), dtype)


def inference_form(model, dtype=torch.float32, optimize=True):
    """A new module for the DBN `model`'s test-time embeddings: a copy in eval mode, BatchNorm folded,
    in the inference form of `optimize()` (unless `optimize` is false), in `dtype` by
    `to_inference_dtype`, CPU batches above CHUNK images in chunks (BatchChunks, with `optimize`).
    The given model is not changed."""
    model = copy.deepcopy(model).eval()
    if optimize:
        model = _fuse_and_optimize(model)
    elif not model.fused:
        model.fuse()
    model = _cast(model, dtype)
    return BatchChunks(model).eval() if optimize else model
