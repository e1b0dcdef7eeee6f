"""P x K identity batches for the triplet and cross-entropy losses (the release's sampler).

A batch is P identities x K images: the indices of K images of the first identity, then K of
the second, and so on. An epoch makes max(1, images // (identities * K)) passes over the
identities, as the release; each pass shuffles the identities and cuts them into groups of P
(an incomplete last group is dropped), one group per batch. Everything is drawn from (seed, epoch)
only, so an epoch's batches are the same in every process and on every resume.

Distributed training: the global batch of P = batch_size // K identities is split over the
processes, rank r taking identities r*P_local .. (r+1)*P_local - 1 of each group, so the ranks
see different identities and the same number of batches, and the ranks' batches put together
are the batch one process would see.
"""
import numbers

import numpy as np
import torch

from datasets.university1652 import VIEWS

SATELLITE, DRONE = VIEWS["satellite"], VIEWS["drone"]  # University-1652 camids of the views


def _positive_int(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _Pool:
    """One identity's indices, handed out without replacement: K at a time from a shuffled copy,
    reshuffled when fewer than K are left (so passes go through all of its images). With fewer
    than K images, all of them plus K - n drawn with replacement."""

    def __init__(self, indices):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.order, self.pos = None, 0

    def take(self, k, rng):
        n = len(self.indices)
        if k == 0:
            return []
        if n < k:
            return np.concatenate([rng.permutation(self.indices), rng.choice(self.indices, k - n)]).tolist()
        if self.order is None or self.pos + k > n:
            self.order, self.pos = rng.permutation(self.indices), 0
        self.pos += k
        return self.order[self.pos - k:self.pos].tolist()


class PKSampler(torch.utils.data.Sampler):
    """Batch sampler (pass it as DataLoader(batch_sampler=...)) yielding lists of dataset indices.

    Each list is this rank's share of a global batch of `batch_size` images: P_local =
    batch_size // (num_instances * world_size) identities, num_instances (K) images each, all
    P_local identities different; K different images of an identity when it has K or more.

    labels: the identity label of every dataset item (any integers).
    views: University-1652 only, the camid of every item (0 satellite, 1 drone; others are never
        drawn): each identity then contributes one satellite image and K - 1 drone images.
    Call `set_epoch(epoch)` before iterating; `len()` is the number of batches of an epoch, the
    same on every rank.
    """

    def __init__(self, labels, batch_size, num_instances, seed=0, rank=0, world_size=1, views=None):
        batch_size = _positive_int("batch_size", batch_size)
        k = _positive_int("num_instances (K)", num_instances)
        world_size = _positive_int("world_size", world_size)
        if not isinstance(rank, numbers.Integral) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in 0..{world_size - 1} (world_size {world_size}), got {rank!r}")
        if not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if batch_size % (k * world_size):
            raise ValueError(f"batch_size {batch_size} must be a multiple of num_instances (K) x world_size = "
                             f"{k} x {world_size} = {k * world_size}: each process's batch is whole identities "
                             f"of K images")
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
        self.rank, self.world_size, self.p_local, self.p_global = int(rank), world_size, p_local, p_global
        self.num_identities = len(identities)
        self.passes = max(1, len(labels) // (self.num_identities * k))
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
        return self.passes * (self.num_identities // self.p_global)

    def __iter__(self):
        # every rank draws the whole global batch (cheap: indices only) so the random stream, and with
        # it every batch, does not depend on the number of processes; it keeps its own slice
        rng = np.random.default_rng([self.seed % 2**64, self.epoch])
        if self.views is None:
            pools = [(_Pool(g),) for g in self.groups]
            counts = (self.num_instances,)
        else:
            pools = [(_Pool(s), _Pool(d)) for s, d in self.views]
            counts = (1, self.num_instances - 1)
        start, stop = self.rank * self.p_local, (self.rank + 1) * self.p_local
        per_pass = self.num_identities // self.p_global
        for _ in range(self.passes):
            order = rng.permutation(self.num_identities)[:per_pass * self.p_global]
            for group in order.reshape(per_pass, self.p_global):
                batch = []
                for position, identity in enumerate(group.tolist()):
                    drawn = [i for pool, count in zip(pools[identity], counts) for i in pool.take(count, rng)]
                    if start <= position < stop:
                        batch += drawn
                yield batch
