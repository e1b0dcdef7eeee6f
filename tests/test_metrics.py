"""evaluation.metrics: hand-built rankings with known answers, and random cases against per-query
references (torchreid's plain AP, the release's trapezoid AP: benchmarks/eval.py's loops, which the
evaluation benchmark times)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from evaluation import metrics
from benchmarks.eval import release_loop as trapezoid_reference  # the references: one copy, shared with the benchmark
from benchmarks.eval import torchreid_evaluate_rank as torchreid_reference
from evaluation.metrics import (evaluate_rank, evaluate_rank_blocks, evaluate_rank_features, kmeans,
                           normalized_mutual_info, recall_at_k)


def random_case(rng, ties):
    Q, G = int(rng.integers(1, 30)), int(rng.integers(1, 400))
    ids, cams = int(rng.integers(1, 15)), int(rng.integers(1, 4))
    ids_q, ids_g = rng.integers(0, ids, Q), rng.integers(0, ids, G)
    if ties:  # few distinct values: many equal distances
        dist = rng.integers(0, int(rng.integers(1, 12)), (Q, G)).astype(np.float32) - 3
    else:
        dist = rng.standard_normal((Q, G))
    return dist, ids_q, ids_g, rng.integers(0, cams, Q), rng.integers(0, cams, G)


def valid_random_cases(rng, ties, reference, n=60):
    """[(case, reference(*case))] of n random cases, keeping those with a valid query (the cases
    without one are checked in their own test); most are valid."""
    cases = [(case, reference(*case)) for case in (random_case(rng, ties) for _ in range(n))]
    valid = [(case, expected) for case, expected in cases if expected is not None]
    assert len(valid) > 30
    return valid


def large_case(rng):
    """64 queries against 40,000 gallery items, float32 distances rounded to 3 decimals (with ties):
    several ranking steps and the binned path."""
    Q, G = 64, 40000
    qp, gp = rng.integers(0, 300, Q), rng.integers(0, 300, G)
    qc, gc = rng.integers(0, 6, Q), rng.integers(0, 6, G)
    dist = np.round(rng.standard_normal((Q, G)), 3).astype(np.float32)
    return dist, qp, gp, qc, gc


def check(got, expected, plain_length=None):
    cmc, mAP, left_out = got
    n = plain_length or len(expected[0])
    np.testing.assert_allclose(cmc[:n], expected[0][:n], rtol=0, atol=1e-6)
    assert mAP == pytest.approx(expected[1], rel=1e-12, abs=1e-15)
    assert left_out == expected[2]


# ---------------------------------------------------------------- hand-built rankings

def test_junk_distractor_and_both_ap_rules():
    # query id 1, camera 0. Sorted by distance: junk (same id and camera), wrong id, correct, distractor id 0, correct
    dist = np.array([[0.1, 0.2, 0.05, 0.4, 0.3]])
    g_pids, g_cams = np.array([2, 1, 1, 1, 0]), np.array([1, 1, 0, 2, 1])
    # after junk removal the correct items sit at ranks 1 and 3
    cmc, mAP = evaluate_rank(dist, [1], g_pids, [0], g_cams, max_rank=5, ap="plain")
    np.testing.assert_array_equal(cmc, [0, 1, 1, 1, 1])
    assert mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    _, mAP = evaluate_rank(dist, [1], g_pids, [0], g_cams, max_rank=5)
    assert mAP == pytest.approx(((0 / 1 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2) / 2)


def test_ties_keep_gallery_order():
    dist = np.full((1, 4), 0.5, dtype=np.float32)
    # gallery 0 is junk, 1 wrong, 2 and 3 correct: equal distances rank them 1, 2 after junk removal
    cmc, mAP = evaluate_rank(dist, [1], [1, 2, 1, 1], [0], [0, 1, 1, 2], max_rank=3, ap="plain")
    np.testing.assert_array_equal(cmc, [0, 1, 1])
    assert mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    _, mAP = evaluate_rank(dist, [1], [1, 2, 1, 1], [0], [0, 1, 1, 2], max_rank=3)
    assert mAP == pytest.approx(((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    # -0.0 equals 0.0: the wrong item at index 0 still comes first
    cmc, mAP = evaluate_rank(np.array([[0.0, -0.0]]), [1], [2, 1], [0], [1, 1], max_rank=2, ap="plain")
    np.testing.assert_array_equal(cmc, [0, 1])
    assert mAP == 0.5


def test_query_without_match_is_left_out_and_counted():
    dist = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3]])
    # query 0 (id 5, camera 0) only has a same-camera item: left out; query 1 ranks its match first
    cmc, mAP, left_out = evaluate_rank(dist, [5, 7], [5, 7, 9], [0, 0], [0, 1, 1], max_rank=3,
                                       return_num_invalid=True)
    np.testing.assert_array_equal(cmc, [0, 1, 1])
    assert (mAP, left_out) == (pytest.approx((0 / 1 + 1 / 2) / 2), 1)
    cmc2, mAP2 = evaluate_rank(dist, [5, 7], [5, 7, 9], [0, 0], [0, 1, 1], max_rank=3)
    np.testing.assert_array_equal(cmc, cmc2)
    assert mAP2 == mAP


def minp_reference(distmat, q_pids, g_pids, q_camids, g_camids):
    """fast-reid's evaluate_rank, INP part, one query at a time: after junk removal, INP =
    (number of correct items) / (1-based rank of the hardest correct item); mean over valid queries."""
    inps = []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        raw_cmc = (g_pids[order] == q_pids[q])[keep].astype(np.int64)
        if not raw_cmc.any():
            continue
        pos_max_idx = np.max(np.where(raw_cmc == 1))
        inps.append(raw_cmc.cumsum()[pos_max_idx] / (pos_max_idx + 1.0))
    return float(np.mean(inps)) if inps else None


def test_minp_hand_computed():
    # the query of test_junk_distractor_and_both_ap_rules: correct items at 0-based ranks 1 and 3 after
    # junk removal, so the hardest sits at rank 4 (1-based) and INP = 2 / 4
    dist = np.array([[0.1, 0.2, 0.05, 0.4, 0.3]])
    g_pids, g_cams = np.array([2, 1, 1, 1, 0]), np.array([1, 1, 0, 2, 1])
    cmc, mAP, mINP = evaluate_rank(dist, [1], g_pids, [0], g_cams, max_rank=5, ap="plain", return_minp=True)
    assert mINP == 0.5 and mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    # two more queries: id 2 (camera 0) has its single correct item first: INP 1; id 7 has none: left out.
    # query id 1 at camera 2 sees gallery 3 as junk; its correct items, gallery 2 and 1, rank 0 and 3: INP 2 / 4
    dist = np.vstack([dist, [[0.0, 0.5, 0.6, 0.7, 0.8]], [[0.3, 0.9, 0.1, 0.0, 0.2]], [[0.1] * 5]])
    q_pids, q_cams = [1, 2, 1, 7], [0, 0, 2, 0]
    got = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5, return_num_invalid=True,
                        return_minp=True)
    assert len(got) == 4 and got[3] == 1
    assert got[2] == pytest.approx((1 / 2 + 1 + 2 / 4) / 3, abs=1e-15)
    assert got[2] == pytest.approx(minp_reference(dist, np.array(q_pids), g_pids, np.array(q_cams), g_cams))
    # the default return values are unchanged
    assert len(evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)) == 2


@pytest.mark.parametrize("ties", [False, True])
def test_minp_random_against_reference(ties):
    rng = np.random.default_rng(20 + ties)
    for (dist, qp, gp, qc, gc), expected in valid_random_cases(rng, ties, minp_reference):
        for ap in ("trapezoid", "plain"):
            cmc, mAP, mINP, left_out = evaluate_rank(dist, qp, gp, qc, gc, ap=ap, return_minp=True,
                                                     return_num_invalid=True)
            assert mINP == pytest.approx(expected, rel=1e-12, abs=1e-15)
            check((cmc, mAP, left_out), evaluate_rank(dist, qp, gp, qc, gc, ap=ap, return_num_invalid=True))
        blocks = [dist[s:s + 7] for s in range(0, len(dist), 7)]
        assert evaluate_rank_blocks(blocks, qp, gp, qc, gc, return_minp=True)[2] == pytest.approx(expected, rel=1e-12)
    dist, qp, gp, qc, gc = large_case(rng)
    assert evaluate_rank(dist, qp, gp, qc, gc, return_minp=True)[2] == pytest.approx(
        minp_reference(dist, qp, gp, qc, gc), rel=1e-12)


def test_single_gallery_item_and_long_cmc():
    cmc, mAP = evaluate_rank(np.array([[1.0], [2.0]]), [3, 3], [3], [0, 1], [2], max_rank=10)
    assert cmc.shape == (10,) and (cmc == 1).all() and mAP == 1.0


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="none of the 2 queries has a correct gallery item"):
        evaluate_rank(np.zeros((2, 2)), [1, 2], [1, 3], [0, 0], [0, 1])


def test_infinite_distances():
    # +inf rows go through the sorting fallback; the answer is the same as for large finite values
    dist = np.array([[np.inf, 1.0, np.inf, -np.inf], [2.0, np.inf, 0.0, 1.0]])
    finite = np.array([[9.0, 1.0, 9.0, -9.0], [2.0, 9.0, 0.0, 1.0]])
    ids = ([1, 2], [1, 1, 2, 2], [0, 0], [1, 1, 1, 1])
    check(evaluate_rank(dist, *ids, return_num_invalid=True), evaluate_rank(finite, *ids, return_num_invalid=True))
    assert evaluate_rank(dist, *ids, max_rank=4, ap="plain")[1] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)


# ---------------------------------------------------------------- random cases against the references

@pytest.mark.parametrize("ties", [False, True])
def test_random_against_references(ties):
    rng = np.random.default_rng(10 + ties)
    reference = lambda *case: trapezoid_reference(*case, max_rank=20)  # noqa: E731
    for (dist, qp, gp, qc, gc), expected in valid_random_cases(rng, ties, reference):
        check(evaluate_rank(dist, qp, gp, qc, gc, max_rank=20, return_num_invalid=True), expected)
        tr = torchreid_reference(dist, qp, gp, qc, gc, max_rank=20)
        check(evaluate_rank(dist, qp, gp, qc, gc, max_rank=20, ap="plain", return_num_invalid=True), tr,
              plain_length=len(tr[0]))


def test_large_gallery_against_reference():
    # many bins, several ranking steps, float32 and torch input
    dist, qp, gp, qc, gc = large_case(np.random.default_rng(2))
    expected = trapezoid_reference(dist, qp, gp, qc, gc)
    check(evaluate_rank(torch.from_numpy(dist), torch.from_numpy(qp), gp, qc, gc, return_num_invalid=True), expected)


# ---------------------------------------------------------------- feature path

def unit_rows(rng, n, d=6):
    """(n, d) float32 rows of norm exactly 1: four entries +-0.5 or one entry +-1. Every dot product
    is a multiple of 1/4, computed exactly in any order, and normalising them changes nothing: many ties."""
    f = np.zeros((n, d), dtype=np.float32)
    for row in f:
        if rng.random() < 0.7:
            row[rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        else:
            row[rng.integers(d)] = rng.choice([-1.0, 1.0])
    return f


def test_features_equal_matrix_path():
    rng = np.random.default_rng(3)
    qf, gf = unit_rows(rng, 37), unit_rows(rng, 301)
    gf[50:60] = gf[40:50]  # duplicated gallery rows
    qp, gp = rng.integers(0, 20, 37), rng.integers(0, 20, 301)
    qc, gc = rng.integers(0, 3, 37), rng.integers(0, 3, 301)
    for ap in ("trapezoid", "plain"):
        expected = evaluate_rank(-(qf @ gf.T), qp, gp, qc, gc, ap=ap, return_num_invalid=True)
        check(expected, (trapezoid_reference if ap == "trapezoid" else torchreid_reference)(
            -(qf @ gf.T), qp, gp, qc, gc), plain_length=50 if ap == "trapezoid" else None)
        for block in (1, 5, 37, None):
            got = evaluate_rank_features(torch.from_numpy(qf), gf, qp, gp, qc, gc, ap=ap, block=block,
                                         return_num_invalid=True)
            np.testing.assert_array_equal(got[0], expected[0])
            assert got[1:] == expected[1:]
            minp = evaluate_rank_features(qf, gf, qp, gp, qc, gc, ap=ap, block=block, return_minp=True)[2]
            assert minp == pytest.approx(minp_reference(-(qf @ gf.T), qp, gp, qc, gc), rel=1e-12)
    blocks = (-(qf[s:s + 10] @ gf.T) for s in range(0, 37, 10))
    got = evaluate_rank_blocks(blocks, qp, gp, qc, gc, return_num_invalid=True)
    expected = evaluate_rank(-(qf @ gf.T), qp, gp, qc, gc, return_num_invalid=True)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]


# ---------------------------------------------------------------- errors a caller can make

@pytest.mark.parametrize("kwargs,message", [
    ({"ap": "mean"}, r"ap must be one of \('trapezoid', 'plain'\), got 'mean'"),
    ({"max_rank": 0}, "max_rank must be a positive integer, got 0"),
    ({"distmat": np.zeros((2, 3, 1))}, r"distmat must be 2-d \(queries x gallery\)"),
    ({"distmat": np.zeros((3, 3))}, r"q_pids must be a 1-d array of length 3, got shape \(2,\)"),
    ({"g_camids": [0, 1]}, r"g_camids must be a 1-d array of length 3"),
    ({"q_pids": [0.5, 1.0]}, "q_pids must hold integers, got dtype float64"),
    ({"distmat": np.array([[0, np.nan, 1], [0, 1, 2]])}, "distances contain NaN"),
])
def test_errors(kwargs, message):
    args = dict(distmat=np.zeros((2, 3)), q_pids=[1, 2], g_pids=[1, 2, 3], q_camids=[0, 0], g_camids=[1, 1, 1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_rank(**args)


def test_features_are_normalised_inside():
    """Raw features rank by cosine similarity: rows scaled by powers of two (so that normalising
    recovers the unit rows exactly) give the numbers of the unit rows, not of their dot products."""
    rng = np.random.default_rng(8)
    qf, gf = unit_rows(rng, 40), unit_rows(rng, 200)
    qp, gp = rng.integers(0, 10, 40), rng.integers(0, 10, 200)
    qc, gc = rng.integers(0, 3, 40), rng.integers(0, 3, 200)
    scale = 2.0 ** rng.integers(-3, 4, (200, 1))
    raw_q, raw_g = qf * 2.0 ** rng.integers(-3, 4, (40, 1)), (gf * scale).astype(np.float32)
    expected = evaluate_rank(-(qf @ gf.T), qp, gp, qc, gc, return_num_invalid=True, return_minp=True)
    got = evaluate_rank_features(raw_q, raw_g, qp, gp, qc, gc, return_num_invalid=True, return_minp=True)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]
    dot = evaluate_rank(-(raw_q @ raw_g.T), qp, gp, qc, gc, return_num_invalid=True, return_minp=True)
    assert dot[1] != expected[1]  # the raw dot product ranks differently: what the old code returned
    labels = np.concatenate([qp, gp])
    f = np.concatenate([qf, gf])
    raw = np.concatenate([raw_q, raw_g])
    assert recall_at_k(raw, labels) == recall_at_k(f, labels) == recall_reference(f, labels, (1, 2, 4, 8))
    assert recall_reference(raw, labels, (1, 2, 4, 8)) != recall_at_k(f, labels)
    # integer features are read as floats and normalised too
    np.testing.assert_array_equal(evaluate_rank_features((qf * 2).astype(np.int64), raw_g, qp, gp, qc, gc)[0],
                                  expected[0])


def test_feature_errors():
    f = np.eye(3, dtype=np.float32)
    zero = np.eye(3, dtype=np.float32)
    zero[1] = 0
    with pytest.raises(ValueError, match="gf row 1 is all zeros: its cosine similarity to anything is undefined"):
        evaluate_rank_features(f, zero, [0] * 3, [0] * 3, [0] * 3, [1] * 3)
    with pytest.raises(ValueError, match="qf row 1 is all zeros"):
        evaluate_rank_features(zero, f, [0] * 3, [0] * 3, [0] * 3, [1] * 3)
    with pytest.raises(ValueError, match="features row 1 is all zeros"):
        recall_at_k(zero, [0, 1, 0])
    with pytest.raises(ValueError, match="same feature length"):
        evaluate_rank_features(f, np.eye(4, dtype=np.float32), [0] * 3, [0] * 4, [0] * 3, [1] * 4)
    with pytest.raises(ValueError, match="block must be a positive integer"):
        evaluate_rank_features(f, f, [0] * 3, [0] * 3, [0] * 3, [1] * 3, block=0)
    with pytest.raises(ValueError, match=r"distance blocks must be \(B, 3\)"):
        evaluate_rank_blocks([np.zeros((3, 4))], [0] * 3, [0] * 3, [0] * 3, [1] * 3)
    with pytest.raises(ValueError, match="distance blocks cover 2 queries, expected 3"):
        evaluate_rank_blocks([np.zeros((2, 3))], [0] * 3, [0] * 3, [0] * 3, [1] * 3)


# ---------------------------------------------------------------- Recall@K

def recall_reference(f, labels, ks):
    sim = f @ f.T
    hits = {k: 0 for k in ks}
    for i in range(len(f)):
        others = np.delete(np.arange(len(f)), i)
        order = others[np.argsort(-sim[i, others], kind="stable")]
        for k in ks:
            hits[k] += bool((labels[order[:k]] == labels[i]).any())
    return {k: hits[k] / len(f) for k in ks}


def test_recall_with_duplicates():
    # items 0 and 1 are the same image with different labels; item 2 (label 0) is a bit further.
    # Assuming the query ranks first would drop item 1 or item 0 from the other's list.
    f = np.array([[1, 0], [1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    # item 0: 1 (wrong), 2 (right) -> hit at 2; item 1: 0 (wrong), 2 (wrong), 3 (right) -> hit at 3;
    # item 2: 0 (right) -> hit at 1; item 3: 2 (wrong), 0 or 1 -> tie 0.0 vs 0.0 keeps index 0 (wrong), 1 (right)
    assert recall_at_k(f, labels, ks=(1, 2, 3, 4)) == {1: 1 / 4, 2: 2 / 4, 3: 4 / 4, 4: 4 / 4}


def test_recall_random_against_reference():
    rng = np.random.default_rng(4)
    f = unit_rows(rng, 120, 5)  # exact products with ties
    f[60:70] = f[0:10]
    labels = rng.integers(0, 8, 120)
    for block in (None, 7):
        assert recall_at_k(f, labels, ks=(1, 2, 4, 8), block=block) == recall_reference(f, labels, (1, 2, 4, 8))
    with pytest.raises(ValueError, match="ks must be positive integers"):
        recall_at_k(f, labels, ks=(0, 1))


# ---------------------------------------------------------------- NMI and k-means

def test_nmi_equals_sklearn():
    rng = np.random.default_rng(5)
    cases = [(rng.integers(0, a, n), rng.integers(0, b, n)) for n, a, b in
             [(50, 3, 4), (1000, 20, 20), (7, 7, 2), (300, 100, 5), (40, 1, 3)]]
    labels = rng.integers(0, 10, 200)
    cases += [(labels, labels), (labels, (labels * 7 + 3) % 10), ([0] * 5, [4] * 5), ([], []),
              (np.arange(30), np.arange(30)), (np.arange(30), np.zeros(30, int)), (["a", "b", "b"], [1, 1, 2])]
    for a, b in cases:
        assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    with pytest.raises(ValueError, match="same length"):
        normalized_mutual_info([0, 1], [0])


def test_kmeans_plus_plus_deterministic_and_finds_clusters():
    rng = np.random.default_rng(6)
    centres = 10 * rng.standard_normal((8, 16))
    truth = np.repeat(np.arange(8), 25)
    x = (centres[truth] + rng.standard_normal((200, 16))).astype(np.float32)
    a = kmeans(x, 8, seed=0, method="kmeans++")
    assert a.dtype == np.int64 and a.shape == (200,)
    np.testing.assert_array_equal(a, kmeans(torch.from_numpy(x), 8, seed=0, method="kmeans++"))
    assert normalized_mutual_info(truth, a) == pytest.approx(1.0)
    # a harder case: the result depends on the seed only, and is a proper partition into k clusters
    y = rng.standard_normal((300, 4)).astype(np.float32)
    runs = [kmeans(y, 12, seed=s, method="kmeans++") for s in (1, 1, 2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert len(np.unique(runs[0])) == 12
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 300\]"):
        kmeans(y, 301)
    with pytest.raises(ValueError, match=r"method must be one of \('release', 'kmeans\+\+'\), got 'faiss'"):
        kmeans(y, 3, method="faiss")
    with pytest.raises(ValueError, match="max_iter must be a non-negative integer or None, got -1"):
        kmeans(y, 3, max_iter=-1)


def clustered(seed, k=40, d=64):
    """L2-normalised features of k classes of 5..119 images, some classes tight: random initial
    points often fall two to a class, so the release's k-means meets empty clusters."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 120, k)
    centres = rng.standard_normal((k, d)) * np.where(rng.random(k) < 0.3, 0.3, 1.0)[:, None]
    truth = np.repeat(np.arange(k), sizes)
    x = centres[truth] + 0.25 * rng.standard_normal((len(truth), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def test_release_kmeans_initial_points_are_faiss_draws():
    # faiss 1.15.1, Kmeans(16, 10, niter=0, seed=1234) on 500 points keeps these rows as its centroids
    # (rand_perm with seed 1235: std::mt19937, i + mt() % (n - i))
    assert metrics._faiss_initial_points(500, 10, 1235) == [83, 148, 278, 240, 279, 82, 483, 347, 385, 313]
    assert metrics._faiss_initial_points(500, 4, 2) == [348, 17, 499, 75]  # seed 1 -> 2
    assert sorted(metrics._faiss_initial_points(6, 6, 9)) == list(range(6))  # distinct points


def lloyd_reference(x, k, start, iterations):
    """Plain Lloyd in float64 from the rows `start`: exactly `iterations` updates, then nearest centroid."""
    x = x.astype(np.float64)
    c = x[start]
    for _ in range(iterations):
        labels = ((x[:, None, :] - c[None]) ** 2).sum(2).argmin(1)
        assert len(np.unique(labels)) == k  # this reference has no empty-cluster rule
        c = np.stack([x[labels == j].mean(0) for j in range(k)])
    return ((x[:, None, :] - c[None]) ** 2).sum(2).argmin(1)


def test_release_kmeans_is_20_lloyd_iterations_from_random_points():
    rng = np.random.default_rng(7)
    centres = 3 * rng.standard_normal((6, 8))
    x = (centres[np.repeat(np.arange(6), 40)] + rng.standard_normal((240, 8))).astype(np.float32)
    start = metrics._faiss_initial_points(240, 6, 1235)
    np.testing.assert_array_equal(kmeans(x, 6), lloyd_reference(x, 6, start, 20))  # the defaults: seed 1234
    np.testing.assert_array_equal(kmeans(x, 6, seed=1234, method="release"), kmeans(x, 6))
    # no convergence test: a fixed number of iterations (0 = nearest initial point)
    for iterations in (0, 1, 3):
        np.testing.assert_array_equal(kmeans(x, 6, max_iter=iterations), lloyd_reference(x, 6, start, iterations))
    assert not np.array_equal(kmeans(x, 6, max_iter=0), kmeans(x, 6))


def test_release_kmeans_equals_faiss(monkeypatch):
    """The oracle (dev-only): faiss.Kmeans(d, k, niter=20, seed=s), no subsampling, then each point
    to its nearest centroid. Empty clusters occur and are split as faiss splits them."""
    faiss = pytest.importorskip("faiss")
    x, truth = clustered(3)
    k = int(truth.max()) + 1
    splits = []
    split = metrics._split_empty_clusters
    monkeypatch.setattr(metrics, "_split_empty_clusters",
                        lambda c, counts, n: splits.append(int((counts == 0).sum())) or split(c, counts, n))
    ours, theirs = [], []
    for seed in (1234, 0, 1, 2, 3):
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, max_points_per_centroid=10 ** 7)
        km.train(x)
        expected = km.index.search(x, 1)[1][:, 0]
        got = kmeans(x, k, seed=seed)
        assert (got == expected).mean() == 1.0, seed
        ours.append(normalized_mutual_info(truth, got))
        theirs.append(normalized_mutual_info(truth, expected))
    assert sum(splits) >= 5  # the empty-cluster rule ran
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.01
    assert np.std(theirs) > 0.003  # the seed matters: the NMI is the seeded procedure's, not k-means' optimum
