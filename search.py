"""Rank a gallery for query images by test-time feature similarity (dot product of L2-normalised features).

    python search.py --weights params/ema.pth --query person.jpg --gallery gallery.npz --topk 10
    python search.py --weights params/ema.pth --query q1.jpg q2.jpg --gallery data/frames --vis figs/search

--gallery is an .npz written by extract.py or a folder / glob / list of images, whose features are
computed first. An .npz records what produced its features (weights, variant, input size, transform,
flip, dtype): one that differs from --weights and the flags is refused, naming both sides, unless
--allow-mixed. For each query, the top --topk gallery images are printed with their scores; --vis DIR
writes one rank-list picture per query (evaluation/vis.py; frames are green / red / grey junk when the
names carry ids, black when the query's id is unknown). Exit status 2 on a usage error.
"""
import argparse
import os
import sys
import warnings
import zipfile

import numpy as np
import torch

from datasets.image_list import ImageListError, collect_images
from evaluation import features
from utils.cli import HelpFormatter, check_output, require_at_least
from utils.console import show_warnings_as_lines


def get_args_parser():
    parser = argparse.ArgumentParser(
        "search.py", parents=[features.get_args_parser()], formatter_class=HelpFormatter,
        description="Print the gallery images most similar to each query image, with their scores.")
    parser.add_argument("--query", required=True, nargs="+", metavar="IMG",
                        help="query images (or folders, globs, .txt lists of them)")
    parser.add_argument("--gallery", required=True, metavar="DIR|GLOB|LIST|NPZ",
                        help="an .npz from extract.py, or images as extract.py --images takes them")
    parser.add_argument("--topk", default=10, type=int, help="gallery images shown per query")
    parser.add_argument("--vis", default=None, metavar="DIR",
                        help="write the rank-list picture of each query to DIR/search_rank_<query>.png")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="search an .npz gallery extracted with another checkpoint, input size, transform, flip "
                             "or dtype than the queries (refused by default: the scores would not be comparable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the flags, the checkpoint, the queries and the gallery, then exit")
    return parser


def load_features(path):
    """(features (N, D) float32, [(path, pid or None, camid or None)], provenance or None) of an extract.py
    .npz file."""
    if not zipfile.is_zipfile(path):  # an .npz is a zip of .npy arrays
        raise ImageListError(f"cannot read {path} as an .npz file: it is not a zip archive of arrays (write the "
                             "gallery's features with extract.py)")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ImageListError(f"cannot read {path} as an .npz file ({err})") from None
    with data:
        missing = [k for k in ("features", "paths") if k not in data.files]
        if missing:
            raise ImageListError(f"{path} has no {' or '.join(missing)} array: write it with extract.py "
                                 f"(it holds {', '.join(data.files) or 'nothing'})")
        feats, paths = data["features"].astype(np.float32), [str(p) for p in data["paths"]]
        pids = data["pids"].tolist() if "pids" in data.files else [None] * len(paths)
        camids = data["camids"].tolist() if "camids" in data.files else [None] * len(paths)
        made_by = features.read_provenance(data)
    if feats.ndim != 2 or len(feats) != len(paths):
        raise ImageListError(f"{path}: features of shape {feats.shape} do not match {len(paths)} paths")
    return feats, list(zip(paths, pids, camids)), made_by


def image_items(specs):
    """[(path, pid or None, camid or None)] of image specs (folders, globs, lists, images)."""
    items = []
    for spec in specs:
        paths, pids, camids = collect_images(spec)
        items += list(zip(paths, pids or [None] * len(paths), camids or [None] * len(paths)))
    return items


def features_of(extractor, items, args, desc):
    feats, index = extractor.extract_paths([item[0] for item in items], num_workers=args.num_workers, desc=desc)
    if len(index) < len(items):
        print(f"{desc}: {len(items) - len(index)} of {len(items)} images unreadable, left out (see the warnings)")
    return feats, [items[i] for i in index]


def show(item):
    path, pid, camid = item
    tags = [f"pid {pid}"] if pid is not None else []
    tags += [f"camera {camid}"] if camid is not None else []
    return f"{path} ({', '.join(tags)})" if tags else path


def main(argv=None):
    show_warnings_as_lines()
    parser = get_args_parser()
    args = parser.parse_args(argv)
    features.check_args(args, parser)
    if args.vis:
        check_output(parser, "--vis", args.vis, folder=True)
    require_at_least(parser, args, 1, "topk")
    from network import CheckpointError
    npz = args.gallery.endswith(".npz")
    try:
        queries = image_items(args.query)
        if npz:
            if not os.path.isfile(args.gallery):
                raise ImageListError(f"--gallery {args.gallery}: file not found (write it with extract.py)")
            gallery_feats, gallery, made_by = load_features(args.gallery)
        else:
            gallery = image_items([args.gallery])
        extractor = features.extractor_from_args(args)
    except (ImageListError, CheckpointError) as err:
        print(f"search.py: error: {err}", file=sys.stderr)
        return 2
    if npz and made_by is None:
        warnings.warn(f"{args.gallery} records nothing of the model that produced its features; the search "
                      f"assumes {args.weights} with the same flags")
    elif npz:
        differences = features.provenance_differences(made_by, extractor.provenance)
        if differences:
            detail = "; ".join(f"{k}: {g} (gallery) vs {q} (queries)" for k, g, q in differences)
            if not args.allow_mixed:
                print(f"search.py: error: {args.gallery} was extracted by another model or preprocessing than the "
                      f"queries ({detail}); its scores would not be comparable. Extract the gallery again with "
                      f"--weights {args.weights} and the same flags, or pass --allow-mixed to search it on purpose",
                      file=sys.stderr)
                return 2
            warnings.warn(f"--allow-mixed: searching features of another model or preprocessing ({detail})")
    if npz and gallery_feats.shape[1] != extractor.feature_dim:
        print(f"search.py: error: {args.gallery} holds {gallery_feats.shape[1]}-d features but {args.weights} gives "
              f"{extractor.feature_dim}-d ones; extract the gallery with the same checkpoint", file=sys.stderr)
        return 2
    print(features.describe(extractor))
    print(f"queries: {len(queries)}; gallery: {len(gallery)} images from {args.gallery}")
    if args.dry_run:
        print("dry run: nothing searched")
        return 0
    if not npz:
        gallery_feats, gallery = features_of(extractor, gallery, args, "gallery")
    query_feats, queries = features_of(extractor, queries, args, "query")
    scores = torch.from_numpy(query_feats) @ torch.from_numpy(gallery_feats).T  # (Q, G) cosine similarities
    topk = min(args.topk, len(gallery))
    best, order = scores.topk(topk, dim=1)
    for q, item in enumerate(queries):
        print(f"query {q + 1}/{len(queries)}: {show(item)}")
        for rank, (score, g) in enumerate(zip(best[q].tolist(), order[q].tolist()), 1):
            print(f"  {rank:>4}  {score:.4f}  {show(gallery[g])}")
    if args.vis:
        from evaluation.vis import cell_size, save_rank_lists
        written = save_rank_lists(-scores.double().numpy(), queries, gallery, args.vis, "search", topk=topk,
                                  cell=cell_size(extractor.img_height, extractor.img_width))
        print(f"rank-list pictures: {len(written)} written to {os.path.join(args.vis, 'search_rank_*.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
