"""Helper of tests/test_distributed.py: the first training step's gradient under DDP.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_first_step.py OUT
    python tests/ddp_first_step.py OUT --reference

Every rank joins the process group as train.py does (utils.distributed.init_distributed, gloo on
the CPU), builds the same seeded DBN (float64, so the comparison is tight), takes its share of
the first P x K batch from PKSampler(rank, world_size), runs forward, train.py's loss
(ReIDLoss(global_triplet=True): triplets mined over the gathered global batch) and backward under
DistributedDataParallel and saves the gradient DDP left in the parameters to OUT/grad_rank<r>.pt.
It also saves a BatchNorm's running statistics after utils.distributed.average_bn_statistics.
With --reference, one process without DDP saves to OUT/reference.pt the gradient of DataParallel's
loss (each half of the batch through the model on its own, so BatchNorm normalises per half as per
GPU, then the loss on the whole batch) and, for contrast, the gradients of each half's own loss
(what every process computed when it mined triplets only within its share).
"""
import os
import sys

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from datasets.sampler import PKSampler  # noqa: E402
from losses import ReIDLoss  # noqa: E402
from network import DBN  # noqa: E402
from utils import distributed  # noqa: E402

LABELS = np.repeat(np.arange(8), 6)  # 8 identities x 6 images
BATCH, K, SEED = 16, 4, 5  # global batch: P = 4 identities x K = 4 images; 2 identities per rank
HEIGHT, WIDTH = 32, 16


def images():
    """(48, 3, 32, 16) float64: one fixed random image per item of LABELS."""
    return torch.rand(len(LABELS), 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)


def build_model():
    torch.manual_seed(SEED)
    return DBN(num_classes=8, net="small", pretrained=None).double().train()


def first_batch(rank, world_size):
    sampler = PKSampler(LABELS, BATCH, K, seed=SEED, rank=rank, world_size=world_size)
    sampler.set_epoch(0)
    return next(iter(sampler))


def forward_share(model, rank, world_size):
    """(logits, embeddings, labels) of `model` in train mode on rank `rank`'s share of the first batch."""
    index = first_batch(rank, world_size)
    torch.manual_seed(1000 + rank)  # the stochastic depth draws of this share, the same in the reference
    logits, embeddings = model(images()[index])
    return logits, embeddings, torch.as_tensor(LABELS[index], dtype=torch.int64)


def backward(module, loss):
    """{name: grad} of `module` after `loss.backward()`."""
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def main(out):
    info = distributed.init_distributed(use_cuda=False, timeout_s=120)
    assert info.distributed and info.backend == "gloo", info
    module = build_model()
    model = nn.parallel.DistributedDataParallel(module)
    loss, _ = ReIDLoss(global_triplet=True)(*forward_share(model, info.rank, info.world_size))
    grads = backward(module, loss)

    # shares of different sizes (rank r holds r + 2 rows): gathered in rank order, and the gradient each
    # process gets for its rows is the sum over the processes of the same loss's gradient
    rows = torch.arange(3.0 * (info.rank + 2), dtype=torch.float64).reshape(-1, 3) + 100 * info.rank
    rows.requires_grad_(True)
    gathered, gathered_labels = distributed.all_gather_batch(rows, torch.full((info.rank + 2,), info.rank))
    weights = torch.arange(gathered.numel(), dtype=torch.float64).reshape(gathered.shape)
    (gathered * weights).sum().backward()

    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(float(info.rank))
    bn.running_var.fill_(1.0 + 2.0 * info.rank)
    distributed.average_bn_statistics(bn)
    torch.save({"grads": grads, "bn_mean": bn.running_mean, "bn_var": bn.running_var, "world_size": info.world_size,
                "gathered": gathered.detach(), "gathered_labels": gathered_labels, "rows_grad": rows.grad},
               os.path.join(out, f"grad_rank{info.rank}.pt"))
    distributed.cleanup()


def reference(out):
    """One process, no DDP, to OUT/reference.pt: DataParallel's gradient and each half's own one."""
    module = build_model()
    halves = [forward_share(module, r, 2) for r in (0, 1)]  # BatchNorm statistics of each half
    logits = [torch.cat(outs) for outs in zip(*(h[0] for h in halves))]
    embeddings = [torch.cat(outs) for outs in zip(*(h[1] for h in halves))]
    loss, _ = ReIDLoss()(logits, embeddings, torch.cat([h[2] for h in halves]))
    dataparallel = backward(module, loss)
    own = [backward(module, ReIDLoss()(*forward_share(module, r, 2))[0]) for r in (0, 1)]
    torch.save({"dataparallel": dataparallel, "halves": own}, os.path.join(out, "reference.pt"))


if __name__ == "__main__":
    if "--reference" in sys.argv[2:]:
        reference(sys.argv[1])
    else:
        main(sys.argv[1])
