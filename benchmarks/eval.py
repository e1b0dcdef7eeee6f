"""Evaluation benchmark: CMC/mAP speed against the release's per-query loop and torchreid's evaluate_rank.

    python -m benchmarks.eval                # comparison at 3,000 x 20,000, then the MSMT17-size run
    python -m benchmarks.eval --quick        # the comparison only
    python -m benchmarks.eval --rerank ...   # also k-reciprocal re-ranking
    python -m benchmarks --what eval         # the same, from the shared benchmark entry point

Data: identity-bearing random features (id centre + noise, L2-normalised, float32) with random
cameras; every id has gallery items, so no query is left out. Timings are wall-clock medians.

Comparison (3,000 queries x 20,000 gallery items, 750 ids, 6 cameras, 1920-d features, distance
-q.g): on the same distance matrix, the release's per-query loop (stable argsort of the row, junk
removal, trapezoid AP in a Python loop over the correct items), a faithful copy of torchreid's
pure-Python `evaluate_rank` (plain AP; it runs once), and `evaluation.metrics.evaluate_rank` with both AP
rules; also `evaluate_rank_features` from the features (matrix products included). Checks that the
numbers agree and prints the speed ratios.

Fresh-process runs (MSMT17 size: 11,659 queries x 82,161 gallery items, 3,060 ids, 15 cameras,
--dim 1920 for LEViT-S features or 3840 for LEViT-L): time end to end and peak extra memory,
measured as the rise of the process's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs once the features are in memory) above the resident size at that moment, so
numpy and torch allocations both count (Linux only).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from evaluation.metrics import evaluate_rank, evaluate_rank_blocks, evaluate_rank_features
from evaluation.rerank import re_ranking_blocks


def release_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The release's evaluation loop (trapezoid AP), one query at a time; the reference of the
    trapezoid rule (tests/test_metrics.py) and the benchmark's baseline.

    AP = mean_i (i / r_i + (i + 1) / (r_i + 1)) / 2 over the 0-based ranks r_i of the correct items
    after junk removal (i / r_i = 1 when r_i = 0). Differences from the release: queries without a
    correct item are left out of the averages (the release divides by all queries), rows are sorted
    stably so ties agree with evaluation.metrics, and a ranking shorter than max_rank after junk removal
    counts as found beyond its end. Returns (cmc (max_rank,), mAP, num_invalid), or None when no
    query has a correct item.
    """
    cmc_sum = np.zeros(max_rank)
    ap_sum, num_valid = 0.0, 0
    for q in range(distmat.shape[0]):
        index = np.argsort(distmat[q], kind="stable")
        query_index = np.argwhere(g_pids == q_pids[q])
        camera_index = np.argwhere(g_camids == q_camids[q])
        good_index = np.setdiff1d(query_index, camera_index, assume_unique=True)
        junk_index = np.intersect1d(query_index, camera_index)
        if good_index.size == 0:
            continue
        index = index[np.isin(index, junk_index, invert=True)]
        rows_good = np.argwhere(np.isin(index, good_index)).flatten()
        cmc_sum[rows_good[0]:] += 1
        ap, ngood = 0.0, len(good_index)
        for i in range(ngood):
            d_recall = 1.0 / ngood
            precision = (i + 1) * 1.0 / (rows_good[i] + 1)
            old_precision = i * 1.0 / rows_good[i] if rows_good[i] != 0 else 1.0
            ap = ap + d_recall * (old_precision + precision) / 2
        ap_sum += ap
        num_valid += 1
    if num_valid == 0:
        return None
    return cmc_sum / num_valid, ap_sum / num_valid, distmat.shape[0] - num_valid


def torchreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid's pure-Python `evaluate_rank` (eval_market1501), plain AP; the reference of the plain
    rule (tests/test_metrics.py) and the benchmark's baseline. Stable sort so ties agree; a curve
    shorter than max_rank after junk removal is padded with 1 (torchreid fails on those)."""
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, num_valid_q = [], [], 0.0
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(np.pad(cmc[:max_rank], (0, max(0, max_rank - len(cmc))), constant_values=1))
        num_valid_q += 1.0
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
        all_AP.append(tmp_cmc.sum() / num_rel)
    all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q
    return all_cmc, float(np.mean(all_AP)), num_q - int(num_valid_q)


def make_data(num_query, num_gallery, dim, num_ids, num_cameras=6, seed=0, chunk=8192):
    """Identity-bearing random features (L2-normalised float32) with ids and cameras.

    Every id has gallery images and a query image from at least one other camera where possible;
    features are id centre + noise, filled in chunks so no full-size temporary is made.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
    g_pids = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, num_gallery - num_ids)])
    q_pids = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, num_query - num_ids)])[:num_query]
    g_camids = rng.integers(0, num_cameras, num_gallery)
    q_camids = rng.integers(0, num_cameras, num_query)

    def fill(pids):
        out = np.empty((len(pids), dim), dtype=np.float32)
        for s in range(0, len(pids), chunk):
            f = centres[pids[s:s + chunk]] + 3.3 * rng.standard_normal((len(pids[s:s + chunk]), dim), dtype=np.float32)
            out[s:s + chunk] = f / np.linalg.norm(f, axis=1, keepdims=True)
        return out

    return fill(q_pids), fill(g_pids), q_pids, g_pids, q_camids, g_camids


def _median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def compare(dim=1920, repeats=3, torchreid=True, seed=0):
    """Part 1 on the "small" size; returns a dict of timings and agreement checks."""
    num_query, num_gallery, num_ids, num_cameras = SIZES["small"]
    qf, gf, q_pids, g_pids, q_camids, g_camids = make_data(num_query, num_gallery, dim, num_ids, num_cameras, seed)
    distmat = -(torch.from_numpy(qf) @ torch.from_numpy(gf).T).numpy()
    ids = (q_pids, g_pids, q_camids, g_camids)
    print(f"[eval] {num_query} queries x {num_gallery} gallery, {dim}-d features, torch threads "
          f"{torch.get_num_threads()}; medians of {repeats} runs", flush=True)
    t_rel, rel = _median_time(lambda: release_loop(distmat, *ids), repeats)
    print(f"[eval] release per-query loop (trapezoid)      {t_rel:8.3f} s", flush=True)
    t_trap, ours = _median_time(lambda: evaluate_rank(distmat, *ids, return_num_invalid=True), repeats)
    print(f"[eval] evaluate_rank ap=trapezoid              {t_trap:8.3f} s   {t_rel / t_trap:6.1f}x faster "
          "than the release's loop", flush=True)
    t_plain, ours_plain = _median_time(lambda: evaluate_rank(distmat, *ids, ap="plain", return_num_invalid=True),
                                       repeats)
    print(f"[eval] evaluate_rank ap=plain                  {t_plain:8.3f} s", flush=True)
    t_feat, ours_feat = _median_time(
        lambda: evaluate_rank_features(qf, gf, *ids, return_num_invalid=True), repeats)
    print(f"[eval] evaluate_rank_features (incl. q @ g.T)  {t_feat:8.3f} s", flush=True)
    result = {"release_s": t_rel, "trapezoid_s": t_trap, "plain_s": t_plain, "features_s": t_feat,
              "speedup_vs_release": t_rel / t_trap}
    checks = {
        "trapezoid == release": _agree(ours, rel),
        "features == matrix": _agree(ours_feat, ours),
    }
    if torchreid:
        t_tr, tr = _median_time(lambda: torchreid_evaluate_rank(distmat, *ids), 1)
        print(f"[eval] torchreid evaluate_rank (plain, 1 run)  {t_tr:8.3f} s   {t_tr / t_plain:6.1f}x slower "
              "than evaluate_rank ap=plain", flush=True)
        result.update(torchreid_s=t_tr, speedup_vs_torchreid=t_tr / t_plain)
        checks["plain == torchreid"] = _agree(ours_plain, tr)
    for name, (ok, diff) in checks.items():
        print(f"[eval] check {name:22s} {'agree' if ok else 'DIFFER'} (max |diff| cmc {diff[0]:.1e}, "
              f"mAP {diff[1]:.1e}; left out {ours[2]})", flush=True)
    print(f"[eval] top1 {ours[0][0]:.4f}  mAP trapezoid {ours[1]:.4f}  mAP plain {ours_plain[1]:.4f}", flush=True)
    result["agree"] = all(ok for ok, _ in checks.values())
    return result


def _agree(a, b, tol=1e-6):
    """Same left-out count, CMC within `tol` (torchreid sums in float32), mAP within 1e-12 (summation order)."""
    cmc_a, cmc_b = np.asarray(a[0], dtype=np.float64), np.asarray(b[0], dtype=np.float64)
    n = min(len(cmc_a), len(cmc_b))
    diff = (float(np.abs(cmc_a[:n] - cmc_b[:n]).max()), abs(a[1] - b[1]))
    return diff[0] <= tol and diff[1] <= 1e-12 and a[2] == b[2], diff


def _vm(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


SIZES = {  # queries, gallery items, ids, cameras
    "small": (3000, 20000, 750, 6),
    "msmt": (11659, 82161, 3060, 15),
}


def worker(kind, size, dim, seed=0):
    """One timed run, meant for a fresh process: prints one JSON line.

    kind "eval": evaluate_rank_features; kind "rerank": re_ranking_blocks fed to evaluate_rank_blocks.
    """
    num_query, num_gallery, num_ids, num_cameras = SIZES[size]
    qf, gf, q_pids, g_pids, q_camids, g_camids = make_data(num_query, num_gallery, dim, num_ids, num_cameras, seed)
    qf, gf = torch.from_numpy(qf), torch.from_numpy(gf)
    ids = (q_pids, g_pids, q_camids, g_camids)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    base = _vm("VmRSS")
    t0 = time.perf_counter()
    if kind == "eval":
        cmc, mAP, left_out = evaluate_rank_features(qf, gf, *ids, return_num_invalid=True)
    else:
        cmc, mAP, left_out = evaluate_rank_blocks(re_ranking_blocks(qf, gf), *ids, return_num_invalid=True)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_extra_bytes": _vm("VmHWM") - base,
                      "features_bytes": (qf.numel() + gf.numel()) * 4, "top1": float(cmc[0]), "mAP": mAP,
                      "left_out": left_out}))


def run_worker(kind, size, dim):
    """Runs `worker` in a fresh interpreter (so the memory high-water mark is its own) and reports its line."""
    num_query, num_gallery, _, _ = SIZES[size]
    what = "evaluate_rank_features" if kind == "eval" else "re_ranking_blocks + evaluate_rank_blocks"
    print(f"[eval] {what}: {num_query} queries x {num_gallery} gallery, {dim}-d features (fresh process)",
          flush=True)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "benchmarks.eval", "--worker", kind, "--size", size,
                          "--dim", str(dim)], cwd=root, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{out.stderr}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[eval]   {r['seconds']:.1f} s, peak extra memory {r['peak_extra_bytes'] / 2**30:.2f} GiB (rise of "
          f"VmHWM; the features themselves take {r['features_bytes'] / 2**30:.2f} GiB), top1 {r['top1']:.4f} "
          f"mAP {r['mAP']:.4f}, left out {r['left_out']}", flush=True)
    return r


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser("evaluation benchmark", add_help=add_help)
    parser.add_argument("--quick", action="store_true", help="skip the MSMT17-size runs")
    parser.add_argument("--repeats", default=3, type=int, help="runs per method in the comparison (median reported)")
    parser.add_argument("--no-torchreid", action="store_true", help="skip torchreid's loop (about a minute)")
    parser.add_argument("--rerank", action="store_true",
                        help="also time k-reciprocal re-ranking at 3,000 x 20,000 (under a minute) and, without "
                             "--quick, at MSMT17 size (tens of minutes on 2 CPU cores)")
    parser.add_argument("--dim", default=1920, type=int, help="feature length of the fresh-process runs "
                        "(1920: LEViT-S test feature, 3840: LEViT-L)")
    parser.add_argument("--worker", choices=("eval", "rerank"), help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=tuple(SIZES), default="msmt", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    if args.worker:
        worker(args.worker, args.size, args.dim)
        return None
    result = compare(repeats=args.repeats, torchreid=not args.no_torchreid)
    if not result["agree"]:
        raise SystemExit("the implementations disagree (see the check lines above)")
    if args.rerank:
        result["rerank_small"] = run_worker("rerank", "small", args.dim)
    if not args.quick:
        result["msmt"] = run_worker("eval", "msmt", args.dim)
        if args.rerank:
            result["rerank_msmt"] = run_worker("rerank", "msmt", args.dim)
    return result


if __name__ == "__main__":
    main()
