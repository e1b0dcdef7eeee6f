"""Retrieval metrics: CMC, mAP and mINP for re-identification, Recall@K, k-means and NMI for fine-grained retrieval.

Ranking rule (every function here): gallery items are ranked by ascending distance, and equal
distances keep gallery order, exactly as `np.argsort(row, kind="stable")` orders a distance row
(-0.0 and 0.0 are equal). The feature-based functions (`evaluate_rank_features`, `recall_at_k`)
rank by cosine similarity: they L2-normalise every feature row themselves (F.normalize; a row of
norm 0 is an error), so raw features give the numbers of their normalised versions instead of a
silently different dot-product ranking. They then rank by descending dot product, the distance
`-(q @ g)`: the negation is exact, so for features that are already normalised exactly (the
normalisation is then a no-op, e.g. rows of +-0.5 and 0 as in the tests) `evaluate_rank_features(qf,
gf, ...)` gives the same numbers as `evaluate_rank(-(qf @ gf.T), ...)` whenever the two matrix
products agree bit for bit. For float features normalised elsewhere, normalising again and a
BLAS's blockwise rounding can only swap items whose similarities differ by about 1e-7.

Re-identification protocol (torchreid's): a gallery item with the query's id and camera is junk
and removed from the ranking; one with the query's id from another camera is correct; everything
else (other ids, distractors such as id 0) is wrong. A query without any correct gallery item is
left out of CMC and mAP; `return_num_invalid=True` adds the number left out to the result.

Average precision, with the n correct items at 0-based ranks r_0 < ... < r_{n-1} after junk removal:
- "plain" (torchreid, fast-reid): AP = (1/n) * sum_i (i + 1) / (r_i + 1)
- "trapezoid" (the release's numbers): AP = (1/n) * sum_i (i / r_i + (i + 1) / (r_i + 1)) / 2,
  with i / r_i taken as 1 when r_i = 0.
CMC at k is the share of (kept) queries whose first correct item has rank < k. The curve always has
`max_rank` entries; past the end of a short gallery it stays at 1 (torchreid shortens it instead).
mINP (fast-reid's, Ye et al. 2021): a query's inverse negative penalty is INP = n / (r_{n-1} + 1), the
share of correct items among those ranked up to the hardest correct one; mINP is its mean over the
kept queries (`return_minp=True`).

How it is fast without a per-query loop: only the positions of each query's own id in the ranking
matter. For a block of queries, every distance is put into one of G/4 (at most 16,384) equal-width
bins of its row (a monotone map), a per-row histogram counts what lies in lower bins, and the few
entries sharing a bin with an item of the query's id are compared exactly. No row is ever sorted;
the block's distances are read about ten times by vectorised numpy operations (one thread, so it
does not fight other processes for cores). Rows holding +-inf fall back to a stable sort.
"""
import numpy as np
import torch

from utils.checks import is_positive_int, positive_int

AP_MODES = ("trapezoid", "plain")
# Distance entries per ranking step; keeps the temporaries of one step (~10 bytes per entry) in cache.
_RANK_ELEMENTS = 1 << 21
# Distance entries per matrix product of the feature path (float32: 256 MB).
_MATMUL_ELEMENTS = 1 << 26


def _tensor(x, name):
    """A tensor view of `x` (numpy array, tensor or sequence) without copying where possible."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name}: cannot read as a numeric array ({err})") from None


def _ids(x, name, length):
    """`x` as an int64 numpy array of the given length."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1 or len(a) != length:
        raise ValueError(f"{name} must be a 1-d array of length {length}, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _check_ap(ap):
    if ap not in AP_MODES:
        raise ValueError(f"ap must be one of {AP_MODES}, got {ap!r}")


def _check_max_rank(max_rank):
    positive_int("max_rank", max_rank)


def _count_before_sorted(d, rows, cols):
    """Exact fallback: position of d[rows, cols] in the stable ascending order of its row."""
    order = np.argsort(d, axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(d.shape[1]), axis=1)
    return position[rows, cols]


def _count_before(d, rows, cols, lo, hi, num_bins):
    """For each pair (rows[j], cols[j]): how many entries of row rows[j] of `d` rank before
    d[rows[j], cols[j]] (smaller value, or equal value in a smaller column).

    `lo`, `hi`: finite row minima and maxima of `d`. Any monotone non-decreasing map from a value to
    a bin keeps this exact: entries in lower bins are smaller, entries in higher bins larger, and
    entries in the same bin as a pair are compared directly.
    """
    B, G = d.shape
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = np.nan_to_num(num_bins / (hi.astype(np.float64) - lo), nan=0.0, posinf=0.0)
    t = np.subtract(d, lo[:, None])
    np.multiply(t, np.minimum(scale, 1e30).astype(d.dtype)[:, None], out=t)
    np.minimum(t, num_bins - 1, out=t)
    # row offsets are exact in float32 as B * num_bins < 2**24; rounding keeps the map monotone
    np.add(t, (np.arange(B) * num_bins).astype(d.dtype)[:, None], out=t)
    flat = t.astype(np.int32).ravel()  # (B * G,) bin + row offset; truncation is floor as t >= 0
    del t
    hist = np.bincount(flat, minlength=B * num_bins)
    below = np.cumsum(hist) - hist  # entries in lower bins of the row and in all earlier rows
    pair_bin = flat[rows * G + cols]
    count = below[pair_bin] - below[rows * num_bins]
    # entries sharing a bin with some pair, grouped by bin (nonzero gives row-major order)
    marked = np.zeros(B * num_bins, dtype=bool)
    marked[pair_bin] = True
    entry = np.flatnonzero(np.take(marked, flat))
    entry_bin = flat[entry]
    order = np.argsort(entry_bin, kind="stable")
    entry, entry_bin = entry[order], entry_bin[order]
    start = np.searchsorted(entry_bin, pair_bin)
    n = np.searchsorted(entry_bin, pair_bin, side="right") - start
    pair = np.repeat(np.arange(len(pair_bin)), n)
    e = entry[start[pair] + np.arange(len(pair)) - (np.cumsum(n) - n)[pair]]
    ed, pd = d.ravel()[e], d[rows, cols][pair]
    less = (ed < pd) | ((ed == pd) & (e - rows[pair] * G < cols[pair]))
    return count + np.bincount(pair[less], minlength=len(pair_bin))


def _num_bins(G):
    return int(np.clip(G // 4, 16, 1 << 14))


def _rank_block(d, q_pids, q_camids, gallery, ap):
    """First correct rank (-1 when none), AP and INP (0 when none) of each query (row) of `d` (numpy, float).

    `gallery`: (order, sorted pids, camids) from `_gallery_index`.
    """
    B, G = d.shape
    g_order, g_sorted, g_camids = gallery
    # every gallery item of the query's id: rows ascending, gallery index ascending within a row
    start = np.searchsorted(g_sorted, q_pids)
    count = np.searchsorted(g_sorted, q_pids, side="right") - start
    rows = np.repeat(np.arange(B), count)
    cols = g_order[start[rows] + np.arange(len(rows)) - (np.cumsum(count) - count)[rows]]

    lo, hi = d.min(1), d.max(1)
    bad = np.isnan(lo) | np.isnan(hi)
    if bad.any():
        raise ValueError(f"distances contain NaN (row {int(np.flatnonzero(bad)[0])} of a block); "
                         "use finite values or +-inf")
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(hi.astype(np.float64) - lo).all()  # no +-inf, no float64 range overflow
    if not finite:
        position = _count_before_sorted(d, rows, cols)
    else:
        position = _count_before(d, rows, cols, lo, hi, _num_bins(G))

    # walk each query's items in ranking order
    order = np.argsort(rows * G + position)
    rows, position = rows[order], position[order]
    junk = g_camids[cols[order]] == q_camids[rows]
    starts = np.searchsorted(rows, rows)  # first item of each item's row
    junk_before = np.cumsum(junk) - junk
    junk_before -= junk_before[starts]
    good = ~junk
    good_before = np.cumsum(good) - good
    good_before -= good_before[starts]
    r = (position - junk_before)[good]  # rank after junk removal
    i = good_before[good]  # correct items ranked before
    rg = rows[good]
    n_good = np.bincount(rg, minlength=B)
    first_rank = np.full(B, -1, dtype=np.int64)
    first_rank[rg[i == 0]] = r[i == 0]
    # hardest correct item: the last of its row (rows ascending, ranks ascending within a row)
    last_rank = np.zeros(B, dtype=np.int64)
    has_good = n_good > 0
    last_rank[has_good] = r[np.searchsorted(rg, np.flatnonzero(has_good), side="right") - 1]
    inp = np.where(has_good, n_good / (last_rank + 1), 0.0)
    precision = (i + 1) / (r + 1)
    if ap == "trapezoid":
        previous = np.where(r == 0, 1.0, i / np.maximum(r, 1))
        precision = (previous + precision) / 2
    return first_rank, np.bincount(rg, weights=precision, minlength=B) / np.maximum(n_good, 1), inp


def _gallery_index(g_pids, g_camids):
    g_order = np.argsort(g_pids, kind="stable")
    return g_order, g_pids[g_order], g_camids


def _summarise(stats, max_rank, return_num_invalid, return_minp):
    first_rank, ap, inp = stats
    valid = first_rank >= 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(f"none of the {len(first_rank)} queries has a correct gallery item (same id, other "
                         "camera): CMC and mAP are undefined; check the query/gallery ids and cameras")
    ranks = np.minimum(first_rank[valid], max_rank)
    cmc = np.cumsum(np.bincount(ranks, minlength=max_rank + 1)[:max_rank]) / num_valid
    result = (cmc, float(ap[valid].sum()) / num_valid)
    if return_minp:
        result += (float(inp[valid].sum()) / num_valid,)
    return result + (len(first_rank) - num_valid,) if return_num_invalid else result


def _numpy(block):
    if isinstance(block, torch.Tensor):
        block = block.detach()
        if block.dtype not in (torch.float32, torch.float64):  # float16, bfloat16, integers, bool
            block = block.double() if block.dtype in (torch.int32, torch.int64) else block.float()
        block = block.cpu().numpy()
    block = np.asarray(block)
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float64 if block.dtype.itemsize > 4 or block.dtype.kind in "iu" else np.float32)
    return block


def _rank_stats(distance_blocks, q_pids, q_camids, g_pids, g_camids, ap):
    """(first correct rank, AP, INP) of every query; `distance_blocks` yields (B, G) blocks covering the queries."""
    gallery = _gallery_index(g_pids, g_camids)
    first_rank, aps, inps, done = [], [], [], 0
    for block in distance_blocks:
        block = _numpy(block)
        # rows per step; B * bins stays far below 2**24, where float32 row offsets stop being exact
        step = max(1, min(_RANK_ELEMENTS // max(block.shape[1], 1), (1 << 22) // _num_bins(block.shape[1])))
        for s in range(0, block.shape[0], step):
            d = block[s:s + step] + 0  # own copy; also turns -0.0 into 0.0
            f, a, n = _rank_block(d, q_pids[done:done + len(d)], q_camids[done:done + len(d)], gallery, ap)
            first_rank.append(f)
            aps.append(a)
            inps.append(n)
            done += len(d)
    if done != len(q_pids):
        raise ValueError(f"distance blocks cover {done} queries, expected {len(q_pids)}")
    if not first_rank:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
    return np.concatenate(first_rank), np.concatenate(aps), np.concatenate(inps)


def _distmat(distmat):
    d = distmat if isinstance(distmat, (np.ndarray, torch.Tensor)) else np.asarray(distmat)
    if d.ndim != 2:
        raise ValueError(f"distmat must be 2-d (queries x gallery), got shape {tuple(d.shape)}")
    if isinstance(d, np.ndarray) and d.dtype.kind not in "fiub":
        raise ValueError(f"distmat must hold numbers, got dtype {d.dtype}")
    return d


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap="trapezoid",
                  return_num_invalid=False, return_minp=False):
    """CMC and mAP (and mINP) of a query x gallery distance matrix (numpy array or tensor; smaller = closer).

    Returns `(cmc, mAP)`: cmc a float64 array of length `max_rank` (cmc[0] is top-1), mAP a float;
    `return_minp=True` appends mINP (a float), `return_num_invalid=True` then appends num_invalid,
    the number of queries left out for having no correct gallery item: `(cmc, mAP[, mINP][,
    num_invalid])`. `ap`: "trapezoid" (the release's) or "plain" (torchreid's). Ranking, junk, AP
    and INP rules: see the module docstring. Raises ValueError for mismatched shapes, NaN
    distances, an unknown `ap`, or when no query has a correct gallery item.
    """
    _check_ap(ap)
    _check_max_rank(max_rank)
    d = _distmat(distmat)
    Q, G = d.shape
    q_pids, q_camids = _ids(q_pids, "q_pids", Q), _ids(q_camids, "q_camids", Q)
    g_pids, g_camids = _ids(g_pids, "g_pids", G), _ids(g_camids, "g_camids", G)
    stats = _rank_stats([d], q_pids, q_camids, g_pids, g_camids, ap)
    return _summarise(stats, max_rank, return_num_invalid, return_minp)


def _feature_distance_blocks(qf, gf, block):
    """Yields -(qf[s:s+block] @ gf.T) for consecutive query blocks."""
    gt = gf.T
    for s in range(0, qf.shape[0], block):
        yield torch.matmul(qf[s:s + block], gt).neg_()


def _normalized(f, name):
    """Rows of `f` L2-normalised (exactly unchanged where the norm is exactly 1); a zero row is an error."""
    norms = torch.linalg.vector_norm(f, dim=1)
    zero = norms == 0
    if zero.any():
        raise ValueError(f"{name} row {int(zero.nonzero()[0, 0])} is all zeros: its cosine similarity to "
                         "anything is undefined")
    return f / norms[:, None]


def _features(qf, gf, same=False):
    """(qf, gf) as L2-normalised float tensors of one dtype on qf's device; `same`: gf is qf."""
    qf, gf = _tensor(qf, "qf"), _tensor(gf, "gf")
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"qf and gf must be 2-d with the same feature length, got {tuple(qf.shape)} "
                         f"and {tuple(gf.shape)}")
    if not qf.is_floating_point():
        qf = qf.float()
    qf = _normalized(qf, "features" if same else "qf")
    return qf, qf if same else _normalized(gf.to(device=qf.device, dtype=qf.dtype), "gf")


def _check_block(block, G):
    if block is None:
        return max(1, _MATMUL_ELEMENTS // max(G, 1))
    return positive_int("block", block, " (queries per matrix product) or None")


def evaluate_rank_features(qf, gf, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap="trapezoid",
                           block=None, return_num_invalid=False, return_minp=False):
    """`evaluate_rank` of features ranked by cosine similarity: the rows of `qf` and `gf` are
    L2-normalised here (raw features are fine; a zero row is a ValueError), then ranked by
    descending dot product (distance -q.g).

    Multiplies `block` queries at a time (default: as many as make 2**26 distances, 256 MB in
    float32) on the device of `qf`, and ranks them on the CPU in smaller steps, so the query x
    gallery matrix is never held. Same return value as `evaluate_rank`, and for exactly normalised
    features the same numbers as `evaluate_rank(-(qf @ gf.T), ...)` (see the module docstring).
    """
    _check_ap(ap)
    _check_max_rank(max_rank)
    qf, gf = _features(qf, gf)
    Q, G = qf.shape[0], gf.shape[0]
    q_pids, q_camids = _ids(q_pids, "q_pids", Q), _ids(q_camids, "q_camids", Q)
    g_pids, g_camids = _ids(g_pids, "g_pids", G), _ids(g_camids, "g_camids", G)
    blocks = _feature_distance_blocks(qf, gf, _check_block(block, G))
    stats = _rank_stats(blocks, q_pids, q_camids, g_pids, g_camids, ap)
    return _summarise(stats, max_rank, return_num_invalid, return_minp)


def evaluate_rank_blocks(distance_blocks, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap="trapezoid",
                         return_num_invalid=False, return_minp=False):
    """`evaluate_rank` over an iterable of (B, G) distance blocks (arrays or tensors) that cover the
    queries in order, e.g. `evaluation.rerank.re_ranking_blocks(...)`: for galleries whose full matrix
    should not be held at once. Same return value as `evaluate_rank`."""
    _check_ap(ap)
    _check_max_rank(max_rank)
    Q, G = len(q_pids), len(g_pids)
    q_pids, q_camids = _ids(q_pids, "q_pids", Q), _ids(q_camids, "q_camids", Q)
    g_pids, g_camids = _ids(g_pids, "g_pids", G), _ids(g_camids, "g_camids", G)

    def checked():
        for b in distance_blocks:
            b = _distmat(b)
            if b.shape[1] != G:
                raise ValueError(f"distance blocks must be (B, {G}) (B queries x gallery), got shape {tuple(b.shape)}")
            yield b

    stats = _rank_stats(checked(), q_pids, q_camids, g_pids, g_camids, ap)
    return _summarise(stats, max_rank, return_num_invalid, return_minp)


def recall_at_k(features, labels, ks=(1, 2, 4, 8), block=None):
    """Recall@K of every item against all the others, ranked by cosine similarity (the rows of
    `features` are L2-normalised here, as in `evaluate_rank_features`).

    Recall@K: the share of items with at least one other item of the same label among their K
    nearest neighbours. The item itself is left out by index, not by assuming it ranks first
    (duplicated images count as neighbours); ties are broken by index. Items whose label occurs
    once count as misses. Blockwise like `evaluate_rank_features`. Returns {k: recall}.
    """
    ks = tuple(ks)
    if not ks or not all(is_positive_int(k) for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    f, _ = _features(features, features, same=True)
    N = f.shape[0]
    labels = _ids(labels, "labels", N)
    index = np.arange(N)
    # each item is the only junk entry of its own row (same "id", same "camera"): removed by index
    blocks = _feature_distance_blocks(f, f, _check_block(block, N))
    first_rank = _rank_stats(blocks, labels, index, labels, index, "plain")[0]
    return {int(k): float(np.count_nonzero((first_rank >= 0) & (first_rank < k))) / max(N, 1) for k in ks}


KMEANS_METHODS = ("release", "kmeans++")
_SPLIT_EPS = 1 / 1024  # faiss's perturbation of a split centroid


def _mt19937(seed):
    """Raw 32-bit outputs of std::mt19937(seed), as faiss's RandomGenerator draws them: numpy's
    RandomState seeds its MT19937 from an integer with the same init_genrand, and its full-range
    uint32 draws are the generator's outputs unchanged."""
    state = np.random.RandomState(int(seed) & 0xFFFFFFFF)
    while True:
        yield from state.randint(0, 2 ** 32, size=64, dtype=np.uint32).tolist()


def _faiss_initial_points(n, k, seed):
    """The first k entries of faiss's rand_perm(n, seed): a Fisher-Yates shuffle drawing
    i + mt() % (n - i) at step i. Steps past k only move later entries, so k steps suffice."""
    perm = list(range(n))
    draws = _mt19937(seed)
    for i in range(min(k, n - 1)):
        j = i + next(draws) % (n - i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm[:k]


def _split_empty_clusters(centroids, counts, n):
    """faiss's split_clusters: each empty cluster copies a cluster drawn with probability
    (size - 1) / (n - k), the two are pushed apart by a factor 1 +- 1/1024 on alternate
    coordinates, and the drawn cluster's count is shared between them. In place (numpy float32)."""
    k = len(counts)
    draws = _mt19937(1234)  # faiss seeds this generator afresh on every call
    top = np.float32(4294967295)  # float(mt.max()), rounded to float32 as faiss does
    odd = np.arange(centroids.shape[1]) % 2 == 1
    for ci in range(k):
        if counts[ci] != 0:
            continue
        cj = 0
        while True:
            p = np.float32((np.float64(counts[cj]) - 1.0) / np.float64(np.float32(n - k)))
            if np.float32(next(draws)) / top < p:
                break
            cj = (cj + 1) % k
        c = centroids[cj].astype(np.float64)
        centroids[ci] = np.where(odd, c * (1 - _SPLIT_EPS), c * (1 + _SPLIT_EPS)).astype(np.float32)
        centroids[cj] = np.where(odd, c * (1 + _SPLIT_EPS), c * (1 - _SPLIT_EPS)).astype(np.float32)
        counts[ci] = counts[cj] / np.float32(2)
        counts[cj] -= counts[ci]


def _nearest(x, sq, c):
    """Index of the nearest row of `c` for every row of `x` (L2), computed as faiss's flat index does:
    ||x||^2 + ||c||^2 - 2 x.c in float32, the first of equal distances."""
    d = (sq[:, None] + (c * c).sum(1)[None, :]) - 2 * (x @ c.T)
    return d.clamp_(min=0).argmin(1)


def _kmeans_release(x, k, seed, niter):
    """faiss Clustering with its defaults but niter (and no subsampling): k distinct random points,
    `niter` Lloyd iterations (no convergence test, empty clusters split), then nearest centroid."""
    N = x.shape[0]
    sq = (x * x).sum(1)
    c = x[_faiss_initial_points(N, k, int(seed) + 1)].clone()  # faiss draws with seed + 1 (first redo)
    for _ in range(niter):
        labels = _nearest(x, sq, c)
        counts = torch.bincount(labels, minlength=k).float()
        sums = torch.zeros(k, x.shape[1]).index_add_(0, labels, x)
        c = sums * torch.where(counts > 0, 1 / counts, 0)[:, None]
        if (counts == 0).any():
            c, counts = c.numpy().copy(), counts.numpy().copy()
            _split_empty_clusters(c, counts, N)
            c = torch.from_numpy(c)
    return _nearest(x, sq, c)


def _kmeans_plus_plus(x, k, seed, max_iter):
    """Greedy k-means++ initialisation as scikit-learn's, then Lloyd iterations until no assignment
    changes (at most `max_iter`); empty clusters move onto the points farthest from their centre."""
    N = x.shape[0]
    sq = (x * x).sum(1)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    trials = 2 + int(np.log(k))

    def sq_dist(c):  # (N, C) squared distances to the rows of c
        return (sq[:, None] - 2 * (x @ c.T) + (c * c).sum(1)[None, :]).clamp_(min=0)

    centers = torch.empty(k, dtype=torch.long)
    centers[0] = torch.randint(N, (1,), generator=g).item()
    closest = sq_dist(x[centers[:1]])[:, 0]
    for j in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: take any
            centers[j] = torch.randint(N, (1,), generator=g).item()
            continue
        u = torch.rand(trials, generator=g, dtype=torch.float64) * float(total)
        cand = torch.searchsorted(closest.double().cumsum(0), u).clamp_(max=N - 1)
        new = torch.minimum(closest[:, None], sq_dist(x[cand]))  # (N, trials)
        best = int(new.sum(0).argmin())
        centers[j] = cand[best]
        closest = new[:, best].contiguous()

    c = x[centers].clone()
    labels = torch.full((N,), -1, dtype=torch.long)
    for _ in range(max_iter):
        d = sq_dist(c)
        new_labels = d.argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros(k, x.shape[1]).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # move empty clusters onto the points farthest from their centre
            far = d.gather(1, labels[:, None])[:, 0].argsort(descending=True, stable=True)[:len(empty)]
            sums[empty], counts[empty] = x[far], 1
        c = sums / counts[:, None]
    return labels


def kmeans(features, k, seed=1234, method="release", max_iter=None):
    """Seeded k-means of (N, D) features into k clusters; returns the labels (N,) as int64 numpy.

    method "release" (the default, the release's NMI column): faiss's `Clustering` with its
    defaults except 20 iterations and no subsampling, reproduced draw for draw: the initial
    centroids are k distinct points at the positions faiss's random permutation (std::mt19937,
    seeded with seed + 1) gives, then exactly `max_iter` (default 20) Lloyd iterations with no
    convergence test, empty clusters split as faiss splits them, then every point goes to its
    nearest centroid (L2, first of equal distances). The same labels as
    `faiss.Kmeans(D, k, niter=20, seed=seed)` followed by `index.search(x, 1)`, up to float
    rounding of the distances.
    method "kmeans++": greedy k-means++ initialisation as scikit-learn's, then Lloyd iterations
    until no assignment changes (at most `max_iter`, default 300). It usually reaches a better
    optimum and a higher NMI on the same features, so its NMI is not comparable with the release's.
    Deterministic for a given seed, input and thread count. Computes in float32 on the CPU.
    """
    if method not in KMEANS_METHODS:
        raise ValueError(f"method must be one of {KMEANS_METHODS}, got {method!r}")
    x = _tensor(features, "features")
    if x.dim() != 2:
        raise ValueError(f"features must be 2-d (N, D), got shape {tuple(x.shape)}")
    N = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= N:
        raise ValueError(f"k must be an integer in [1, {N}] (number of items), got {k!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer))
                                 or max_iter < 0):
        raise ValueError(f"max_iter must be a non-negative integer or None, got {max_iter!r}")
    x = x.float().cpu().contiguous()
    if method == "release":
        labels = _kmeans_release(x, int(k), seed, 20 if max_iter is None else int(max_iter))
    else:
        labels = _kmeans_plus_plus(x, int(k), seed, 300 if max_iter is None else int(max_iter))
    return labels.numpy().astype(np.int64, copy=False)


def _entropy(counts):
    counts = counts[counts > 0].astype(np.float64)
    if counts.size <= 1:
        return 0.0
    total = counts.sum()
    return float(-np.sum(counts / total * (np.log(counts) - np.log(total))))


def normalized_mutual_info(labels_true, labels_pred):
    """NMI with arithmetic-mean normalisation: MI / ((H(true) + H(pred)) / 2), the default of
    scikit-learn's normalized_mutual_info_score (1.0 when both labelings have a single cluster)."""
    a, b = np.asarray(labels_true).ravel(), np.asarray(labels_pred).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labels_true and labels_pred must have the same length, got {a.size} and {b.size}")
    classes, ia = np.unique(a, return_inverse=True)
    clusters, ib = np.unique(b, return_inverse=True)
    if len(classes) == len(clusters) == 1 or len(classes) == len(clusters) == 0:
        return 1.0
    if len(classes) == 1 or len(clusters) == 1:
        return 0.0
    n = a.size
    joint = np.unique(ia.astype(np.int64) * len(clusters) + ib, return_counts=True)
    nij = joint[1].astype(np.float64)
    pi = np.bincount(ia).astype(np.float64)
    pj = np.bincount(ib).astype(np.float64)
    outer = pi[joint[0] // len(clusters)] * pj[joint[0] % len(clusters)]
    mi = nij / n * (np.log(nij) - np.log(n)) + nij / n * (np.log(n) * 2 - np.log(outer))
    mi = np.where(np.abs(mi) < np.finfo(np.float64).eps, 0.0, mi)
    mi = max(float(mi.sum()), 0.0)
    if mi == 0:
        return 0.0
    return mi / ((_entropy(pi) + _entropy(pj)) / 2)
