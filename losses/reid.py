"""The release's training objective for DBN: the mean of seven terms.

Five cross-entropy terms (one per classifier logit of DBN's five embeddings) and two batch-hard
soft-margin triplet terms (on embeddings 0 and 1, the two average-pooled branches):
loss = (ce_0 + ... + ce_4 + tri_0 + tri_1) / 7. Every term is computed in float32 with autocast
off, so float16/bfloat16 training changes the network's precision, not the loss's.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .triplet import batch_hard_triplet_loss


class ReIDLoss(nn.Module):
    """ReIDLoss(normalize=True)(logits, embeddings, labels) -> (total, terms).

    `logits`: list of (B, C) tensors, `embeddings`: list of (B, D) tensors, `labels`: (B,) int64.
    `terms`: dict name -> detached float32 scalar, names ce0..ce{n-1} then tri0..tri{m-1}.
    """

    def __init__(self, normalize: bool = True):
        super().__init__()
        self.normalize = normalize

    def forward(self, logits, embeddings, labels):
        device_type = labels.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            terms = [F.cross_entropy(out.float(), labels) for out in logits]
            terms += [batch_hard_triplet_loss(emb, labels, self.normalize) for emb in embeddings]
        names = [f"ce{i}" for i in range(len(logits))] + [f"tri{i}" for i in range(len(embeddings))]
        total = torch.stack(terms).sum() / len(terms)
        return total, {name: t.detach() for name, t in zip(names, terms)}
