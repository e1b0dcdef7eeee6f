"""Rank-list pictures: size, frame colours, ranking order, junk marking and argument checks."""
import os

import numpy as np
import pytest
from PIL import Image

from evaluation import vis

CELL = (32, 64)


def solid(tmp_path, name, colour, size=(20, 40)):
    path = os.path.join(tmp_path, f"{name}.png")
    Image.new("RGB", size, colour).save(path)
    return path


def palette(n):
    # distinct colours unlike any frame colour
    return [(10 + 20 * i, 60 + 7 * i, 250 - 15 * i) for i in range(n)]


def cell_pixels(picture, x, cell=CELL):
    """(frame pixel, centre pixel) of the cell whose outer frame starts at x."""
    top = vis.MARGIN + vis.CAPTION
    frame = picture.getpixel((x + 1, top + cell[1] // 2))
    centre = picture.getpixel((x + vis.BORDER + cell[0] // 2, top + vis.BORDER + cell[1] // 2))
    return frame, centre


def test_cell_size_keeps_the_input_aspect():
    assert vis.cell_size(256, 128) == (64, 128)
    assert vis.cell_size(384, 384) == (128, 128)
    assert vis.cell_size(384, 128, height=96) == (32, 96)


def test_draw_rank_list_size_and_colours(tmp_path):
    colours = palette(11)
    query = solid(tmp_path, "q", colours[0])
    gallery = [solid(tmp_path, f"g{i}", c) for i, c in enumerate(colours[1:])]
    marks = ["correct", "wrong", "junk", "correct", "wrong", "wrong", "junk", "correct", "wrong", "wrong"]
    picture = vis.draw_rank_list(query, gallery, marks, cell=CELL)

    outer_w, outer_h = CELL[0] + 2 * vis.BORDER, CELL[1] + 2 * vis.BORDER
    # margin, query, query gap, ten cells with nine gaps, margin: 6 + 40 + 16 + 10*40 + 9*4 + 6 = 504
    assert picture.size == (504, 98)
    assert picture.size == (2 * vis.MARGIN + 11 * outer_w + vis.QUERY_GAP + 9 * vis.GAP,
                            2 * vis.MARGIN + vis.CAPTION + outer_h)
    assert picture.mode == "RGB"

    frame, centre = cell_pixels(picture, vis.MARGIN)
    assert frame == vis.COLOURS["query"] and centre == colours[0]
    for k, mark in enumerate(marks):
        x = vis.gallery_cell_x(k, CELL)
        frame, centre = cell_pixels(picture, x)
        assert frame == vis.COLOURS[mark], (k, mark)
        assert centre == colours[k + 1], k
        # white space right of every cell (gap or margin)
        assert picture.getpixel((x + outer_w, vis.MARGIN + vis.CAPTION + 5)) == vis.BACKGROUND
    assert vis.gallery_cell_x(9, CELL) + outer_w == picture.size[0] - vis.MARGIN
    # captions: "3 junk" in grey (wider than the black "1"), the wrong one's "2" in red
    caption = np.asarray(picture)[vis.MARGIN:vis.MARGIN + vis.CAPTION].astype(int)
    def ink(k):
        x = vis.gallery_cell_x(k, CELL)
        return caption[:, x:x + outer_w]
    junk, correct, wrong = ink(2), ink(0), ink(1)
    junk_columns = (junk < 255).any(-1).any(0).sum()
    assert junk_columns > 2 * (correct < 255).any(-1).any(0).sum() > 0
    assert junk.min() >= vis.COLOURS["junk"][0] and (junk[..., 0] == junk[..., 2]).all()
    assert correct.min() < 100
    assert (wrong[..., 0] - wrong[..., 1] > 100).any()


def test_save_rank_lists_ranks_and_marks(tmp_path):
    colours = palette(8)
    # gallery: (path, pid, camid); the query is pid 1 seen by camera 0
    gallery = [(solid(tmp_path, f"g{i}", colours[i]), pid, cam)
               for i, (pid, cam) in enumerate([(1, 1), (2, 1), (1, 0), (3, 2), (1, 2), (2, 0), (4, 1)])]
    query = [(solid(tmp_path, "q", colours[7]), 1, 0)]
    dist = np.array([[0.5, 0.1, 0.2, 0.9, np.inf, 0.3, 0.7]])  # the inf item is left out
    out = os.path.join(tmp_path, "figs")
    written = vis.save_rank_lists(dist, query, gallery, out, "market1501", query_ids=[42], topk=5, cell=CELL)
    assert written == [os.path.join(out, "market1501_rank_42.png")]
    picture = Image.open(written[0]).convert("RGB")
    order = [1, 2, 5, 0, 6]  # by distance, the inf one never shown
    expected = ["wrong", "junk", "wrong", "correct", "wrong"]
    assert picture.size[0] == vis.gallery_cell_x(5, CELL) - vis.GAP + vis.MARGIN
    for k, (g, mark) in enumerate(zip(order, expected)):
        frame, centre = cell_pixels(picture, vis.gallery_cell_x(k, CELL))
        assert (frame, centre) == (vis.COLOURS[mark], colours[g]), k

    # retrieval sets have no camera junk: the same-camera hit is correct there
    written = vis.save_rank_lists(dist, query, gallery, out, "cub200", topk=2, junk_same_camera=False, cell=CELL)
    picture = Image.open(written[0]).convert("RGB")
    assert os.path.basename(written[0]) == "cub200_rank_0.png"
    assert cell_pixels(picture, vis.gallery_cell_x(1, CELL))[0] == vis.COLOURS["correct"]


def test_unreadable_image_warns_and_draws_blank(tmp_path):
    bad = os.path.join(tmp_path, "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    good = solid(tmp_path, "ok", (1, 2, 3))
    with pytest.warns(UserWarning, match="broken.jpg"):
        picture = vis.draw_rank_list(good, [bad], ["wrong"], cell=CELL)
    frame, centre = cell_pixels(picture, vis.gallery_cell_x(0, CELL))
    assert frame == vis.COLOURS["wrong"] and centre == vis.BACKGROUND


def test_argument_errors(tmp_path):
    path = solid(tmp_path, "x", (0, 0, 0))
    with pytest.raises(ValueError, match="2 gallery paths but 1 marks"):
        vis.draw_rank_list(path, [path, path], ["wrong"])
    with pytest.raises(ValueError, match=r"unknown marks \['hit'\]; valid: correct, wrong, junk"):
        vis.draw_rank_list(path, [path], ["hit"])
    with pytest.raises(ValueError, match=r"distances of shape \(1, 3\) do not match 1 queries x 2 gallery"):
        vis.save_rank_lists(np.zeros((1, 3)), [(path, 0, 0)], [(path, 0, 0)] * 2, str(tmp_path), "x")


def test_unknown_query_identity_draws_black_frames(tmp_path):
    assert vis.rank_marks(None, 0, [1, 2], [0, 1]) == ["unknown", "unknown"]
    assert vis.rank_marks(1, 0, [None, 1], [0, 1]) == ["wrong", "correct"]
    picture = np.asarray(vis.draw_rank_list(solid(tmp_path, "q", (9, 9, 9)), [solid(tmp_path, "g", (250, 250, 0))],
                                            ["unknown"], CELL))
    x, y = vis.gallery_cell_x(0, CELL), vis.MARGIN + vis.CAPTION
    assert tuple(picture[y, x]) == vis.COLOURS["unknown"] == (0, 0, 0)
