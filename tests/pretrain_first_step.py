"""Helper of tests/test_pretrain.py: pretrain.py's first step's gradient under DDP.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/pretrain_first_step.py OUT
    python tests/pretrain_first_step.py OUT --reference

Every rank joins the process group as pretrain.py does (gloo on the CPU), builds pretrain.py's seeded
LEViT (float64), takes its share of the first batch from datasets.imagefolder.ShuffledBatches(rank,
world_size), runs forward, pretrain.py's loss (cross-entropy with label smoothing; Mixup, CutMix,
RandAugment off) and backward under DistributedDataParallel, and saves the gradient to OUT/grad_rank<r>.pt.
With --reference one process without DDP saves to OUT/reference.pt the gradient of the loss on the whole
batch, each half run through the model on its own (BatchNorm normalises per process's share).
"""
import os
import sys

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pretrain  # noqa: E402
from datasets.imagefolder import ShuffledBatches  # noqa: E402
from tests.ddp_first_step import backward  # noqa: E402
from utils import distributed  # noqa: E402

CLASSES, ITEMS, BATCH, SEED, SIZE = 5, 40, 16, 5, 32
LABELS = torch.arange(ITEMS) % CLASSES


def images():
    return torch.rand(ITEMS, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def build_model():
    args = pretrain.parse_args(["--img-size", str(SIZE), "--device", "cpu"])
    torch.manual_seed(SEED)
    return pretrain.build_model(args, CLASSES).double().train()


def criterion():
    return nn.CrossEntropyLoss(label_smoothing=0.1)


def forward_share(model, rank, world_size):
    sampler = ShuffledBatches(ITEMS, BATCH, SEED, rank, world_size)
    index = next(iter(sampler))
    torch.manual_seed(1000 + rank)  # the stochastic depth draws of this share, the same in the reference
    return model(images()[index]), LABELS[index]


def main(out):
    info = distributed.init_distributed(use_cuda=False, timeout_s=120)
    module = build_model()
    model = nn.parallel.DistributedDataParallel(module)  # kept alive: its hooks all-reduce in backward
    logits, labels = forward_share(model, info.rank, info.world_size)
    torch.save({"grads": backward(module, criterion()(logits, labels)), "backend": info.backend,
                "world_size": info.world_size}, os.path.join(out, f"grad_rank{info.rank}.pt"))
    distributed.cleanup()


def reference(out):
    module = build_model()
    halves = [forward_share(module, r, 2) for r in (0, 1)]
    loss = criterion()(torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves]))
    torch.save({"grads": backward(module, loss)}, os.path.join(out, "reference.pt"))


if __name__ == "__main__":
    if "--reference" in sys.argv[2:]:
        reference(sys.argv[1])
    else:
        main(sys.argv[1])
