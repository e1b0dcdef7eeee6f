"""search.py: ranked gallery paths with scores (from images or an extract.py .npz), rank-list pictures,
and every usage error's message."""
import json
import os

import numpy as np
import pytest
import torch

import extract
import search
from evaluation import features
from network import DBN, make_checkpoint

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
    broken = error("--gallery", str(tmp_path / "broken.npz"))
    assert f"cannot read {tmp_path / 'broken.npz'} as an .npz file: it is not a zip archive of arrays" in broken
    assert "allow_pickle" not in broken  # numpy's advice does not apply to a file that is no .npz
    assert "not found: nowhere.jpg" in error("--gallery", npz, "--query", "nowhere.jpg")


# --- features from another model or preprocessing ---------------------------------------------------------

def rewrite_provenance(src, dst, **changes):
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    made_by = json.loads(str(arrays["provenance"]))
    made_by.update(changes)
    arrays["provenance"] = np.array(json.dumps(made_by))
    np.savez(dst, **arrays)
    return made_by


def test_extract_records_what_produced_the_features(search_inputs):
    weights, _, npz, _ = search_inputs
    with np.load(npz) as data:
        made_by = json.loads(str(data["provenance"]))
    model, info = features.load_for_inference(weights)
    assert made_by == {"weights_id": info["weights_id"], "variant": "small", "img_height": 64, "img_width": 32,
                       "transform": "reid", "flip": True, "dtype": "float32"}
    assert len(info["weights_id"]) == 16 and info["weights_id"] == features.weights_id(DBN.from_checkpoint(weights)[0])


def test_a_gallery_of_another_model_is_refused_naming_both_sides(search_inputs, capsys, tmp_path):
    weights, gallery, npz, queries = search_inputs
    torch.manual_seed(1)  # another model of the same variant: features of the same size, other weights and input
    other = str(tmp_path / "other.pth")
    torch.save(make_checkpoint(DBN(num_classes=3, pretrained=None), 32, 16, dataset="market1501", transform="reid"),
               other)
    ours, theirs = features.load_for_inference(weights)[1]["weights_id"], features.load_for_inference(other)[1]["weights_id"]
    assert ours != theirs
    code = search.main(["--weights", other, "--query", *queries, "--gallery", npz, *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (f"search.py: error: {npz} was extracted by another model or preprocessing than the queries (weights_id: "
            f"{ours} (gallery) vs {theirs} (queries); img_height: 64 (gallery) vs 32 (queries); img_width: 32 "
            "(gallery) vs 16 (queries))") in err
    assert "pass --allow-mixed to search it on purpose" in err
    assert search.main(["--weights", other, "--query", *queries, "--gallery", npz, "--allow-mixed", *SMALL]) == 0
    out, err = capsys.readouterr()
    assert "warning: --allow-mixed: searching features of another model or preprocessing (weights_id" in err
    assert len(ranked(out)) == 2


@pytest.mark.parametrize("field, value", [("dtype", "bfloat16"), ("flip", False), ("transform", "metric")])
def test_a_gallery_of_other_preprocessing_or_precision_is_refused(search_inputs, capsys, tmp_path, field, value):
    weights, _, npz, queries = search_inputs
    mixed = str(tmp_path / "mixed.npz")
    rewrite_provenance(npz, mixed, **{field: value})
    assert search.main(["--weights", weights, "--query", *queries, "--gallery", mixed, *SMALL]) == 2
    err = capsys.readouterr().err
    queries_value = {"dtype": "float32", "flip": True, "transform": "reid"}[field]
    assert f"({field}: {value} (gallery) vs {queries_value} (queries))" in err


def test_a_gallery_that_records_nothing_is_searched_with_a_warning(search_inputs, capsys, tmp_path):
    weights, _, npz, queries = search_inputs
    bare = str(tmp_path / "bare.npz")
    with np.load(npz) as data:
        np.savez(bare, **{k: data[k] for k in data.files if k != "provenance"})
    assert search.main(["--weights", weights, "--query", *queries, "--gallery", bare, *SMALL]) == 0
    out, err = capsys.readouterr()
    assert f"warning: {bare} records nothing of the model that produced its features" in err
    assert len(ranked(out)) == 2


def test_the_test_scripts_features_record_what_produced_them(tmp_path):
    from evaluation.evaluator import save_features
    made_by = features.provenance("abc", "small", 64, 32, "reid", True, "float32")
    save_features(str(tmp_path / "f.npz"), made_by, query=(np.zeros((1, 4)), [("q.jpg", 1, 2)]),
                  gallery=(np.zeros((2, 4)), [("g1.jpg", 1, 3), ("g2.jpg", 4, 2)]))
    with np.load(tmp_path / "f.npz") as data:
        assert features.read_provenance(data) == made_by
        assert data["gallery_pids"].tolist() == [1, 4]
