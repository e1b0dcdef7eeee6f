"""P x K identity batches for the triplet and cross-entropy losses (the release's sampler).

An epoch is drawn as the release draws it: passes = images // (identities * K) (at least 1); in each
pass the identities are shuffled and each contributes K of its images, drawn without replacement
when it has at least K, with replacement otherwise, afresh in every pass (University-1652: 1
satellite and K - 1 drone images, the drones likewise). The passes are concatenated into one list
of passes * identities * K indices, cut in order into batches of `batch_size`; the last batch is
partial, and a batch may straddle two passes (so it can hold an identity twice). Everything is
drawn from (seed, epoch) only, so an epoch's batches are the same in every process and on every
resume.

With the release's commands: Market-1501 (12,936 images, 751 ids, K 4, batch 64) 4 passes, 12,016
items, 188 batches; DukeMTMC-reID 220; MSMT17 456; VeRi-776 576; VehicleID (batch 256) 412; CARS
(K 6, batch 48) 160; CUB 113; University-1652 (K 6, batch 48) 789.

Distributed training: every rank draws the same list and takes its equal, contiguous share of each
batch (rank r: items r*B/W .. (r+1)*B/W - 1 of a batch of B on W processes), so the ranks' shares
put together are the batch one process would see, and every rank runs the same number of steps.
A partial last batch of r items is split the same way when it divides into W shares of at least 2
whole identities (r a multiple of W*K, r >= 2*W*K); otherwise it is completed, with the first
items of the epoch's list, to the next size that does, W*K*max(2, ceil(r / (W*K))) (at most a full
batch). One process keeps the partial batch as it is.
"""
import math
import numbers

import numpy as np
import torch

from datasets.university1652 import VIEWS
from utils.checks import positive_int

SATELLITE, DRONE = VIEWS["satellite"], VIEWS["drone"]  # University-1652 camids of the views


def _draw(indices, k, rng):
    """k of an identity's indices: without replacement when it has at least k, else with."""
    return rng.choice(indices, k, replace=len(indices) < k).tolist() if k else []


class PKSampler(torch.utils.data.Sampler):
    """Batch sampler (pass it as DataLoader(batch_sampler=...)) yielding lists of dataset indices.

    Each list is this rank's share of a batch of `batch_size` images made of K (num_instances)
    images of an identity, K of the next one, and so on (see the module docstring).

    labels: the identity label of every dataset item (any integers).
    views: University-1652 only, the camid of every item (0 satellite, 1 drone; others are never
        drawn): each identity then contributes one satellite image and K - 1 drone images.
    Call `set_epoch(epoch)` before iterating; `len()` is the number of batches of an epoch,
    ceil(passes * identities * K / batch_size), the same on every rank.
    """

    def __init__(self, labels, batch_size, num_instances, seed=0, rank=0, world_size=1, views=None):
        batch_size = positive_int("batch_size", batch_size)
        k = positive_int("num_instances (K)", num_instances)
        world_size = positive_int("world_size", world_size)
        if not isinstance(rank, numbers.Integral) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in 0..{world_size - 1} (world_size {world_size}), got {rank!r}")
        if not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if batch_size % (k * world_size):
            step = k * world_size
            lower, upper = batch_size // step * step, (batch_size // step + 1) * step
            nearest = f"{lower} or {upper}" if lower >= 2 * step else f"{upper}"
            raise ValueError(f"batch_size {batch_size} must be a multiple of num_instances (K) x world_size = "
                             f"{k} x {world_size} = {step}: each process's batch is whole identities "
                             f"of K images; the nearest valid batch_size: {nearest}")
        p_local = batch_size // (k * world_size)
        if p_local < 2:
            raise ValueError(f"a batch needs at least 2 identities per process (for the triplet loss), got "
                             f"batch_size {batch_size} // (K {k} x world_size {world_size}) = {p_local}; use "
                             f"batch_size >= {2 * k * world_size}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence of identity labels, got shape {labels.shape}")
        identities, inverse = np.unique(labels, return_inverse=True)
        p_global = p_local * world_size
        if len(identities) < p_global:
            raise ValueError(f"{len(identities)} identities cannot fill a batch of P = batch_size // K = "
                             f"{batch_size} // {k} = {p_global} identities; lower batch_size to at most "
                             f"{len(identities) // world_size * world_size * k}")

        self.batch_size, self.num_instances, self.seed = batch_size, k, int(seed)
        self.rank, self.world_size = int(rank), world_size
        self.num_identities = len(identities)
        self.passes = max(1, len(labels) // (self.num_identities * k))
        self.num_items = self.passes * self.num_identities * k  # the epoch's list, before any completion
        self.epoch = 0
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(identities)))[:-1])
        if views is None:
            self.views = None
            self.groups = groups
        else:
            views = np.asarray(views)
            if views.shape != labels.shape:
                raise ValueError(f"views must give one camid per item: {len(views)} views for {len(labels)} labels")
            self.views = []
            for label, group in zip(identities.tolist(), groups):
                satellite, drone = group[views[group] == SATELLITE], group[views[group] == DRONE]
                if len(satellite) == 0 or (k > 1 and len(drone) == 0):
                    raise ValueError(f"identity {label} has {len(satellite)} satellite (camid {SATELLITE}) and "
                                     f"{len(drone)} drone (camid {DRONE}) images; a University-1652 batch takes "
                                     f"1 satellite + K-1 = {k - 1} drone images per identity, so it needs both")
                self.views.append((satellite, drone))

    def set_epoch(self, epoch):
        if not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self):
        return math.ceil(self.num_items / self.batch_size)

    def last_batch_size(self):
        """Images of the epoch's last batch over all processes (after any completion, see above)."""
        rest = self.num_items - (len(self) - 1) * self.batch_size
        if self.world_size == 1:
            return rest
        unit = self.world_size * self.num_instances
        return min(self.batch_size, unit * max(2, math.ceil(rest / unit)))

    def epoch_items(self):
        """The epoch's list of dataset indices, passes concatenated (drawn from seed and epoch)."""
        rng = np.random.default_rng([self.seed % 2**64, self.epoch])
        k = self.num_instances
        items = []
        for _ in range(self.passes):
            for identity in rng.permutation(self.num_identities).tolist():
                if self.views is None:
                    items += _draw(self.groups[identity], k, rng)
                else:
                    satellite, drone = self.views[identity]
                    items += _draw(satellite, 1, rng) + _draw(drone, k - 1, rng)
        return items

    def __iter__(self):
        # every rank draws the whole list (cheap: indices only), so the batches do not depend on
        # the number of processes; it keeps its own share of each
        items = self.epoch_items()
        last = (len(self) - 1) * self.batch_size + self.last_batch_size()
        items += items[:last - len(items)]  # completes the last batch under torchrun (see above)
        for start in range(0, last, self.batch_size):
            batch = items[start:min(start + self.batch_size, last)]
            share = len(batch) // self.world_size
            yield batch[self.rank * share:(self.rank + 1) * share]
