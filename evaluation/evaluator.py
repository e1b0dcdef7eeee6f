"""Test-time evaluation: `evaluate(model, dataset, image_size=...)` for train.py and the test scripts
(whose command line is evaluation.cli).

Test-time feature (as the release): the five eval-mode BN embeddings of DBN concatenated (5F),
summed with those of the horizontally flipped image, L2-normalised; similarity is the dot product.

Each dataset states its protocol (datasets.protocol: `dataset.test_protocol(**options)`), and this
module scores any protocol the same way:
- "rank" (market1501, dukemtmc, msmt17, veri776, npdetected, nplabeled, custom, university1652,
  vehicleid): query vs gallery, same id and same camera removed as junk; CMC top1/top5/top10 and
  mAP (trapezoid AP by default, the release's; ap="plain" for torchreid's), and fast-reid's mINP.
  Queries with no correct gallery item are left out and counted. Several splits (VehicleID's
  seeded trials, test_size and trials) are averaged, the spread (std, min, max) on an earlier line.
  University-1652's direction picks the query and gallery views.
- "retrieval" (car196, cub200): Recall@1,2,4,8 over the test set (each image's own entry excluded)
  and NMI of a k-means with one cluster per test class: kmeans="release" (default) is the
  release's faiss k-means (seed 1234, 20 iterations, random initial points), "kmeans++" a
  k-means++ run to convergence (usually a higher NMI, not comparable with the release's).
"""
import json
import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.image_dataset import ImageDataset, collate_skip
from evaluation.features import extract_features
from evaluation.metrics import evaluate_rank_blocks, evaluate_rank_features, kmeans, normalized_mutual_info, recall_at_k
from evaluation.rerank import re_ranking_blocks
from evaluation.vis import cell_size, save_rank_lists
from utils.files import atomic_write

log = logging.getLogger(__name__)

RANK_LINE = "top1:{top1:f} top5:{top5:f} top10:{top10:f} mAP:{mAP:f}"
MINP_LINE = "mINP:{mINP:f}"  # fast-reid's mean inverse negative penalty, on the line above RANK_LINE
RECALL_LINE = "Recall@1:{R1:f} Recall@2:{R2:f} Recall@4:{R4:f} Recall@8:{R8:f} NMI:{NMI:f}"


class EvaluationError(RuntimeError):
    """The test split cannot be scored (e.g. no query has a correct gallery item); the message says why."""


class FeaturePass:
    """Test-time features of item lists: the model, the dataset's test transform at `image_size`,
    and the loader settings of one evaluation."""

    def __init__(self, model, dataset, image_size, batch_size=64, num_workers=0, provenance=None):
        self.model, self.dataset, self.provenance = model, dataset, provenance
        self.image_size = tuple(int(v) for v in image_size)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.device = next(model.parameters()).device

    def __call__(self, items, view=None, desc="features"):
        """Features of `items` ((path, label[, camid]) tuples) and the index of the item behind each row.

        The loader carries the item's index as its label, so an unreadable image (dropped by
        collate_skip with a warning) cannot shift the rows against the item list.
        """
        transform = self.dataset.test_transform(*self.image_size, view=view)
        tagged = [(item[0], i, item[2] if len(item) > 2 else 0) for i, item in enumerate(items)]
        loader = DataLoader(ImageDataset(tagged, transform), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers, collate_fn=collate_skip,
                            pin_memory=self.device.type == "cuda")
        feats, index, _ = extract_features(self.model, loader, self.device, desc=desc)
        if len(index) < len(items):
            log.info(f"{desc}: {len(items) - len(index)} of {len(items)} images unreadable, left out")
        return feats, index.numpy()


def rank_metrics(qf, gf, q_pids, q_camids, g_pids, g_camids, *, ap="trapezoid", rerank=False, keep_rows=()):
    """top1/top5/top10/mAP/mINP of L2-normalised query and gallery features, query block by query block.

    With `rerank`, the k-reciprocal distances (k1=20, k2=6, lambda=0.3) are streamed block by
    block from evaluation.rerank into evaluation.metrics (never the full query x gallery matrix). Returns
    (metrics, distance rows of the queries in `keep_rows` as a (len(keep_rows), G) array, for the
    pictures). metrics["left_out"] counts the queries without a correct gallery item (left out of
    CMC and mAP).
    """
    check_scorable(q_pids, q_camids, g_pids, g_camids)
    keep_rows = np.asarray(keep_rows, dtype=np.int64)
    if rerank:
        kept = {}

        def blocks():  # the re-ranked rows, keeping those of the pictured queries on the way
            start = 0
            for block in re_ranking_blocks(qf, gf):
                for r in keep_rows[(keep_rows >= start) & (keep_rows < start + len(block))].tolist():
                    kept[r] = np.array(block[r - start], dtype=np.float64)
                start += len(block)
                yield block

        cmc, mAP, mINP, left_out = evaluate_rank_blocks(blocks(), q_pids, g_pids, q_camids, g_camids, ap=ap,
                                                        return_num_invalid=True, return_minp=True)
        rows = np.stack([kept[r] for r in keep_rows.tolist()]) if len(keep_rows) else None
    else:
        cmc, mAP, mINP, left_out = evaluate_rank_features(qf, gf, q_pids, g_pids, q_camids, g_camids, ap=ap,
                                                          return_num_invalid=True, return_minp=True)
        rows = -(qf[torch.from_numpy(keep_rows)] @ gf.T).double().numpy() if len(keep_rows) else None
    metrics = {"top1": float(cmc[0]), "top5": float(cmc[4]), "top10": float(cmc[9]),
               "mAP": float(mAP), "mINP": float(mINP), "num_query": len(q_pids), "num_gallery": len(g_pids),
               "left_out": int(left_out)}
    return metrics, rows


def check_scorable(q_pids, q_camids, g_pids, g_camids):
    """Raise EvaluationError unless some query has a correct gallery item: the same id seen by
    another camera (same id and camera is junk). Otherwise CMC and mAP are undefined."""
    q_pids, q_camids, g_pids, g_camids = (np.asarray(a, dtype=np.int64) for a in (q_pids, q_camids, g_pids, g_camids))
    ids, per_id = np.unique(g_pids, return_counts=True)
    pairs, per_pair = np.unique(np.stack([g_pids, g_camids], 1), axis=0, return_counts=True) if len(g_pids) else (
        np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    id_count = dict(zip(ids.tolist(), per_id.tolist()))
    pair_count = {tuple(p): n for p, n in zip(pairs.tolist(), per_pair.tolist())}
    if any(id_count.get(p, 0) > pair_count.get((p, c), 0) for p, c in zip(q_pids.tolist(), q_camids.tolist())):
        return
    raise EvaluationError(
        f"none of the {len(q_pids)} queries has a correct gallery item (the same id seen by another camera; "
        f"{len(g_pids)} gallery images), so CMC and mAP are undefined. Check that query and gallery are the "
        "dataset's own folders (not swapped, emptied or from another dataset) and that the file names carry "
        "the ids and cameras (<id>_c<camera>...): a query id must appear in the gallery under another camera")


def save_features(path, provenance=None, **splits):
    """--save-features: for each split name, (features (N, D), items (path, pid[, camid])) as
    <split>_features float32, <split>_paths, <split>_pids and <split>_camids (-1 when unknown) in
    one .npz, with what produced them (evaluation.features.provenance, as JSON) when given. Nothing is
    written when `path` is None."""
    if path is None:
        return
    arrays = {}
    for name, (feats, items) in splits.items():
        arrays[f"{name}_features"] = np.asarray(feats, dtype=np.float32)
        arrays[f"{name}_paths"] = np.array([item[0] for item in items], dtype=str)
        arrays[f"{name}_pids"] = np.array([item[1] for item in items], dtype=np.int64)
        arrays[f"{name}_camids"] = np.array([item[2] if len(item) > 2 else -1 for item in items], dtype=np.int64)
    if provenance is not None:
        arrays["provenance"] = np.array(json.dumps(provenance))
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    counts = ", ".join(f"{name} {len(items)}" for name, (_, items) in splits.items())
    log.info(f"features ({counts}) written to {path}")


def vis_rows(vis, num_query):
    """Indices of the `vis` pictured queries, spread evenly over the query list."""
    n = min(int(vis), num_query)
    return np.unique(np.linspace(0, num_query - 1, n).round().astype(np.int64)) if n > 0 else np.zeros(0, np.int64)


def _pictures(vis_dir, prefix, rows, dist, query, gallery, cell, junk_same_camera=True):
    """Rank-list pictures of the queries `rows` (distance rows `dist`), as <vis_dir>/<prefix>_rank_<query>.png."""
    if not len(rows):
        return
    written = save_rank_lists(dist, [query[i] for i in rows], gallery, vis_dir, prefix, query_ids=rows,
                              junk_same_camera=junk_same_camera, cell=cell)
    log.info(f"rank-list pictures: {len(written)} written to {os.path.join(vis_dir, prefix)}_rank_*.png")


def _ids(items):
    return [np.array([item[k] for item in items], dtype=np.int64) for k in (1, 2)]


def _split_features(protocol, features, save_to):
    """[(query, gallery, query features, gallery features)] of each split, unreadable images left
    out; the features are written to `save_to` (save_features)."""
    if protocol.pool is None:
        (split,) = protocol.splits
        qf, qi = features(split.query, split.query_view, desc="query")
        gf, gi = features(split.gallery, split.gallery_view, desc="gallery")
        query, gallery = [split.query[i] for i in qi], [split.gallery[i] for i in gi]
        save_features(save_to, features.provenance, query=(qf, query), gallery=(gf, gallery))
        return [(query, gallery, qf, gf)]
    # splits drawn from one image list (VehicleID's trials): one pass over its distinct images
    pid_of = {item[0]: item[1] for split in protocol.splits for item in split.query + split.gallery}
    paths = sorted(pid_of)
    feats, index = features([(p, 0, 0) for p in paths], desc=protocol.pool)
    row = {paths[i]: r for r, i in enumerate(index.tolist())}
    save_features(save_to, features.provenance, test=(feats, [(paths[i], pid_of[paths[i]]) for i in index.tolist()]))
    out = []
    for split in protocol.splits:
        query = [item for item in split.query if item[0] in row]
        gallery = [item for item in split.gallery if item[0] in row]
        out.append((query, gallery, feats[[row[item[0]] for item in query]], feats[[row[item[0]] for item in gallery]]))
    return out


def _evaluate_rank(protocol, features, *, ap, rerank, vis, vis_dir, save_features_to):
    results = []
    for k, (split, (query, gallery, qf, gf)) in enumerate(zip(protocol.splits,
                                                               _split_features(protocol, features, save_features_to))):
        rows = vis_rows(vis, len(query)) if k == 0 else ()  # pictures of the first split
        metrics, dist = rank_metrics(qf, gf, *_ids(query), *_ids(gallery), ap=ap, rerank=rerank, keep_rows=rows)
        results.append(metrics)
        _pictures(vis_dir, split.name, rows, dist, query, gallery, cell_size(*features.image_size))
    if len(results) == 1:
        return results[0]
    keys = ("top1", "top5", "top10", "mAP")
    table = np.array([[m[k] for k in keys] for m in results])
    log.info(f"{protocol.title}: " + " ".join(f"{k} std:{s:f} min:{lo:f} max:{hi:f}"
                                             for k, s, lo, hi in zip(keys, table.std(0), table.min(0), table.max(0))))
    mean = dict(zip(keys, table.mean(0).tolist()))
    mean["mINP"] = float(np.mean([m["mINP"] for m in results]))
    mean.update(num_query=results[0]["num_query"], num_gallery=results[0]["num_gallery"],
                left_out=results[0]["left_out"], trials=results)
    return mean


def _evaluate_retrieval(protocol, features, *, kmeans_method, vis, vis_dir, save_features_to):
    (split,) = protocol.splits
    feats, index = features(split.query, split.query_view, desc="test")
    items = [(split.query[i][0], split.query[i][1], 0) for i in index]
    labels = np.array([item[1] for item in items], dtype=np.int64)
    save_features(save_features_to, features.provenance, test=(feats, [item[:2] for item in items]))
    recall = recall_at_k(feats, labels, ks=(1, 2, 4, 8))
    clusters = kmeans(feats, len(np.unique(labels)), seed=1234, method=kmeans_method)
    metrics = {f"R{k}": float(recall[k]) for k in (1, 2, 4, 8)}
    metrics.update(NMI=float(normalized_mutual_info(labels, np.asarray(clusters))), num_images=len(items))
    rows = vis_rows(vis, len(items))
    if len(rows):
        dist = -(feats[torch.from_numpy(rows)] @ feats.T).double().numpy()
        dist[np.arange(len(rows)), rows] = np.inf  # an image is not its own neighbour
        _pictures(vis_dir, split.name, rows, dist, items, items, cell_size(*features.image_size),
                  junk_same_camera=False)
    return metrics


def evaluate(model, dataset, *, image_size, batch_size=64, num_workers=0, ap="trapezoid", rerank=False,
             kmeans="release", vis=0, vis_dir="figs", save_features=None, provenance=None, **protocol):
    """Evaluate `model` (a DBN) on the test protocol of `dataset` (from datasets.build_dataset).

    image_size: (height, width) of the test transform. batch_size, num_workers: the loader's.
    ap ("trapezoid", the release's, or "plain") and rerank: rank protocols; kmeans ("release" or
    "kmeans++"): the NMI of retrieval protocols. vis N: rank-list pictures of N queries in
    `vis_dir`. save_features: an .npz to write the test features to (see save_features), with
    `provenance` (evaluation.features.provenance) when given.
    `protocol`: the dataset's own options, `dataset.protocol_options` (e.g. VehicleID's test_size
    and trials, University-1652's direction), passed to `dataset.test_protocol`.

    The model runs where its parameters are, in eval mode; its train/eval mode is restored
    afterwards. Returns (metrics dict, result line in the release's format).
    """
    test = dataset.test_protocol(**protocol)
    features = FeaturePass(model, dataset, image_size, batch_size, num_workers, provenance)
    was_training = model.training
    model.eval()
    try:
        if test.scoring == "retrieval":
            metrics = _evaluate_retrieval(test, features, kmeans_method=kmeans, vis=vis, vis_dir=vis_dir,
                                          save_features_to=save_features)
            return metrics, RECALL_LINE.format(**metrics)
        metrics = _evaluate_rank(test, features, ap=ap, rerank=rerank, vis=vis, vis_dir=vis_dir,
                                 save_features_to=save_features)
    finally:
        model.train(was_training)
    log.info(f"queries without a correct gallery item (left out of CMC and mAP): "
             f"{metrics['left_out']} of {metrics['num_query']}")
    return metrics, RANK_LINE.format(**metrics)
