"""LEViT's speed forms on the CPU, applied from outside the model (network/levit.py, network/dbn.py):

- `inference_form(model, dtype)`: a new module for test-time embeddings (BatchNorm folded, ReLUs and
  residual sums fused into the convolutions, native kernels and oneDNN's fused operators, a bfloat16
  weight policy, 16-image chunks); `optimize` and `to_inference_dtype` are its parts.
- `export_form(model, runtime)`: a copy in standard operators arranged for ONNX Runtime or OpenVINO
  (export.py); export.py's module has the file writers and the runtimes' sessions.
- `training_form(model)`: the stride-1 grouped 3x3 convolutions trained in the native kernels.

The native kernels (kernels.py, csrc/) are built on first use; without a compiler everything runs in
torch's operators. Private torch operators are called only from cpu.py, each behind a check.
"""
from .cpu import native_bfloat16
from .export import RUNTIMES, export_form
from .inference import CHUNK, BatchChunks, inference_form, optimize, to_inference_dtype
from .layers import InferenceAttention, InferenceBlock, InferenceConv, inference_attention
from .training import Group4Conv2d, training_form

__all__ = ["inference_form", "optimize", "to_inference_dtype", "training_form", "native_bfloat16", "CHUNK",
           "BatchChunks", "InferenceConv", "InferenceAttention", "InferenceBlock", "inference_attention",
           "Group4Conv2d", "export_form", "RUNTIMES"]
