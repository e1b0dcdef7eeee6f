"""evaluation.rerank against a dense, loop-by-loop transcription of the published algorithm."""
import numpy as np
import pytest
import torch

from evaluation.metrics import evaluate_rank, evaluate_rank_blocks
from evaluation.rerank import re_ranking, re_ranking_blocks


def dense_reference(original_dist, query_num, k1=20, k2=6, lambda_value=0.3):
    """Zhong et al.'s re-ranking on the full (N, N) matrix of squared distances (before normalisation),
    written as the published code, with stable sorts so that ties are broken by index."""
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0)).astype(np.float32)
    all_num = original_dist.shape[0]
    V = np.zeros_like(original_dist, dtype=np.float32)
    initial_rank = np.argsort(original_dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0)) + 1
    for i in range(all_num):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        k_reciprocal = forward[np.where(backward == i)[0]]
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            c_forward = initial_rank[candidate, :half]
            c_backward = initial_rank[c_forward, :half]
            c_reciprocal = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_reciprocal, k_reciprocal)) > 2.0 / 3 * len(c_reciprocal):
                expansion = np.append(expansion, c_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V = np.stack([np.mean(V[initial_rank[i, :k2], :], axis=0) for i in range(all_num)])
    jaccard = np.zeros((query_num, all_num), dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(all_num, dtype=np.float32)
        for k in np.where(V[i, :] != 0)[0]:
            rows = np.where(V[:, k] != 0)[0]
            temp_min[rows] += np.minimum(V[i, k], V[rows, k])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist[:query_num] * lambda_value
    return final[:, query_num:]


def squared_distances(f):
    sq = (f * f).sum(1)
    return np.maximum((sq[:, None] + sq[None, :]) - 2 * (f @ f.T), 0).astype(np.float32)


def clustered_features(rng, num, dim, ids, noise, quantised=False):
    labels = rng.integers(0, ids, num)
    f = rng.standard_normal((ids, dim))[labels] + noise * rng.standard_normal((num, dim))
    if quantised:  # small integers: every product and sum below is exact in float32, whatever the order
        return np.round(f * 2).astype(np.float32), labels
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f.astype(np.float32), labels


@pytest.mark.parametrize("quantised", [False, True])
def test_matches_dense_reference(quantised):
    rng = np.random.default_rng(1 + quantised)
    f, labels = clustered_features(rng, 170, 12, ids=15, noise=0.7, quantised=quantised)
    Q = 40
    expected = dense_reference(squared_distances(f), Q)
    got = re_ranking(torch.from_numpy(f[:Q]), torch.from_numpy(f[Q:]))
    assert got.shape == (Q, 130) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    # the re-ranking changes the ranking (else this test could not tell it from the plain distance)
    assert (np.argsort(got, axis=1)[:, :5] != np.argsort(squared_distances(f)[:Q, Q:], axis=1)[:, :5]).any()


@pytest.mark.parametrize("k1,k2,lam", [(5, 1, 0.0), (7, 3, 0.5), (3, 2, 1.0)])
def test_other_parameters(k1, k2, lam):
    rng = np.random.default_rng(k1)
    f, _ = clustered_features(rng, 60, 8, ids=6, noise=0.8)
    expected = dense_reference(squared_distances(f), 20, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(re_ranking(f[:20], f[20:], k1=k1, k2=k2, lambda_value=lam), expected, atol=2e-6)


def test_blocks_equal_dense_and_feed_evaluation():
    rng = np.random.default_rng(4)
    f, labels = clustered_features(rng, 120, 10, ids=12, noise=0.7)
    cams = rng.integers(0, 3, 120)
    Q = 30
    dense = re_ranking(f[:Q], f[Q:])
    blocks = list(re_ranking_blocks(f[:Q], f[Q:], block=7))
    assert [len(b) for b in blocks] == [7, 7, 7, 7, 2]
    # products of another shape may round differently in the last bit
    np.testing.assert_allclose(np.concatenate(blocks), dense, rtol=0, atol=1e-6)
    ids = (labels[:Q], labels[Q:], cams[:Q], cams[Q:])
    a = evaluate_rank(np.concatenate(blocks), *ids, return_num_invalid=True)
    b = evaluate_rank_blocks(iter(blocks), *ids, return_num_invalid=True)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    c = evaluate_rank(dense, *ids)
    np.testing.assert_allclose(c[0], a[0], atol=1 / Q + 1e-12)
    assert abs(c[1] - a[1]) < 0.01


def test_fewer_items_than_neighbours():
    rng = np.random.default_rng(5)
    f, _ = clustered_features(rng, 12, 5, ids=3, noise=0.5)
    np.testing.assert_allclose(re_ranking(f[:4], f[4:]), dense_reference(squared_distances(f), 4), atol=2e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"k1": 0}, "k1 must be a positive integer"),
    ({"k2": 1.5}, "k2 must be a positive integer"),
    ({"lambda_value": 1.5}, r"lambda_value must be in \[0, 1\]"),
])
def test_bad_parameters(kwargs, message):
    f = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        re_ranking(f[:2], f[2:], **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="same feature length"):
        re_ranking(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
