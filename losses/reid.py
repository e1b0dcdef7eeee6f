"""The release's training objective for DBN: the mean of seven terms.

Five cross-entropy terms (one per classifier logit of DBN's five embeddings) and two batch-hard
soft-margin triplet terms (on embeddings 0 and 1, the two average-pooled branches):
loss = (ce_0 + ... + ce_4 + tri_0 + tri_1) / 7. Every term is computed in float32 with autocast
off, so float16/bfloat16 training changes the network's precision, not the loss's.

The release trains with DataParallel: the loss sees the outputs of the whole batch gathered on
one GPU, so the triplets are mined over the whole batch. Under torchrun (`global_triplet=True`)
every process gathers the embeddings and labels of all processes (with their gradient, see
utils.distributed.all_gather_batch) and computes the triplet terms on the global batch, so the
DDP gradient is DataParallel's. Cross-entropy stays per process (DDP's mean of the per-process
means is the global mean for equal shares), and so does BatchNorm, as per GPU under DataParallel.
"""
import torch
import torch.nn.functional as F
from torch import nn

from utils.distributed import all_gather_batch

from .triplet import batch_hard_triplet_loss


class ReIDLoss(nn.Module):
    """ReIDLoss(normalize=True, global_triplet=False)(logits, embeddings, labels) -> (total, terms).

    `logits`: list of (B, C) tensors, `embeddings`: list of (B, D) tensors, `labels`: (B,) int64.
    `terms`: dict name -> detached float32 scalar, names ce0..ce{n-1} then tri0..tri{m-1}.
    `global_triplet`: mine the triplets over every process's batch (torchrun); a no-op in one process.
    """

    def __init__(self, normalize: bool = True, global_triplet: bool = False):
        super().__init__()
        self.normalize = normalize
        self.global_triplet = global_triplet

    def forward(self, logits, embeddings, labels):
        device_type = labels.device.type
        triplet_labels = labels
        if self.global_triplet and embeddings:
            # one gather for all embeddings: (sum of the processes' B, len(embeddings) * D)
            width = [e.shape[1] for e in embeddings]
            stacked, triplet_labels = all_gather_batch(torch.cat(embeddings, dim=1), labels)
            embeddings = list(stacked.split(width, dim=1))
        with torch.autocast(device_type=device_type, enabled=False):
            terms = [F.cross_entropy(out.float(), labels) for out in logits]
            terms += [batch_hard_triplet_loss(emb, triplet_labels, self.normalize) for emb in embeddings]
        names = [f"ce{i}" for i in range(len(logits))] + [f"tri{i}" for i in range(len(embeddings))]
        total = torch.stack(terms).sum() / len(terms)
        return total, {name: t.detach() for name, t in zip(names, terms)}
