"""Test-time features of a set of images, with the test scripts' preprocessing, to an .npz file.

    python extract.py --weights params/ema.pth --images data/market1501/query --out query.npz
    python extract.py --weights params/ema.pth --images 'frames/**/*.jpg' --out frames.npz
    python extract.py --weights params/ema.pth --images my_data/query.txt --out query.npz

The .npz holds `features` (N, D) float32, L2-normalised (the dot product is the similarity),
`paths` (N,), and `pids` / `camids` (N,) int64 when every name carries them (Market-1501 names,
integer identity folders, or the list file's columns; see datasets/image_list.py), and `provenance`: what
produced the features (the weights' identity, variant, input size, transform, flip, dtype), which
search.py checks against its own model. Unreadable images are left out with a warning naming them. Exit status 2 on a usage error.
"""
import argparse
import json
import sys

import numpy as np

from datasets.image_list import ImageListError, collect_images
from evaluation import features
from utils.console import show_warnings_as_lines
from utils.cli import HelpFormatter, check_output
from utils.files import atomic_write


def get_args_parser():
    parser = argparse.ArgumentParser(
        "extract.py", parents=[features.get_args_parser()], formatter_class=HelpFormatter,
        description="Write the test-time features (the test scripts' preprocessing, flip-averaged, L2-normalised) "
                    "of a folder, glob or list of images to an .npz file.")
    parser.add_argument("--images", required=True, metavar="DIR|GLOB|LIST",
                        help="a folder (recursive), a glob pattern (quote it), an image, or a .txt list of "
                             "'path [pid [camid]]' lines (paths relative to the list's folder)")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the flags, the checkpoint and the images, print what would be done and exit")
    return parser


def save_features(path, feats, paths, pids=None, camids=None, provenance=None):
    """Write the .npz of extract.py (atomically: a crash leaves no half-written file), with what produced
    the features (evaluation.features.provenance, as JSON) so that search.py can refuse a mismatch."""
    arrays = {"features": np.asarray(feats, np.float32), "paths": np.asarray(paths, dtype=str)}
    if provenance is not None:
        arrays["provenance"] = np.array(json.dumps(provenance))
    if pids is not None:
        arrays["pids"] = np.asarray(pids, np.int64)
    if camids is not None:
        arrays["camids"] = np.asarray(camids, np.int64)
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def main(argv=None):
    show_warnings_as_lines()
    parser = get_args_parser()
    args = parser.parse_args(argv)
    features.check_args(args, parser)
    if not args.out.endswith(".npz"):
        parser.error(f"--out {args.out}: the file name must end in .npz")
    check_output(parser, "--out", args.out)
    from network import CheckpointError
    try:
        paths, pids, camids = collect_images(args.images)
        extractor = features.extractor_from_args(args)
    except (ImageListError, CheckpointError) as err:
        print(f"extract.py: error: {err}", file=sys.stderr)
        return 2
    print(features.describe(extractor))
    ids = ", with ids" + (" and cameras" if camids is not None else "") if pids is not None else ""
    print(f"images: {len(paths)} from {args.images}{ids}")
    if args.dry_run:
        print(f"dry run: would write {len(paths)} x {extractor.feature_dim} features to {args.out}")
        return 0
    feats, index = extractor.extract_paths(paths, num_workers=args.num_workers, desc="extract")
    if len(index) < len(paths):
        print(f"{len(paths) - len(index)} of {len(paths)} images unreadable, left out (see the warnings)")
    kept = [(paths[i], None if pids is None else pids[i], None if camids is None else camids[i]) for i in index]
    save_features(args.out, feats, [k[0] for k in kept], None if pids is None else [k[1] for k in kept],
                  None if camids is None else [k[2] for k in kept], extractor.provenance)
    print(f"wrote {len(index)} x {feats.shape[1]} features to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
