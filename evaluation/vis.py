"""Rank-list pictures for `--vis N`: a query and its top-ranked gallery images, one PNG per query.

Layout of one picture (left to right): the query in a blue frame, a gap, then the top-k gallery
images in ranking order. Every gallery image is framed by what it is for this query:

- green: correct (same identity, counted as a hit),
- red: wrong (another identity or a distractor),
- grey with the word "junk": same identity seen by the same camera, which the ReID protocol
  removes from the ranking before scoring (the picture shows the raw ranking so junk is visible),
- black: unknown (the query's identity is not known, as in search.py on unlabelled images).

A caption row above the images gives "query" and the rank of each gallery image (1-based, in
the raw ranking). Pillow only.
"""
import os
import warnings

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "query": (0, 0, 255),
    "correct": (0, 200, 0),
    "wrong": (220, 0, 0),
    "junk": (128, 128, 128),
    "unknown": (0, 0, 0),
}
BACKGROUND = (255, 255, 255)
BORDER = 4      # frame width in pixels
GAP = 4         # space between two gallery cells
QUERY_GAP = 16  # space between the query and the first gallery cell
MARGIN = 6      # around the whole picture
CAPTION = 14    # height of the caption row above the images


def cell_size(img_height, img_width, height=128):
    """Picture cell (width, height) for a model input of img_height x img_width: same aspect, `height` tall."""
    return max(1, round(height * img_width / img_height)), height


def _load(path, size):
    try:
        with Image.open(path) as img:
            return img.convert("RGB").resize(size, Image.BILINEAR)
    except OSError as err:
        warnings.warn(f"rank-list picture: cannot read {path} ({err}); drawing a blank cell")
        return Image.new("RGB", size, BACKGROUND)


def _framed(draw, canvas, img, x, y, colour):
    """Paste `img` at (x + BORDER, y + BORDER) inside a frame of `colour`; returns the cell's outer width."""
    w, h = img.size
    draw.rectangle([x, y, x + w + 2 * BORDER - 1, y + h + 2 * BORDER - 1], fill=colour)
    canvas.paste(img, (x + BORDER, y + BORDER))
    return w + 2 * BORDER


def gallery_cell_x(k, cell):
    """Left edge (outer frame) of the k-th (0-based) gallery cell in a picture with cell size `cell`."""
    outer = cell[0] + 2 * BORDER
    return MARGIN + outer + QUERY_GAP + k * (outer + GAP)


def draw_rank_list(query_path, gallery_paths, marks, cell=(64, 128)):
    """Picture of one query and its ranked gallery images.

    gallery_paths: paths in ranking order; marks: one of "correct", "wrong", "junk", "unknown" per path.
    Returns a PIL RGB image of width gallery_cell_x(n, cell) - GAP + MARGIN (n = len(gallery_paths))
    and height 2 * MARGIN + CAPTION + cell[1] + 2 * BORDER.
    """
    if len(marks) != len(gallery_paths):
        raise ValueError(f"{len(gallery_paths)} gallery paths but {len(marks)} marks")
    bad = sorted(set(marks) - {"correct", "wrong", "junk", "unknown"})
    if bad:
        raise ValueError(f"unknown marks {bad}; valid: correct, wrong, junk, unknown")
    n = len(gallery_paths)
    outer_h = cell[1] + 2 * BORDER
    width = gallery_cell_x(n, cell) - (GAP if n else QUERY_GAP) + MARGIN
    height = 2 * MARGIN + CAPTION + outer_h
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    top = MARGIN + CAPTION
    draw.text((MARGIN, MARGIN), "query", fill=(0, 0, 0))
    _framed(draw, canvas, _load(query_path, cell), MARGIN, top, COLOURS["query"])
    for k, (path, mark) in enumerate(zip(gallery_paths, marks)):
        x = gallery_cell_x(k, cell)
        caption = f"{k + 1} junk" if mark == "junk" else str(k + 1)
        draw.text((x, MARGIN), caption, fill=COLOURS[mark] if mark not in ("correct", "unknown") else (0, 0, 0))
        _framed(draw, canvas, _load(path, cell), x, top, COLOURS[mark])
    return canvas


def rank_marks(q_pid, q_camid, g_pids, g_camids, junk_same_camera=True):
    """'correct' / 'wrong' / 'junk' for each gallery item (same id and same camera is junk);
    'unknown' for all of them when the query's id (q_pid) is None."""
    if q_pid is None:
        return ["unknown"] * len(g_pids)
    marks = []
    for pid, camid in zip(g_pids, g_camids):
        if pid == q_pid:
            marks.append("junk" if junk_same_camera and camid == q_camid else "correct")
        else:
            marks.append("wrong")
    return marks


def save_rank_lists(dist, query, gallery, out_dir, prefix, query_ids=None, topk=10,
                    junk_same_camera=True, cell=(64, 128)):
    """Write one PNG per row of `dist`: `<out_dir>/<prefix>_rank_<query index>.png`.

    dist: (n, G) distances of n queries to the gallery (smaller is closer; non-finite entries,
    such as a query's own image in a retrieval test set, are left out of the ranking).
    query: the n query items (path, pid, camid); gallery: the G gallery items (path, pid, camid).
    query_ids: the index of each row's query in the full query list (used in the file name).
    Returns the written paths.
    """
    dist = np.asarray(dist, dtype=np.float64)
    if dist.ndim != 2 or dist.shape != (len(query), len(gallery)):
        raise ValueError(f"distances of shape {dist.shape} do not match {len(query)} queries "
                         f"x {len(gallery)} gallery items")
    query_ids = range(len(query)) if query_ids is None else query_ids
    os.makedirs(out_dir, exist_ok=True)
    g_pids = [item[1] for item in gallery]
    g_camids = [item[2] for item in gallery]
    written = []
    for row, (path, pid, camid), qid in zip(dist, query, query_ids):
        order = np.argsort(row, kind="stable")
        order = order[np.isfinite(row[order])][:topk]
        marks = rank_marks(pid, camid, [g_pids[j] for j in order], [g_camids[j] for j in order],
                           junk_same_camera)
        picture = draw_rank_list(path, [gallery[j][0] for j in order], marks, cell)
        out = os.path.join(out_dir, f"{prefix}_rank_{qid}.png")
        picture.save(out)
        written.append(out)
    return written
