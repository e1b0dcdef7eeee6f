"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), computed from neighbour lists so that it scales to MSMT17.

The published algorithm, over all N = Q + G query and gallery items, with d the squared Euclidean
distance and each row of d divided by its maximum over all N items:
1. R(i, k): the k nearest items of i (i itself included, ties broken by index).
   k-reciprocal set K(i) = {j in R(i, k1 + 1) : i in R(j, k1 + 1)}.
2. Expansion: for every c in K(i) whose half set Kh(c) (the same with round(k1 / 2) + 1) shares more
   than 2/3 of its items with K(i), add Kh(c). V(i, j) = exp(-d(i, j)) over the expanded set,
   normalised to sum 1 (a sparse row).
3. Query expansion: V(i) becomes the mean of V over R(i, k2) (when k2 > 1).
4. Jaccard distance J(q, g) = 1 - s / (2 - s) with s = sum_k min(V(q, k), V(g, k)).
5. Result: (1 - lambda) * J(q, g) + lambda * d(q, g) for query q and gallery item g.

Memory: only the k-nearest lists (N x (k1 + 1)), the sparse V rows and one block of full distance
rows at a time are held; nothing of size N x N. The full distance rows are computed twice (once for
the neighbour lists, once per query block for the result), so time grows as (N + Q) * N * dim.

API:
- `re_ranking(qf, gf, k1=20, k2=6, lambda_value=0.3)`: features in, dense (Q, G) float32 distance out
  (smaller = closer) for `evaluation.metrics.evaluate_rank`; fine while Q x G floats fit in memory.
- `re_ranking_blocks(qf, gf, ...)`: the same rows, yielded as (B, G) blocks in query order, for
  `evaluation.metrics.evaluate_rank_blocks` at any scale.
"""
import numpy as np
import scipy.sparse as sp
import torch

from utils.checks import positive_int

# Distance entries per block of full rows (float32 plus int64 sort keys: 12 bytes each, ~200 MB).
_ROW_ELEMENTS = 1 << 24
# (query, item) pairs expanded at once in the Jaccard step.
_PAIR_ELEMENTS = 1 << 23


class _FeatureRows:
    """Squared Euclidean distances between features; all N = Q + G items, queries first."""

    def __init__(self, qf, gf):
        qf = qf.detach() if isinstance(qf, torch.Tensor) else torch.as_tensor(np.asarray(qf))
        gf = gf.detach() if isinstance(gf, torch.Tensor) else torch.as_tensor(np.asarray(gf))
        if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
            raise ValueError(f"qf and gf must be 2-d with the same feature length, got {tuple(qf.shape)} "
                             f"and {tuple(gf.shape)}")
        self.qf, self.gf = qf.float(), gf.to(device=qf.device).float()  # no copy when already float32
        self.sq = torch.cat([(self.qf * self.qf).sum(1), (self.gf * self.gf).sum(1)])
        self.num_query, self.num_items = qf.shape[0], qf.shape[0] + gf.shape[0]

    def _items(self, index):
        """Feature rows of items `index` (a tensor on the features' device)."""
        out = torch.empty(len(index), self.qf.shape[1], device=self.qf.device)
        is_query = index < self.num_query
        out[is_query] = self.qf[index[is_query]]
        out[~is_query] = self.gf[index[~is_query] - self.num_query]
        return out

    def rows(self, i0, i1):
        x = self._items(torch.arange(i0, i1, device=self.qf.device))
        # (B, N); (|a|^2 + |b|^2) - 2 a.b
        d = torch.cat([torch.matmul(x, self.qf.T), torch.matmul(x, self.gf.T)], 1).mul_(-2)
        d += self.sq[i0:i1, None] + self.sq[None, :]
        return d.clamp_(min=0).add_(0.0)

    def pairs(self, i, j):
        out = torch.empty(len(i), dtype=torch.float32)
        step = max(1, _PAIR_ELEMENTS // (8 * self.qf.shape[1]))
        for s in range(0, len(i), step):
            a = torch.as_tensor(i[s:s + step], device=self.qf.device)
            b = torch.as_tensor(j[s:s + step], device=self.qf.device)
            dot = (self._items(a) * self._items(b)).sum(1)
            out[s:s + step] = ((self.sq[a] + self.sq[b]) + dot * -2).clamp_(min=0).add_(0.0).cpu()
        return out.numpy()


def _check(k1, k2, lambda_value):
    for name, k in (("k1", k1), ("k2", k2)):
        positive_int(name, k)
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")


def _normalised_rows(source, i0, i1, row_max):
    d = source.rows(i0, i1)
    return d.div_(row_max[i0:i1, None].to(d.device))


def _neighbours(source, k):
    """Each item's k nearest items (ascending normalised distance, ties by index), their normalised
    distances, and every row's maximum squared distance."""
    N = source.num_items
    k = min(k, N)
    step = max(1, _ROW_ELEMENTS // N)
    index, value, row_max = [], [], []
    for i0 in range(0, N, step):
        d = source.rows(i0, min(i0 + step, N))
        m = d.amax(1)
        m = torch.where(m > 0, m, torch.ones_like(m))  # a row of zeros stays zeros
        d.div_(m[:, None])
        # non-negative floats order like their bit patterns: one int64 key per entry, index in the low bits
        key = d.view(torch.int32).long().bitwise_left_shift_(32).bitwise_or_(torch.arange(N, device=d.device))
        del d
        top = torch.topk(key, k, dim=1, largest=False, sorted=True).values
        index.append((top & 0xFFFFFFFF).cpu())
        value.append((top >> 32).int().view(torch.float32).cpu())
        row_max.append(m.cpu())
        del key, top
    return torch.cat(index).numpy(), torch.cat(value).numpy(), torch.cat(row_max)


def _reciprocal(knn, k):
    """Mask (N, k): knn[i, a] is k-reciprocal, i.e. i is among the k nearest of knn[i, a]."""
    N = len(knn)
    near = knn[:, :k]
    keys = np.sort(np.arange(N)[:, None] * N + near, axis=None)
    back = near * N + np.arange(N)[:, None]
    pos = np.minimum(np.searchsorted(keys, back), len(keys) - 1)
    return keys[pos] == back


def _expanded_sets(knn, k1):
    """Rows and columns (sorted by row, then column) of every item's expanded k-reciprocal set."""
    N = len(knn)
    kh = int(np.around(k1 / 2.0)) + 1
    kr = _reciprocal(knn, k1 + 1)
    krh = _reciprocal(knn, kh)
    kr_rows, kr_cols = np.nonzero(kr)
    kr_items = knn[:, :k1 + 1][kr]  # K(i) for each i, row by row
    kr_keys = kr_rows * N + kr_items  # sorted: rows ascending, and knn rows hold distinct items
    kr_keys_sorted = np.sort(kr_keys)
    half = np.where(krh, knn[:, :kh], -1)  # Kh(c) padded with -1, (N, kh)
    half_size = krh.sum(1)
    rows, cols = [kr_rows], [kr_items]
    step = max(1, _PAIR_ELEMENTS // kh)
    for s in range(0, len(kr_rows), step):
        i, c = kr_rows[s:s + step], kr_items[s:s + step]
        cand = half[c]  # (P, kh)
        probe = i[:, None] * N + cand
        pos = np.minimum(np.searchsorted(kr_keys_sorted, probe), len(kr_keys_sorted) - 1)
        shared = ((kr_keys_sorted[pos] == probe) & (cand >= 0)).sum(1)
        take = shared > 2.0 / 3 * half_size[c]
        add = cand[take]
        rows.append(np.repeat(i[take], kh)[add.ravel() >= 0])
        cols.append(add.ravel()[add.ravel() >= 0])
    keys = np.unique(np.concatenate(rows) * N + np.concatenate(cols))
    return keys // N, keys % N


def _encode(source, knn, knn_value, row_max, k1, k2):
    """Sparse V (N, N) after query expansion, CSR float64."""
    N = source.num_items
    rows, cols = _expanded_sets(knn, k1)
    # normalised distances of the expanded pairs: from the neighbour lists where there, else computed
    keys = rows * N + cols
    knn_keys = np.arange(N)[:, None] * N + knn
    order = np.argsort(knn_keys, axis=None)
    flat_keys = knn_keys.ravel()[order]
    pos = np.minimum(np.searchsorted(flat_keys, keys), len(flat_keys) - 1)
    found = flat_keys[pos] == keys
    dist = np.empty(len(keys), dtype=np.float32)
    dist[found] = knn_value.ravel()[order[pos[found]]]
    missing = ~found
    if missing.any():
        dist[missing] = source.pairs(rows[missing], cols[missing]) / row_max.numpy()[rows[missing]]
    weight = np.exp(-dist).astype(np.float64)
    weight /= np.bincount(rows, weights=weight, minlength=N)[rows]
    v = sp.csr_matrix((weight, (rows, cols)), shape=(N, N))
    if k2 != 1:
        near = knn[:, :k2]
        mean = sp.csr_matrix((np.full(near.size, 1.0), (np.repeat(np.arange(N), near.shape[1]), near.ravel())),
                             shape=(N, N))
        v = (mean @ v) / near.shape[1]
    return v.tocsr().astype(np.float32)


def _blocks(source, k1, k2, lambda_value, block):
    Q, N = source.num_query, source.num_items
    G = N - Q
    knn, knn_value, row_max = _neighbours(source, max(k1 + 1, k2))
    v = _encode(source, knn, knn_value, row_max, k1, k2)
    by_column = v[Q:].T.tocsr()  # row k: the gallery items with V(g, k) != 0 and their values
    col_len = np.diff(by_column.indptr)
    if block is None:
        block = max(1, min(_ROW_ELEMENTS // max(N, 1), _PAIR_ELEMENTS // max(int(col_len.mean() * 200), 1)))
    for q0 in range(0, Q, block):
        q1 = min(q0 + block, Q)
        sub = v[q0:q1].tocoo()
        b, k, vq = sub.row, sub.col, sub.data
        n = col_len[k]
        pair = np.repeat(np.arange(len(k)), n)
        at = by_column.indptr[k][pair] + np.arange(len(pair)) - (np.cumsum(n) - n)[pair]
        shared = np.minimum(vq[pair], by_column.data[at]).astype(np.float64)
        s = np.bincount(b[pair] * G + by_column.indices[at], weights=shared, minlength=(q1 - q0) * G)
        jaccard = (1 - s / (2 - s)).astype(np.float32).reshape(q1 - q0, G)
        original = _normalised_rows(source, q0, q1, row_max)[:, Q:].cpu().numpy()
        yield jaccard * np.float32(1 - lambda_value) + original * np.float32(lambda_value)


def re_ranking_blocks(qf, gf, k1=20, k2=6, lambda_value=0.3, block=None):
    """Re-ranked query x gallery distances of features `qf` (Q, D) and `gf` (G, D) (tensors or arrays;
    the matrix products run on the device of `qf`), yielded as float32 (B, G) numpy blocks in query
    order (B = `block` queries, default chosen from the gallery size)."""
    _check(k1, k2, lambda_value)
    if block is not None:
        positive_int("block", block, " or None")
    return _blocks(_FeatureRows(qf, gf), k1, k2, lambda_value, block)


def re_ranking(qf, gf, k1=20, k2=6, lambda_value=0.3):
    """Re-ranked (Q, G) float32 distance matrix of features `qf` and `gf` (smaller = closer)."""
    _check(k1, k2, lambda_value)
    source = _FeatureRows(qf, gf)
    G = source.num_items - source.num_query
    return np.concatenate(list(_blocks(source, k1, k2, lambda_value, None)) or [np.zeros((0, G), np.float32)])
