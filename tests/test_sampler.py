"""datasets/sampler.py: P x K batch composition, epoch determinism, the release's length (the eight
datasets' batches per epoch from their published counts), rank sharding and the partial last batch."""
import math
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
    # passes = 100 images // (12 identities * K 4) = 2: 96 items, cut into batches of 12
    sampler = PKSampler(LABELS, batch_size=12, num_instances=4, seed=0)
    assert len(sampler) == 8 == len(epoch_batches(sampler, 0)) == len(epoch_batches(sampler, 5))
    # batches of 20: 96 items = 4 full batches and a partial one of 16 (the release's partial batch)
    sampler = PKSampler(LABELS, batch_size=20, num_instances=4)
    assert len(sampler) == 5 and [len(b) for b in epoch_batches(sampler, 0)] == [20, 20, 20, 20, 16]
    # fewer images than identities x K: still one pass, 12 x 16 = 192 items
    assert len(PKSampler(LABELS, batch_size=32, num_instances=16)) == 6


def published(images, identities, satellite=False):
    """Labels (and University-1652 views) of a training set with the published counts: `images`
    spread as evenly as possible over `identities` (only the totals matter for the length)."""
    per_id = np.full(identities, images // identities)
    per_id[:images % identities] += 1
    labels = np.repeat(np.arange(identities), per_id)
    if not satellite:
        return labels, None
    views = np.ones(images, dtype=np.int64)  # drone
    views[np.searchsorted(labels, np.arange(identities))] = 0  # the first image of every building: satellite
    return labels, views


# (images, identities, batch size, K, published satellite view?) of the training sets; batch and K of
# the release's commands; the expected lengths are the release's batches per epoch
RELEASE_EPOCHS = {
    "market1501": ((12_936, 751, 64, 4, False), 188),
    "dukemtmc": ((16_522, 702, 64, 4, False), 220),
    "msmt17": ((32_621, 1_041, 64, 4, False), 456),
    "veri776": ((37_778, 576, 64, 4, False), 576),
    "vehicleid": ((113_346, 13_164, 256, 4, False), 412),
    "car196": ((8_054, 98, 48, 6, False), 160),  # classes 1-98
    "cub200": ((5_864, 100, 48, 6, False), 113),  # classes 1-100
    "university1652": ((701 + 37_854, 701, 48, 6, True), 789),  # 701 satellite + 54 drone images a building
}


@pytest.mark.parametrize("name", sorted(RELEASE_EPOCHS))
def test_batches_per_epoch_of_the_release_datasets(name):
    (images, identities, batch_size, k, satellite), expected = RELEASE_EPOCHS[name]
    labels, views = published(images, identities, satellite)
    sampler = PKSampler(labels, batch_size, k, seed=0, views=views)
    assert len(sampler) == expected
    batches = epoch_batches(sampler, 0)
    assert len(batches) == expected and all(len(b) == batch_size for b in batches[:-1])
    passes = images // (identities * k)
    assert sum(map(len, batches)) == passes * identities * k
    if name == "market1501":  # the spec's worked example: 4 passes, 12,016 items, 188 batches
        assert (passes, sum(map(len, batches)), len(batches[-1])) == (4, 12_016, 48)
    if satellite:
        assert all(views[b[0]] == 0 and (views[b[1:k]] == 1).all() for b in batches[:3])


def test_batch_composition():
    k = 4
    sampler = PKSampler(LABELS, batch_size=12, num_instances=k, seed=1)
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        items = [i for batch in batches for i in batch]
        assert items == sampler.epoch_items()  # the batches cut the epoch's list in order
        for batch in batches:
            assert len(batch) == 12 and all(isinstance(i, int) for i in batch)
            for block in blocks(batch, k):
                labels = {LABELS[i] for i in block}
                assert len(labels) == 1  # K images of one identity, side by side
                label = labels.pop()
                assert {i for i in block} <= {i for i, lab in enumerate(LABELS) if lab == label}
                if SIZES[label] >= k:
                    assert len(set(block)) == k  # without replacement
        # each pass (12 identities x K = 48 items) shows every identity exactly once
        for start in (0, 48):
            seen = [LABELS[items[j]] for j in range(start, start + 48, k)]
            assert sorted(seen) == list(range(12))


def test_identities_with_fewer_than_k_images_are_drawn_with_replacement():
    sampler = PKSampler(LABELS, batch_size=12, num_instances=4, seed=3)
    blocks_of_0 = [block for epoch in range(20) for batch in epoch_batches(sampler, epoch)
                   for block in blocks(batch, 4) if LABELS[block[0]] == 0]  # identity 0: 2 images
    assert len(blocks_of_0) == 2 * 20  # once a pass
    assert all(set(block) <= {0, 1} for block in blocks_of_0)
    assert any(len(set(block)) == 1 for block in blocks_of_0)  # with replacement: sometimes one image 4 times


def test_each_pass_draws_afresh():
    """Identity 6 has 8 images = 2 passes x K 4; the passes draw independently, so over epochs the
    same image sometimes comes twice in an epoch (never twice within a pass)."""
    sampler = PKSampler(LABELS, batch_size=12, num_instances=4, seed=2)
    repeats = 0
    for epoch in range(10):
        drawn = [i for batch in epoch_batches(sampler, epoch) for i in batch if LABELS[i] == 6]
        assert len(drawn) == 8 and len(set(drawn[:4])) == 4 and len(set(drawn[4:])) == 4
        repeats += len(set(drawn)) < 8
    assert repeats >= 5  # P(no repeat) = 1 / C(8, 4) = 1/70 per epoch


def test_batches_straddle_passes():
    # batches of 20 over 2 passes of 48: the third batch holds the end of pass 1 and the start of pass 2
    sampler = PKSampler(LABELS, batch_size=20, num_instances=4, seed=5)
    twice = 0
    for epoch in range(20):
        batches = epoch_batches(sampler, epoch)
        items = sampler.epoch_items()
        assert [i for b in batches for i in b] == items and len(items) == 96
        assert batches[2] == items[40:60]
        ids = [LABELS[i] for i in batches[2][::4]]  # 2 identities of pass 1, then 3 of pass 2
        assert len(set(ids[:2])) == 2 and len(set(ids[2:])) == 3
        twice += len(set(ids)) < 5  # an identity at the end of pass 1 and at the start of pass 2
    assert twice > 0


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
    sampler = PKSampler(labels, batch_size=4, num_instances=2, seed=0)
    batches = epoch_batches(sampler, 0)
    assert len(batches) == len(sampler) == 10  # 40 // (5 * 2) = 4 passes of 10 items, batches of 4
    assert all(len({labels[i] for i in block}) == 1 for b in batches for block in blocks(b, 2))
    assert sorted(labels[i] for b in batches for i in b[::2]) == sorted([100, 107, 114, 121, 128] * 4)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_equal_shares_of_the_global_batch(world_size):
    k, batch_size = 2, 12
    single = epoch_batches(PKSampler(LABELS, batch_size, k, seed=4), 1)
    shards = [epoch_batches(PKSampler(LABELS, batch_size, k, seed=4, rank=r, world_size=world_size), 1)
              for r in range(world_size)]
    assert all(len(s) == len(single) for s in shards)
    for step, parts in enumerate(zip(*shards)):
        assert all(len(p) == batch_size // world_size for p in parts)
        for p in parts:  # whole identities of K images on each rank
            assert all(len({LABELS[i] for i in block}) == 1 for block in blocks(p, k))
        assert [i for p in parts for i in p] == single[step]  # together: the one-process batch


@pytest.mark.parametrize("world_size,batch_size,split", [
    (2, 12, [4, 4]),  # a last batch of 4 = 1 identity per rank: completed to 2 identities each
    (3, 12, [4, 4, 4]),  # 4 items over 3 ranks: completed to a full batch
    (2, 8, [4, 4]),  # the last batch of 8 splits as it is
])
def test_partial_last_batch_splits_evenly_over_the_ranks(world_size, batch_size, split):
    """10 identities x 5 images, K 2: 2 passes, 40 items; every rank runs the same number of steps
    with an equal share of at least 2 whole identities, also in the last batch."""
    labels = [i // 5 for i in range(50)]
    single = PKSampler(labels, batch_size, 2, seed=6)
    single.set_epoch(2)
    items = single.epoch_items()
    shards = [epoch_batches(PKSampler(labels, batch_size, 2, seed=6, rank=r, world_size=world_size), 2)
              for r in range(world_size)]
    assert {len(s) for s in shards} == {len(single)}
    for step in range(len(single) - 1):
        assert [i for s in shards for i in s[step]] == items[step * batch_size:(step + 1) * batch_size]
    last = [s[-1] for s in shards]
    assert [len(p) for p in last] == split
    rest = items[(len(single) - 1) * batch_size:]
    together = [i for p in last for i in p]
    assert together == (rest + items)[:sum(split)]  # the partial batch, completed from the epoch's start
    assert PKSampler(labels, batch_size, 2, rank=0, world_size=world_size).last_batch_size() == sum(split)
    for p in last:
        assert len(p) >= 2 * 2 and all(labels[a] == labels[b] for a, b in blocks(p, 2))


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
    passes = max(1, len(labels) // (6 * k))
    assert len(sampler) == math.ceil(passes * 6 * k / 8)
    batches = epoch_batches(sampler, 2)
    assert len(batches) == len(sampler)
    for batch in batches:
        for block in blocks(batch, k):
            assert len({labels[i] for i in block}) == 1
            assert views[block[0]] == 0 and [views[i] for i in block[1:]] == [1] * (k - 1)
            label = labels[block[0]]
            drones = {i for i, (lab, v) in enumerate(zip(labels, views)) if lab == label and v == 1}
            assert set(block[1:]) <= drones
            if len(drones) >= k - 1:
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
