"""Batch-hard triplet loss with a soft margin (Hermans et al., "In Defense of the Triplet Loss
for Person Re-Identification", 2017), as the release trains DBN, vectorised over the batch.

For anchor i: d_ap = the largest distance to an embedding of the same label (the anchor itself
included, as the release), d_an = the smallest distance to an embedding of another label;
loss = mean_i log(1 + exp(d_ap - d_an)) (torch.nn.SoftMarginLoss of d_an - d_ap with target 1).
Distances are Euclidean, sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12)), on L2-normalised embeddings
unless `normalize=False` (train.py's `--norm false`). An anchor without any other-label
embedding in the batch contributes 0.
"""
import torch
import torch.nn.functional as F
from torch import nn


def pairwise_distances(x):
    """(B, D) -> (B, B) Euclidean distances, clamped at 1e-6 (sqrt of 1e-12) for a finite gradient."""
    sq = x.pow(2).sum(dim=1, keepdim=True)  # (B, 1)
    d2 = torch.addmm(sq + sq.t(), x, x.t(), beta=1, alpha=-2)
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(embeddings, labels, normalize=True):
    """Soft-margin batch-hard triplet loss of (B, D) embeddings with (B,) integer labels.

    Computed in float32 with autocast off, whatever the caller's precision. Returns a scalar.
    """
    device_type = embeddings.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        x = embeddings.float()
        if normalize:
            x = F.normalize(x, p=2.0, dim=1)
        dist = pairwise_distances(x)  # (B, B)
        same = labels.view(-1, 1) == labels.view(1, -1)  # (B, B), the diagonal included
        d_ap = dist.masked_fill(~same, float("-inf")).max(dim=1).values  # hardest positive
        d_an = dist.masked_fill(same, float("inf")).min(dim=1).values  # hardest negative
        # softplus(-(d_an - d_ap)) = log(1 + exp(d_ap - d_an)); an anchor without negatives gives 0
        return F.softplus(d_ap - d_an).mean()
