"""Test-time evaluation shared by the `test_<dataset>.py` scripts and by train.py.

Test-time feature (as the release): the five eval-mode BN embeddings of DBN concatenated (5F),
summed with those of the horizontally flipped image, L2-normalised; similarity is the dot product.

Protocols (see the dataset table in the README):
- ReID (market1501, dukemtmc, msmt17, veri776, npdetected, nplabeled): query vs gallery, same id
  and same camera removed as junk; CMC top1/top5/top10 and mAP (trapezoid AP by default, the
  release's; `--ap plain` for torchreid's), and fast-reid's mINP on its own line above the
  result line. Queries with no correct gallery item are left out and counted.
- vehicleid: one random image per id is the gallery, the rest are queries, for `--trials`
  seeded splits (seeds 0..trials-1) of test_list_<--test-size>; the mean is reported, the
  spread (std, min, max) on an earlier line.
- car196, cub200: Recall@1,2,4,8 over the test set (each image's own entry excluded) and NMI
  of a k-means with one cluster per test class: `--kmeans release` (default) is the release's
  faiss k-means (seed 1234, 20 iterations, random initial points), `--kmeans kmeans++` a
  k-means++ run to convergence (usually a higher NMI, not comparable with the release's).
- university1652: `--direction` satellite2drone (default; the release's numbers) or
  drone2satellite; Recall@1 (= top1), top5, top10 and AP.

The result line in the release's format is the last line printed.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import DATASET_ROOT_HELP, DatasetError, build_dataset
from datasets.image_dataset import ImageDataset, collate_skip
from datasets.transforms import build_transform
from network import DBN, CheckpointError
from utils.cli import HelpFormatter, check_gpu, default_workers, require_at_least
from utils.console import show_warnings_as_lines
from utils.features import add_compile_arg, add_dtype_arg, check_dtype, dbn_features, prepare_for_inference
from utils.malloc import tune_allocator
from utils.metrics import evaluate_rank_blocks, evaluate_rank_features, kmeans, normalized_mutual_info, recall_at_k
from utils.rerank import re_ranking_blocks
from utils.vis import cell_size, save_rank_lists

# Input size (height, width) used when --img-height/--img-width are not given: the sizes of the
# release's training commands for each dataset.
IMAGE_SIZE = {
    "market1501": (256, 128),
    "dukemtmc": (256, 128),
    "msmt17": (256, 128),
    "npdetected": (256, 128),
    "nplabeled": (256, 128),
    "veri776": (256, 256),
    "vehicleid": (256, 256),
    "car196": (256, 256),
    "cub200": (256, 256),
    "university1652": (384, 384),
    "custom": (256, 128),
}
RANK_LINE = "top1:{top1:f} top5:{top5:f} top10:{top10:f} mAP:{mAP:f}"
MINP_LINE = "mINP:{mINP:f}"  # fast-reid's mean inverse negative penalty, on the line above RANK_LINE
RECALL_LINE = "Recall@1:{R1:f} Recall@2:{R2:f} Recall@4:{R4:f} Recall@8:{R8:f} NMI:{NMI:f}"


class EvaluationError(RuntimeError):
    """The test split cannot be scored (e.g. no query has a correct gallery item); the message says why."""


def _size_table():
    rows = {}
    for name, size in IMAGE_SIZE.items():
        rows.setdefault(size, []).append(name)
    return "; ".join(f"{h}x{w}: {', '.join(names)}" for (h, w), names in rows.items())


def get_args_parser(add_help=False):
    parser = argparse.ArgumentParser("DBN evaluation", add_help=add_help)
    parser.add_argument("--net", default=None, choices=["small", "large"],
                        help="model variant: small (LEViT-S) or large (LEViT-L) (default: what --weights holds)")
    parser.add_argument("--img-height", default=None, type=int,
                        help=f"input height (default: the size --weights was trained at; for a bare state_dict "
                             f"per dataset: {_size_table()})")
    parser.add_argument("--img-width", default=None, type=int, help="input width (default per dataset, as above)")
    parser.add_argument("--weights", default="params/ema.pth",
                        help="DBN checkpoint: the file train.py writes to --save-path (or its _last.pth "
                             "checkpoint) or the release's params/ema.pth")
    parser.add_argument("--dataset-root", default="data", help=DATASET_ROOT_HELP)
    parser.add_argument("--batch-size", default=64, type=int, help="images per forward pass")
    parser.add_argument("--num-workers", default=default_workers(), type=int,
                        help="data loading processes (4, or the available cores if fewer)")
    parser.add_argument("--device", default="auto", type=device_type, metavar="{auto,cpu,cuda,cuda:N}",
                        help="auto: cuda when available, otherwise cpu; cuda:N picks GPU N")
    parser.add_argument("--gpus", default=None, type=gpu_type, metavar="ID",
                        help="GPU id to evaluate on, as train.py's --gpus (one id; same as --device cuda:ID)")
    add_dtype_arg(parser)
    add_compile_arg(parser)
    parser.add_argument("--ap", default="trapezoid", choices=["trapezoid", "plain"],
                        help="average precision: trapezoid (the release's numbers) or plain (torchreid, fast-reid)")
    parser.add_argument("--rerank", action="store_true",
                        help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) before scoring (ranking datasets)")
    parser.add_argument("--vis", default=0, type=int, metavar="N",
                        help="write rank-list pictures of N queries to <vis-dir>/<dataset>_rank_<query>.png")
    parser.add_argument("--vis-dir", default="figs", metavar="DIR", help="folder of the --vis pictures")
    parser.add_argument("--test-size", default=800, type=int, choices=[800, 1600, 2400],
                        help="vehicleid: test list (test_list_<N>.txt)")
    parser.add_argument("--trials", default=10, type=int, help="vehicleid: number of seeded gallery draws")
    parser.add_argument("--kmeans", default="release", choices=["release", "kmeans++"],
                        help="car196/cub200: the k-means behind NMI: release (faiss's, seed 1234, 20 iterations; "
                             "the release's numbers) or kmeans++ (run to convergence; usually higher, "
                             "not comparable)")
    parser.add_argument("--direction", default="satellite2drone", choices=["satellite2drone", "drone2satellite"],
                        help="university1652: query view -> gallery view")
    parser.add_argument("--save-features", default=None, metavar="FILE.npz",
                        help="also write the test features: <split>_features (N, D) float32 L2-normalised, "
                             "<split>_paths, <split>_pids and <split>_camids for each split (query, gallery; "
                             "test for vehicleid, car196, cub200)")
    parser.add_argument("--metrics-json", default=None, metavar="FILE",
                        help="also write every metric printed (and the per-trial ones of vehicleid) as JSON")
    return parser


def eval_flag(args, name):
    """args.<name>, or the parser's default when `args` comes from another parser (train.py)."""
    if hasattr(args, name):
        return getattr(args, name)
    return get_args_parser().get_default(name)


def image_size(dataset_name, args):
    """(height, width): --img-height/--img-width, else the dataset's default from IMAGE_SIZE."""
    height, width = IMAGE_SIZE.get(dataset_name, (256, 128))
    given = eval_flag(args, "img_height"), eval_flag(args, "img_width")
    return (height if given[0] is None else given[0]), (width if given[1] is None else given[1])


@torch.no_grad()
def extract_features(model, loader, device, desc="features"):
    """Test-time features of every image the loader yields (the model must be in eval mode).

    Batches are `(imgs, labels, camids, ...)` as `datasets.image_dataset.collate_skip` makes them.
    Returns (features (N, 5F) float32 L2-normalised, labels (N,) int64, camids (N,) int64), on the CPU.
    """
    feats, labels, camids = [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", file=sys.stderr):
        if batch[0].shape[0] == 0:  # every image of the batch was unreadable (collate_skip)
            continue
        imgs = batch[0].to(device, non_blocking=True)
        feats.append(dbn_features(model, imgs).cpu())  # flip-summed, L2-normalised (utils/features.py)
        labels.append(torch.as_tensor(batch[1], dtype=torch.int64))
        camids.append(torch.as_tensor(batch[2], dtype=torch.int64))
    if not feats:
        dim = getattr(model, "feature_dim", 0)
        empty = torch.zeros(0, dtype=torch.int64)
        return torch.zeros(0, dim), empty, empty.clone()
    return torch.cat(feats), torch.cat(labels), torch.cat(camids)


def _item_features(model, items, dataset, args, device, view=None, desc="features"):
    """Features of `items` ((path, label[, camid]) tuples) and the index of the item behind each row.

    The loader carries the item's index as its label, so an unreadable image (dropped by
    collate_skip with a warning) cannot shift the rows against the item list.
    """

    height, width = image_size(dataset.name, args)
    transform = build_transform(dataset.family, height, width, train=False, view=view)
    tagged = [(item[0], i, item[2] if len(item) > 2 else 0) for i, item in enumerate(items)]
    loader = DataLoader(ImageDataset(tagged, transform), batch_size=eval_flag(args, "batch_size"),
                        shuffle=False, num_workers=eval_flag(args, "num_workers"),
                        collate_fn=collate_skip, pin_memory=device.type == "cuda")
    feats, index, _ = extract_features(model, loader, device, desc=desc)
    if len(index) < len(items):
        print(f"{desc}: {len(items) - len(index)} of {len(items)} images unreadable, left out")
    return feats, index.numpy()


def rank_metrics(qf, gf, q_pids, q_camids, g_pids, g_camids, args, keep_rows=()):
    """top1/top5/top10/mAP/mINP of L2-normalised query and gallery features, query block by query block.

    With `--rerank`, the k-reciprocal distances are streamed block by block from utils.rerank into
    utils.metrics (never the full query x gallery matrix). Returns (metrics, distance rows of the
    queries in `keep_rows` as a (len(keep_rows), G) array, for the pictures). metrics["left_out"]
    counts the queries without a correct gallery item (left out of CMC and mAP).
    """

    ap = eval_flag(args, "ap")
    check_scorable(q_pids, q_camids, g_pids, g_camids)
    keep_rows = np.asarray(keep_rows, dtype=np.int64)
    if eval_flag(args, "rerank"):
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


def _vis_rows(args, num_query):
    """Indices of the --vis N pictured queries, spread evenly over the query list."""
    n = min(eval_flag(args, "vis"), num_query)
    return np.unique(np.linspace(0, num_query - 1, n).round().astype(np.int64)) if n > 0 else np.zeros(0, np.int64)


def _pictures(dataset, prefix, rows, dist, query, gallery, args, junk_same_camera=True):
    """Rank-list pictures of the queries `rows` (distance rows `dist`), as <vis-dir>/<prefix>_rank_<query>.png."""

    if not len(rows):
        return
    folder = eval_flag(args, "vis_dir")
    written = save_rank_lists(dist, [query[i] for i in rows], gallery, folder, prefix, query_ids=rows,
                              junk_same_camera=junk_same_camera, cell=cell_size(*image_size(dataset.name, args)))
    print(f"rank-list pictures: {len(written)} written to {os.path.join(folder, prefix)}_rank_*.png")


def _evaluate_split(model, dataset, query, gallery, args, device, views=(None, None), prefix=None):
    qf, qi = _item_features(model, query, dataset, args, device, view=views[0], desc="query")
    gf, gi = _item_features(model, gallery, dataset, args, device, view=views[1], desc="gallery")
    query, gallery = [query[i] for i in qi], [gallery[i] for i in gi]
    ids = [np.array([item[k] for item in items], dtype=np.int64) for items in (query, gallery) for k in (1, 2)]
    save_features(eval_flag(args, "save_features"), query=(qf, query), gallery=(gf, gallery))
    rows = _vis_rows(args, len(query))
    metrics, dist = rank_metrics(qf, gf, *ids, args, keep_rows=rows)
    _pictures(dataset, prefix or dataset.name, rows, dist, query, gallery, args)
    return metrics


def save_features(path, **splits):
    """--save-features: for each split name, (features (N, D), items (path, pid[, camid])) as
    <split>_features float32, <split>_paths, <split>_pids and <split>_camids (-1 when unknown) in
    one .npz. Nothing is written when `path` is None."""
    if path is None:
        return
    arrays = {}
    for name, (feats, items) in splits.items():
        arrays[f"{name}_features"] = np.asarray(feats, dtype=np.float32)
        arrays[f"{name}_paths"] = np.array([item[0] for item in items], dtype=str)
        arrays[f"{name}_pids"] = np.array([item[1] for item in items], dtype=np.int64)
        arrays[f"{name}_camids"] = np.array([item[2] if len(item) > 2 else -1 for item in items], dtype=np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)
    counts = ", ".join(f"{name} {len(items)}" for name, (_, items) in splits.items())
    print(f"features ({counts}) written to {path}")


def _evaluate_vehicleid(model, dataset, args, device):
    size, n = eval_flag(args, "test_size"), eval_flag(args, "trials")
    trials = [dataset.make_trial(size, seed) for seed in range(n)]
    paths = sorted({item[0] for query, gallery in trials for item in query + gallery})
    feats, index = _item_features(model, [(p, 0, 0) for p in paths], dataset, args, device,
                                  desc=f"test_list_{size}")
    row = {paths[i]: r for r, i in enumerate(index.tolist())}
    pid_of = {item[0]: item[1] for query, gallery in trials for item in query + gallery}
    save_features(eval_flag(args, "save_features"), test=(feats, [(paths[i], pid_of[paths[i]]) for i in index.tolist()]))
    results = []
    for seed, (query, gallery) in enumerate(trials):
        query = [item for item in query if item[0] in row]
        gallery = [item for item in gallery if item[0] in row]
        qf = feats[[row[item[0]] for item in query]]
        gf = feats[[row[item[0]] for item in gallery]]
        ids = [np.array([item[k] for item in items], dtype=np.int64) for items in (query, gallery) for k in (1, 2)]
        rows = _vis_rows(args, len(query)) if seed == 0 else ()
        metrics, dist = rank_metrics(qf, gf, *ids, args, keep_rows=rows)
        results.append(metrics)
        _pictures(dataset, f"{dataset.name}{size}", rows, dist, query, gallery, args)
    keys = ("top1", "top5", "top10", "mAP")
    table = np.array([[m[k] for k in keys] for m in results])
    print(f"vehicleid test_list_{size}, {n} trials (seeds 0..{n - 1}): " + " ".join(
        f"{k} std:{s:f} min:{lo:f} max:{hi:f}"
        for k, s, lo, hi in zip(keys, table.std(0), table.min(0), table.max(0))))
    mean = dict(zip(keys, table.mean(0).tolist()))
    mean["mINP"] = float(np.mean([m["mINP"] for m in results]))
    mean.update(num_query=results[0]["num_query"], num_gallery=results[0]["num_gallery"],
                left_out=results[0]["left_out"], trials=results)
    return mean


def _evaluate_retrieval(model, dataset, args, device):

    feats, index = _item_features(model, dataset.test, dataset, args, device, desc="test")
    items = [(dataset.test[i][0], dataset.test[i][1], 0) for i in index]
    labels = np.array([item[1] for item in items], dtype=np.int64)
    save_features(eval_flag(args, "save_features"), test=(feats, [item[:2] for item in items]))
    recall = recall_at_k(feats, labels, ks=(1, 2, 4, 8))
    clusters = kmeans(feats, len(np.unique(labels)), seed=1234, method=eval_flag(args, "kmeans"))
    metrics = {f"R{k}": float(recall[k]) for k in (1, 2, 4, 8)}
    metrics.update(NMI=float(normalized_mutual_info(labels, np.asarray(clusters))), num_images=len(items))
    rows = _vis_rows(args, len(items))
    if len(rows):
        dist = -(feats[torch.from_numpy(rows)] @ feats.T).double().numpy()
        dist[np.arange(len(rows)), rows] = np.inf  # an image is not its own neighbour
        _pictures(dataset, dataset.name, rows, dist, items, items, args, junk_same_camera=False)
    return metrics


def evaluate(model, dataset, args):
    """Evaluate `model` (a DBN) on the test split of `dataset` (from datasets.build_dataset).

    `args` needs the flags of get_args_parser() that matter for the dataset; missing ones take
    the parser's defaults (so train.py can pass its own args). The model runs where its
    parameters are, in eval mode; its train/eval mode is restored afterwards.
    Returns (metrics dict, result line in the release's format).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if dataset.family == "metric":
            metrics = _evaluate_retrieval(model, dataset, args, device)
            return metrics, RECALL_LINE.format(**metrics)
        if dataset.family == "university":
            direction = eval_flag(args, "direction")
            views = tuple(direction.split("2"))
            query, gallery = dataset.make_split(direction)
            metrics = _evaluate_split(model, dataset, query, gallery, args, device, views=views,
                                      prefix=f"{dataset.name}_{direction}")
        elif dataset.query is None:
            metrics = _evaluate_vehicleid(model, dataset, args, device)
        else:
            metrics = _evaluate_split(model, dataset, dataset.query, dataset.gallery, args, device)
    finally:
        model.train(was_training)
    print(f"queries without a correct gallery item (left out of CMC and mAP): "
          f"{metrics['left_out']} of {metrics['num_query']}")
    return metrics, RANK_LINE.format(**metrics)


def load_model(args, device, default_size, default_net=None):
    """DBN of the --weights checkpoint, in eval mode (BatchNorm folded) on `device`.

    The variant and the input size come from the file where it records them (train.py's
    --save-path format, or the args of a _last.pth); --net, --img-height and --img-width fill in
    what it does not say and must agree with what it does. Sets args.net, args.img_height and
    args.img_width; where neither the file nor the flags give the size it is `default_size` (the
    script's, by default the dataset's), with a warning (a bare state_dict does not say what size
    it was trained at); `default_net` is the variant where neither says (weights of no released width).
    Raises network.CheckpointError (missing or unreadable file, a backbone, a flag that contradicts it).
    """

    path = args.weights
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path} (pass --weights PATH: the file train.py "
                              "wrote to --save-path, its _last.pth checkpoint, or the release's params/ema.pth)")
    model, info = DBN.from_checkpoint(path, net=eval_flag(args, "net"), img_height=eval_flag(args, "img_height"),
                                      img_width=eval_flag(args, "img_width"), fallback_net=default_net)
    args.net = info["variant"]
    if None in (info["img_height"], info["img_width"]):
        args.img_height = info["img_height"] or default_size[0]
        args.img_width = info["img_width"] or default_size[1]
        print(f"warning: {path} holds bare weights, which do not record the input size they were trained at; "
              f"evaluating at {args.img_height}x{args.img_width} (this dataset's default). If it was trained at "
              "another size (python train.py --demo: 128x64), pass --img-height H --img-width W",
              file=sys.stderr)
    else:
        args.img_height, args.img_width = info["img_height"], info["img_width"]
    model = model.fuse().to(device)  # conv+BN folded: same features, faster
    return prepare_for_inference(model, eval_flag(args, "dtype"), eval_flag(args, "compile"))


def device_type(text):
    """--device: auto, cpu, cuda or cuda:N."""
    if text in ("auto", "cpu", "cuda"):
        return text
    name, _, index = str(text).partition(":")
    if name == "cuda" and index.isdigit():
        return f"cuda:{int(index)}"
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N (a GPU id), got {text!r}")


def gpu_type(text):
    if not str(text).strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected one GPU id (an integer >= 0): evaluation runs on one GPU; "
                                         f"got {text!r}")
    return int(text)


def _device(args, parser):
    """torch.device of --device / --gpus (--gpus ID is --device cuda:ID)."""
    name = args.device
    if args.gpus is not None:
        if name not in ("auto", "cuda", f"cuda:{args.gpus}"):
            parser.error(f"--gpus {args.gpus} and --device {name} disagree; give one of them")
        name = f"cuda:{args.gpus}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    device = torch.device(name)
    check_gpu(parser, f"--gpus {args.gpus}" if args.gpus is not None else f"--device {name}", device.index)
    return device


def main(dataset, argv=None, *, weights="params/ema.pth", net=None, img_height=None, img_width=None):
    """Entry point of test_<dataset>.py: parse argv, load --weights, evaluate, print the result line last
    (the ranking datasets' mINP line just above it).

    `weights`, `net`, `img_height`, `img_width` are the script's own defaults (the constants at the top of
    each test_<dataset>.py): --weights when the flag is not given; the variant and the input size when
    neither the flags nor the checkpoint say (None: the dataset's size from IMAGE_SIZE).
    A missing or malformed dataset or checkpoint prints the reason to stderr and exits with status 2.
    Returns the metrics dict.
    """
    if dataset not in IMAGE_SIZE:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(IMAGE_SIZE)}")
    show_warnings_as_lines()
    height, width = img_height or IMAGE_SIZE[dataset][0], img_width or IMAGE_SIZE[dataset][1]
    parser = argparse.ArgumentParser(f"test_{dataset}.py", parents=[get_args_parser()], formatter_class=HelpFormatter,
                                     description=f"Evaluate a DBN checkpoint on {dataset} (default input "
                                                 f"{height}x{width}); the last line printed is the result "
                                                 "in the release's format.")
    parser.set_defaults(weights=weights)
    args = parser.parse_args(argv)
    require_at_least(parser, args, 1, "batch_size", "trials")
    shown = (height if args.img_height is None else args.img_height,  # a flag left out: the script's default
             width if args.img_width is None else args.img_width)
    if min(shown) < 16:  # as train.py
        parser.error(f"--img-height/--img-width must be at least 16 (output stride 16), got "
                     f"{shown[0]}x{shown[1]}")
    require_at_least(parser, args, 0, "num_workers", "vis")
    if args.save_features is not None and not args.save_features.endswith(".npz"):
        parser.error(f"--save-features {args.save_features}: give a file name ending in .npz")
    for flag, path in (("--save-features", args.save_features), ("--metrics-json", args.metrics_json)):
        if path is not None and os.path.isdir(path):
            parser.error(f"{flag} {path} is a folder; give a file name")
    if args.rerank and dataset in ("car196", "cub200"):
        parser.error(f"--rerank applies to query/gallery rankings; {dataset} is scored by Recall@K and NMI")
    device = _device(args, parser)
    try:
        check_dtype(args.dtype, device)
    except ValueError as err:
        parser.error(f"--dtype {err}")
    tune_allocator(device)

    try:
        model = load_model(args, device, (height, width), net)  # the variant and the input size recorded in --weights
        print(f"test_{dataset}: " + " ".join(f"{k}={v}" for k, v in vars(args).items()))
        data = build_dataset(dataset, args.dataset_root)
        print(data.summary())
        metrics, line = evaluate(model, data, args)
    except (DatasetError, CheckpointError, EvaluationError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"test_{dataset}.py: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    if args.metrics_json is not None:
        os.makedirs(os.path.dirname(os.path.abspath(args.metrics_json)), exist_ok=True)
        with open(args.metrics_json, "w") as f:
            json.dump({"dataset": dataset, "weights": args.weights, "net": args.net,
                       "img_height": args.img_height, "img_width": args.img_width, "metrics": metrics}, f, indent=1)
        print(f"metrics written to {args.metrics_json}")
    if "mINP" in metrics:
        print(MINP_LINE.format(**metrics))
    print(line)
    return metrics
