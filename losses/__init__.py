"""Training losses: batch-hard soft-margin triplet and the release's 7-term ReID objective."""
from .reid import ReIDLoss
from .triplet import batch_hard_triplet_loss, pairwise_distances

__all__ = ["ReIDLoss", "batch_hard_triplet_loss", "pairwise_distances"]
