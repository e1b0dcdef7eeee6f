"""datasets/sampler.py: P x K batch composition, epoch determinism, the release's length, rank sharding."""
from collections import Counter

import numpy as np
import pytest

from datasets.sampler import PKSampler

# 12 identities, 100 images: identity i has SIZES[i] images (two with fewer than K = 4)
SIZES = [2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 20]
LABELS = [label for label, n in enumerate(SIZES) for _ in range(n)]


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def blocks(batch, k):
    return [batch[i:i + k] for i in range(0, len(batch), k)]


def test_length_is_the_release_formula():
    # passes = 100 images // (12 identities * K 4) = 2; P = 12 // 4 = 3 -> 12 // 3 = 4 batches a pass
    sampler = PKSampler(LABELS, batch_size=12, num_instances=4, seed=0)
    assert len(sampler) == 8 == len(epoch_batches(sampler, 0)) == len(epoch_batches(sampler, 5))
    # P = 5: 12 identities give 2 full groups a pass (the last 2 identities of the pass are dropped)
    assert len(PKSampler(LABELS, batch_size=20, num_instances=4)) == 2 * 2
    # fewer images than identities x K: still one pass
    assert len(PKSampler(LABELS, batch_size=32, num_instances=16)) == 1 * 6


def test_batch_composition():
    k = 4
    sampler = PKSampler(LABELS, batch_size=12, num_instances=k, seed=1)
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        for batch in batches:
            assert len(batch) == 12 and all(isinstance(i, int) for i in batch)
            ids = []
            for block in blocks(batch, k):
                labels = {LABELS[i] for i in block}
                assert len(labels) == 1  # K images of one identity, side by side
                label = labels.pop()
                ids.append(label)
                if SIZES[label] >= k:
                    assert len(set(block)) == k  # without replacement
                else:
                    assert set(block) == {i for i, lab in enumerate(LABELS) if lab == label}  # all, then repeats
            assert len(set(ids)) == 3  # no identity twice in a batch
        # each pass (4 batches) shows every identity exactly once
        for start in (0, 4):
            seen = [LABELS[b[j]] for b in batches[start:start + 4] for j in range(0, 12, k)]
            assert sorted(seen) == list(range(12))


def test_passes_go_through_an_identitys_images_before_repeating():
    # identity 6 has 8 images = 2 passes x K 4: both passes together use each exactly once
    sampler = PKSampler(LABELS, batch_size=12, num_instances=4, seed=2)
    for epoch in range(4):
        drawn = [i for batch in epoch_batches(sampler, epoch) for i in batch if LABELS[i] == 6]
        assert sorted(drawn) == [i for i, lab in enumerate(LABELS) if lab == 6]


def test_deterministic_per_seed_and_epoch():
    a = PKSampler(LABELS, batch_size=12, num_instances=4, seed=7)
    b = PKSampler(LABELS, batch_size=12, num_instances=4, seed=7)
    first = epoch_batches(a, 3)
    assert first == list(a)  # iterating again repeats the epoch
    assert first == epoch_batches(b, 3)  # a fresh sampler (a resumed run) too
    assert epoch_batches(b, 0) == epoch_batches(a, 0)
    assert epoch_batches(a, 4) != first
    assert epoch_batches(PKSampler(LABELS, batch_size=12, num_instances=4, seed=8), 3) != first


def test_labels_need_not_be_contiguous():
    labels = [100 + 7 * (i % 5) for i in range(40)]
    batches = epoch_batches(PKSampler(labels, batch_size=4, num_instances=2, seed=0), 0)
    assert len(batches) == 4 * 2  # 40 // (5 * 2) = 4 passes, 5 // 2 = 2 batches a pass
    assert all(len({labels[i] for i in b}) == 2 for b in batches)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_disjoint_identities_of_the_global_batch(world_size):
    k, batch_size = 2, 12
    single = epoch_batches(PKSampler(LABELS, batch_size, k, seed=4), 1)
    shards = [epoch_batches(PKSampler(LABELS, batch_size, k, seed=4, rank=r, world_size=world_size), 1)
              for r in range(world_size)]
    assert all(len(s) == len(single) for s in shards)
    for step, parts in enumerate(zip(*shards)):
        assert all(len(p) == batch_size // world_size for p in parts)
        ids = [{LABELS[i] for i in p} for p in parts]
        assert all(len(s) == batch_size // world_size // k for s in ids)
        assert len(set().union(*ids)) == sum(len(s) for s in ids)  # no identity on two ranks
        assert [i for p in parts for i in p] == single[step]  # together: the one-process batch


def test_university_one_satellite_and_k_minus_one_drones():
    # identity i: one satellite image (camid 0) and 2 + i drone images (camid 1); identity 0 has
    # fewer drones than K - 1 = 3 (drawn with replacement); street images (camid 2) never drawn
    labels, views = [], []
    for label in range(6):
        for view in [0] + [1] * (2 + label) + [2]:
            labels.append(label)
            views.append(view)
    k = 4
    sampler = PKSampler(labels, batch_size=8, num_instances=k, seed=0, views=views)
    assert len(sampler) == max(1, len(labels) // (6 * k)) * 3
    batches = epoch_batches(sampler, 2)
    assert len(batches) == len(sampler)
    for batch in batches:
        for block in blocks(batch, k):
            assert len({labels[i] for i in block}) == 1
            assert views[block[0]] == 0 and [views[i] for i in block[1:]] == [1] * (k - 1)
            label = labels[block[0]]
            drones = {i for i, (lab, v) in enumerate(zip(labels, views)) if lab == label and v == 1}
            if len(drones) < k - 1:
                assert set(block[1:]) == drones  # all of them, then repeats
            else:
                assert len(set(block[1:])) == k - 1  # without replacement


def test_works_as_a_dataloader_batch_sampler():
    import torch
    from torch.utils.data import DataLoader
    sampler = PKSampler(LABELS, batch_size=8, num_instances=2, seed=0)
    loader = DataLoader(torch.arange(len(LABELS)), batch_sampler=sampler)
    assert [b.tolist() for b in loader] == epoch_batches(sampler, 0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=10, num_instances=4), r"batch_size 10 must be a multiple of num_instances \(K\) x world_size"),
    (dict(batch_size=8, num_instances=2, world_size=3), r"multiple of .* = 2 x 3 = 6"),
    (dict(batch_size=4, num_instances=4), "at least 2 identities per process"),
    (dict(batch_size=8, num_instances=4, world_size=2), "at least 2 identities per process"),
    (dict(batch_size=52, num_instances=4), "12 identities cannot fill a batch of P = batch_size // K = 52 // 4 = 13"),
    (dict(batch_size=8, num_instances=0), r"num_instances \(K\) must be a positive integer"),
    (dict(batch_size=8, num_instances=2, rank=2, world_size=2), r"rank must be an integer in 0..1"),
    (dict(batch_size=8, num_instances=2, views=[0, 1]), "one camid per item"),
    (dict(batch_size=8, num_instances=2, views=[1] * len(LABELS)), "identity 0 has 0 satellite"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PKSampler(LABELS, **kwargs)


def test_set_epoch_rejects_negative():
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        PKSampler(LABELS, batch_size=8, num_instances=2).set_epoch(-1)


def test_identity_frequency_is_uniform_over_an_epoch():
    # every identity appears `passes` times an epoch when P divides the number of identities
    sampler = PKSampler(LABELS, batch_size=12, num_instances=4, seed=9)
    counts = Counter(LABELS[b[j]] for b in epoch_batches(sampler, 0) for j in range(0, 12, 4))
    assert set(counts.values()) == {2} and len(counts) == 12
    np.testing.assert_array_equal(sorted(counts), np.arange(12))
