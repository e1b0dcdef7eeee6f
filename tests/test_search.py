"""search.py: ranked gallery paths with scores (from images or an extract.py .npz), rank-list pictures,
and every usage error's message."""
import os

import numpy as np
import pytest

import extract
import search

SMALL = ["--num-workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def search_inputs(small_market_root, dbn_checkpoint, tmp_path_factory):
    """(weights, gallery folder, its extract.py .npz, two query images) of conftest's small Market-1501 and
    seeded DBN checkpoint."""
    weights = dbn_checkpoint
    gallery = os.path.join(small_market_root, "market1501", "bounding_box_test")
    npz = str(tmp_path_factory.mktemp("search") / "gallery.npz")
    assert extract.main(["--weights", weights, "--images", gallery, "--out", npz, *SMALL]) == 0
    query = os.path.join(small_market_root, "market1501", "query")
    return weights, gallery, npz, [os.path.join(query, n) for n in sorted(os.listdir(query))[:2]]


def ranked(out):
    """[(query line, [(rank, score, path)])] of search.py's output."""
    blocks = []
    for line in out.splitlines():
        if line.startswith("query "):
            blocks.append((line, []))
        elif blocks and line.startswith("  "):
            rank, score, path = line.split()[:3]
            blocks[-1][1].append((int(rank), float(score), path))
    return blocks


def test_ranks_by_feature_similarity_from_images_or_npz(search_inputs, capsys, tmp_path):
    weights, gallery, npz, queries = search_inputs
    assert search.main(["--weights", weights, "--query", *queries, "--gallery", npz, "--topk", "4", *SMALL,
                        "--vis", str(tmp_path / "figs")]) == 0
    from_npz = ranked(capsys.readouterr().out)
    assert search.main(["--weights", weights, "--query", *queries, "--gallery", gallery, "--topk", "4", *SMALL]) == 0
    out = capsys.readouterr().out
    assert ranked(out) == from_npz and len(from_npz) == 2
    assert sorted(os.listdir(tmp_path / "figs")) == ["search_rank_0.png", "search_rank_1.png"]
    # the scores are the dot products of the extracted features, highest first
    saved = np.load(npz)
    assert extract.main(["--weights", weights, "--images", queries[0], "--out", str(tmp_path / "q.npz"), *SMALL]) == 0
    capsys.readouterr()
    scores = saved["features"] @ np.load(tmp_path / "q.npz")["features"][0]
    order = np.argsort(-scores, kind="stable")[:4]
    line, rows = from_npz[0]
    assert line.startswith(f"query 1/2: {queries[0]} (pid ")
    assert [r[2] for r in rows] == saved["paths"][order].tolist()
    assert [r[1] for r in rows] == pytest.approx(scores[order].tolist(), abs=1e-4)


def test_dry_run_and_topk_larger_than_the_gallery(search_inputs, capsys):
    weights, gallery, npz, queries = search_inputs
    assert search.main(["--weights", weights, "--query", queries[0], "--gallery", npz, "--dry-run", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "queries: 1; gallery: 10 images from" in out and "dry run: nothing searched" in out
    assert search.main(["--weights", weights, "--query", queries[0], "--gallery", npz, "--topk", "50", *SMALL]) == 0
    assert len(ranked(capsys.readouterr().out)[0][1]) == 10


def test_usage_errors(search_inputs, capsys, tmp_path):
    weights, gallery, npz, queries = search_inputs
    base = ["--weights", weights, "--query", queries[0], *SMALL]
    with pytest.raises(SystemExit) as info:
        search.main([*base, "--gallery", npz, "--topk", "0"])
    assert info.value.code == 2 and "--topk must be at least 1, got 0" in capsys.readouterr().err

    def error(*argv):
        assert search.main([*base, *argv]) == 2
        return capsys.readouterr().err

    missing = str(tmp_path / "none.npz")
    assert error("--gallery", missing) == f"search.py: error: --gallery {missing}: file not found (write it with " \
                                          "extract.py)\n"
    np.savez(tmp_path / "other.npz", feats=np.zeros((2, 3)))
    assert f"{tmp_path / 'other.npz'} has no features or paths array: write it with extract.py (it holds feats)" in \
        error("--gallery", str(tmp_path / "other.npz"))
    np.savez(tmp_path / "small.npz", features=np.zeros((2, 8), np.float32), paths=np.array(["a.jpg", "b.jpg"]))
    assert f"{tmp_path / 'small.npz'} holds 8-d features but {weights} gives 1920-d ones; extract the gallery with " \
           "the same checkpoint" in error("--gallery", str(tmp_path / "small.npz"))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    assert f"cannot read {tmp_path / 'broken.npz'} as an .npz file" in error("--gallery", str(tmp_path / "broken.npz"))
    assert "not found: nowhere.jpg" in error("--gallery", npz, "--query", "nowhere.jpg")
