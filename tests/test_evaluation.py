"""evaluation/evaluator.py and the test_<dataset>.py scripts, on generated datasets with a random DBN.

Each script runs in-process through `main(dataset, argv)` at a 64x32 input; one subprocess
checks the exit status and the absence of a traceback.
"""
import argparse
import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation import cli as eval_cli
from evaluation import evaluator as evaluation
from evaluation import features
from tests.helpers import seeded_dbn
from utils import malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ("market1501", "dukemtmc", "msmt17", "veri776", "vehicleid", "car196", "cub200",
            "university1652", "npdetected", "nplabeled")
NUM = r"(\d+\.\d{6})"
RANK_RE = re.compile(rf"^top1:{NUM} top5:{NUM} top10:{NUM} mAP:{NUM}$")
RECALL_RE = re.compile(rf"^Recall@1:{NUM} Recall@2:{NUM} Recall@4:{NUM} Recall@8:{NUM} NMI:{NUM}$")
SMALL = ["--img-height", "64", "--img-width", "32", "--num-workers", "0", "--batch-size", "32", "--device", "cpu"]


random_dbn = functools.partial(seeded_dbn, num_classes=7)  # random_dbn(net="small", seed=0): this module's DBN


@pytest.fixture(scope="module")
def bare_weights(tmp_path_factory):
    """A bare state_dict of random_dbn(): no input size recorded (for a described checkpoint: conftest's
    dbn_checkpoint)."""
    path = str(tmp_path_factory.mktemp("bare_weights") / "ema.pth")
    torch.save(random_dbn().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """Every dataset generated small (6 identities x 4 images, 2 cameras) under one root."""
    from datasets.synthetic import generate
    root = str(tmp_path_factory.mktemp("data"))
    for name in DATASETS:
        generate(name, root, ids=6, images_per_id=4, cameras=2, seed=0)
    return root


def run(capsys, dataset, *argv):
    """main(dataset, argv) -> (metrics, stdout lines, stderr)."""
    metrics = eval_cli.main(dataset, list(argv))
    out, err = capsys.readouterr()
    return metrics, out.strip().splitlines(), err


def run_error(capsys, dataset, *argv):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(dataset, list(argv))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    return err


# --- features -----------------------------------------------------------------------------------

def test_extract_features_is_flip_sum_of_five_embeddings_l2_normalised():
    model = random_dbn()
    torch.manual_seed(1)
    images = torch.rand(5, 3, 64, 32)
    labels, camids = torch.tensor([3, 1, 4, 1, 5]), torch.tensor([0, 1, 0, 2, 1])
    # batches as collate_skip gives them: (imgs, labels, camids, num_skipped)
    loader = [(images[:3], labels[:3], camids[:3], 0), (images[3:], labels[3:], camids[3:], 1)]
    feats, out_labels, out_camids = features.extract_features(model, loader, torch.device("cpu"))

    assert feats.shape == (5, 5 * 384) and feats.dtype == torch.float32
    assert model.feature_dim == 5 * 384
    with torch.no_grad():
        for i in range(5):  # one image at a time, flipped by index reversal of the width axis
            x = images[i:i + 1]
            plain = torch.cat(model(x), dim=1)
            flipped = torch.cat(model(x[..., torch.arange(31, -1, -1)]), dim=1)
            manual = (plain + flipped) / (plain + flipped).norm()
            torch.testing.assert_close(feats[i], manual[0], rtol=1e-4, atol=1e-6)
            # the flip matters: the unflipped feature alone is another vector
            assert (F.normalize(plain, dim=1)[0] - feats[i]).abs().max() > 1e-3
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    assert out_labels.tolist() == labels.tolist() and out_camids.tolist() == camids.tolist()


def test_extract_features_of_an_empty_loader():
    feats, labels, camids = features.extract_features(random_dbn(), [], torch.device("cpu"))
    assert feats.shape == (0, 5 * 384) and len(labels) == len(camids) == 0


def test_each_dataset_states_its_default_size_and_the_scripts_use_it(capsys):
    from datasets import DATASET_NAMES, dataset_class
    sizes = {name: dataset_class(name).image_size for name in DATASET_NAMES}
    assert sizes == {"market1501": (256, 128), "dukemtmc": (256, 128), "msmt17": (256, 128),
                     "npdetected": (256, 128), "nplabeled": (256, 128), "custom": (256, 128),
                     "veri776": (256, 256), "vehicleid": (256, 256), "car196": (256, 256), "cub200": (256, 256),
                     "university1652": (384, 384)}  # the release's commands
    for name, (height, width) in sizes.items():
        with pytest.raises(SystemExit):
            eval_cli.main(name, ["--help"])
        assert f"(default input {height}x{width})" in capsys.readouterr().out
    help_text = eval_cli.get_args_parser(add_help=True).format_help()
    assert "256x256: veri776, vehicleid, car196, cub200" in " ".join(help_text.split())


# --- scripts on generated data -------------------------------------------------------------------

def brute_force_rank(qf, gf, q, g):
    """CMC top1/5/10, trapezoid mAP and mINP by the definitions, one query at a time."""
    first_hits, aps, inps = [], [], []
    for i in range(len(q)):
        order = np.argsort(-(gf @ qf[i]), kind="stable")
        keep = [j for j in order if not (g[j][1] == q[i][1] and g[j][2] == q[i][2])]
        hits = [r for r, j in enumerate(keep) if g[j][1] == q[i][1]]
        if not hits:
            continue
        first_hits.append(hits[0])
        inps.append(len(hits) / (hits[-1] + 1))  # correct items / 1-based rank of the hardest one
        aps.append(np.mean([((n / r if r else 1.0) + (n + 1) / (r + 1)) / 2 for n, r in enumerate(hits)]))
    first_hits = np.array(first_hits)
    return {"top1": np.mean(first_hits < 1), "top5": np.mean(first_hits < 5),
            "top10": np.mean(first_hits < 10), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)),
            "left_out": len(q) - len(aps)}


def test_market1501_numbers_match_a_manual_pipeline(capsys, bare_weights, datasets_root):
    from datasets import build_dataset
    from datasets.transforms import build_transform

    metrics, lines, _ = run(capsys, "market1501", "--weights", bare_weights, "--dataset-root", datasets_root, *SMALL)
    assert RANK_RE.match(lines[-1]), lines[-1]

    data = build_dataset("market1501", datasets_root)
    model = random_dbn()
    model.load_state_dict(torch.load(bare_weights, weights_only=True))
    transform = build_transform("reid", 64, 32, train=False)

    def features(items):
        x = torch.stack([transform(Image.open(item[0]).convert("RGB")) for item in items])
        with torch.no_grad():
            f = torch.cat(model(x), 1) + torch.cat(model(x.flip(3)), 1)
        return F.normalize(f, dim=1).numpy()

    expected = brute_force_rank(features(data.query), features(data.gallery), data.query, data.gallery)
    for key in ("top1", "top5", "top10", "mAP", "mINP"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics["left_out"] == expected["left_out"]
    assert metrics["num_query"] == len(data.query) and metrics["num_gallery"] == len(data.gallery)
    assert lines[-1] == "top1:%f top5:%f top10:%f mAP:%f" % tuple(expected[k] for k in ("top1", "top5", "top10", "mAP"))
    assert lines[-2] == "mINP:%f" % expected["mINP"]  # its own line, just above the release's result line
    assert f"{expected['left_out']} of {len(data.query)}" in lines[-3]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_script_prints_its_line(capsys, bare_weights, datasets_root, dataset):
    extra = {"vehicleid": ["--trials", "2"], "university1652": ["--direction", "drone2satellite"]}.get(dataset, [])
    metrics, lines, _ = run(capsys, dataset, "--weights", bare_weights, "--dataset-root", datasets_root, *SMALL, *extra)
    if dataset in ("car196", "cub200"):
        values = [float(v) for v in RECALL_RE.match(lines[-1]).groups()]
        assert values[:4] == sorted(values[:4])  # Recall@K grows with K
    else:
        values = [float(v) for v in RANK_RE.match(lines[-1]).groups()]
        assert values[:3] == sorted(values[:3])  # CMC grows with rank
        assert lines[-2] == "mINP:%f" % metrics["mINP"] and 0 < metrics["mINP"] <= 1
        assert re.search(r"left out of CMC and mAP\): \d+ of \d+$", lines[-3])
    assert all(0.0 <= v <= 1.0 for v in values)
    if dataset == "vehicleid":
        assert len(metrics["trials"]) == 2
        assert re.match(r"vehicleid test_list_800, 2 trials \(seeds 0\.\.1\): top1 std:", lines[-4])
        assert metrics["top1"] == pytest.approx(np.mean([m["top1"] for m in metrics["trials"]]))
        assert metrics["mINP"] == pytest.approx(np.mean([m["mINP"] for m in metrics["trials"]]))


def test_rerank_and_plain_ap_change_only_the_numbers(capsys, bare_weights, datasets_root):
    common = ["--weights", bare_weights, "--dataset-root", datasets_root, *SMALL]
    base, _, _ = run(capsys, "market1501", *common)
    plain, lines, _ = run(capsys, "market1501", *common, "--ap", "plain")
    assert RANK_RE.match(lines[-1])
    assert plain["top1"] == base["top1"] and plain["mAP"] >= base["mAP"]  # trapezoid AP <= plain AP
    reranked, lines, _ = run(capsys, "market1501", *common, "--rerank")
    assert RANK_RE.match(lines[-1])
    assert reranked.keys() == base.keys() and reranked["left_out"] == base["left_out"]


def test_vis_writes_rank_list_pictures(capsys, bare_weights, datasets_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, lines, _ = run(capsys, "market1501", "--weights", bare_weights, "--dataset-root", datasets_root, *SMALL,
                      "--vis", "2")
    pictures = sorted(os.listdir(tmp_path / "figs"))
    assert len(pictures) == 2 and all(re.match(r"market1501_rank_\d+\.png$", p) for p in pictures)
    with Image.open(tmp_path / "figs" / pictures[0]) as picture:
        from evaluation import vis
        assert picture.size[1] == 2 * vis.MARGIN + vis.CAPTION + 128 + 2 * vis.BORDER  # 64x32 input -> 64x128 cells
    assert RANK_RE.match(lines[-1])


def test_nmi_uses_the_release_kmeans_unless_asked(capsys, datasets_root, monkeypatch):
    from datasets import build_dataset
    from evaluation import metrics
    calls = []
    real = metrics.kmeans
    monkeypatch.setattr(evaluation, "kmeans", lambda f, k, **kw: calls.append((len(f), k, kw)) or real(f, k, **kw))
    data = build_dataset("car196", datasets_root)
    results = {}
    for method in (None, "kmeans++"):
        options = {"kmeans": method} if method else {}
        results[method], _ = evaluation.evaluate(random_dbn(), data, image_size=(64, 32), batch_size=16, **options)
    classes = len({item[1] for item in data.test})
    assert calls == [(len(data.test), classes, {"seed": 1234, "method": "release"}),
                     (len(data.test), classes, {"seed": 1234, "method": "kmeans++"})]
    assert eval_cli.get_args_parser().parse_args(["--kmeans", "kmeans++"]).kmeans == "kmeans++"
    assert all(0 <= r["NMI"] <= 1 for r in results.values())


def test_evaluate_takes_keywords_and_restores_train_mode(capsys, datasets_root):
    from datasets import build_dataset
    model = random_dbn().train()
    metrics, line = evaluation.evaluate(model, build_dataset("cub200", datasets_root), image_size=(64, 32),
                                        batch_size=16)
    assert model.training
    assert RECALL_RE.match(line) and 0.0 <= metrics["NMI"] <= 1.0


# --- errors ----------------------------------------------------------------------------------

def test_missing_weights_file(capsys, datasets_root, tmp_path):
    missing = str(tmp_path / "nothing.pth")
    err = run_error(capsys, "market1501", "--weights", missing, "--dataset-root", datasets_root, *SMALL)
    assert f"weights file not found: {missing}" in err and "--weights" in err


def test_num_workers_default_is_at_most_the_available_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert eval_cli.get_args_parser().get_default("num_workers") == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert eval_cli.get_args_parser().get_default("num_workers") == 4


def test_text_file_as_weights_is_refused(capsys, datasets_root, tmp_path):
    path = tmp_path / "README.md"
    path.write_text("hello world\n")
    err = run_error(capsys, "market1501", "--weights", str(path), "--dataset-root", datasets_root, *SMALL)
    assert f"cannot read {path} as a torch checkpoint" in err


def test_cpu_runs_keep_freed_memory(capsys, datasets_root, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append("cpu") or True)
    run_error(capsys, "market1501", "--weights", str(tmp_path / "nothing.pth"), "--dataset-root", datasets_root,
              *SMALL)
    assert calls == ["cpu"]


def test_wrong_variant(capsys, datasets_root, tmp_path):
    path = str(tmp_path / "large.pth")
    torch.save(random_dbn("large").state_dict(), path)
    err = run_error(capsys, "market1501", "--weights", path, "--dataset-root", datasets_root, *SMALL, "--net", "small")
    assert "LEViT-large" in err and "--net small was given; pass --net large" in err
    _, lines, _ = run(capsys, "market1501", "--weights", path, "--dataset-root", datasets_root, *SMALL)
    assert "net=large" in lines[0] and RANK_RE.match(lines[-1])  # without --net: the variant of the file


def test_input_size_differs_from_training_checkpoint(capsys, bare_weights, datasets_root, tmp_path):
    path = str(tmp_path / "ema_last.pth")
    state_dict = torch.load(bare_weights, weights_only=True)
    torch.save({"model": state_dict, "args": {"img_height": 128, "img_width": 64, "net": "small"}}, path)
    err = run_error(capsys, "market1501", "--weights", path, "--dataset-root", datasets_root, *SMALL)
    assert "trained at 128x64" in err and "--img-height 128 --img-width 64" in err
    _, lines, _ = run(capsys, "market1501", "--weights", path, "--dataset-root", datasets_root,
                      *SMALL[4:], "--img-height", "128", "--img-width", "64")
    assert RANK_RE.match(lines[-1])


def test_missing_dataset_folder(capsys, bare_weights, tmp_path):
    err = run_error(capsys, "dukemtmc", "--weights", bare_weights, "--dataset-root", str(tmp_path), *SMALL)
    assert str(tmp_path) in err and "DukeMTMC-reID" in err


def test_flag_errors(capsys, bare_weights, datasets_root):
    err = run_error(capsys, "car196", "--weights", bare_weights, "--dataset-root", datasets_root, "--rerank")
    assert "--rerank applies to query/gallery rankings" in err
    err = run_error(capsys, "market1501", "--batch-size", "0")
    assert "--batch-size must be at least 1, got 0" in err
    err = run_error(capsys, "vehicleid", "--test-size", "900")
    assert "invalid choice: 900" in err


@pytest.mark.slow
def test_script_exit_status_and_help(tmp_path):
    missing = str(tmp_path / "nothing.pth")
    result = subprocess.run([sys.executable, "test_market1501.py", "--weights", missing], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: weights file not found: {missing} (pass --weights PATH: the file " \
                                    "train.py wrote to --save-path, its _last.pth checkpoint, or the release's params/ema.pth)"
    result = subprocess.run([sys.executable, "test_market1501.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "default input 256x128" in result.stdout and "(default: params/ema.pth)" in result.stdout


# --- input size, device, pictures ------------------------------------------------------------

@pytest.mark.parametrize("flags, size", [(["--img-height", "0"], "0x128"), (["--img-width", "8"], "256x8"),
                                         (["--img-height", "15", "--img-width", "64"], "15x64")])
def test_input_size_is_validated_as_train_py_does(capsys, bare_weights, flags, size):
    err = run_error(capsys, "market1501", "--weights", bare_weights, *flags)
    assert f"--img-height/--img-width must be at least 16 (output stride 16), got {size}" in err


def test_bare_weights_without_an_input_size_warn_which_size_is_evaluated(capsys, bare_weights, datasets_root):
    cpu = ["--num-workers", "0", "--batch-size", "32", "--device", "cpu"]
    _, lines, err = run(capsys, "market1501", "--weights", bare_weights, "--dataset-root", datasets_root, *cpu,
                        "--img-height", "32", "--img-width", "16")
    assert "warning" not in err and RANK_RE.match(lines[-1])
    with pytest.raises(SystemExit):  # stop before the (slow at 256x128) evaluation: no dataset here
        eval_cli.main("market1501", ["--weights", bare_weights, "--dataset-root", "no/such/root", *cpu])
    err = capsys.readouterr().err
    assert (f"warning: {bare_weights} holds bare weights, which do not record the input size they were trained at; "
            "evaluating at 256x128 (this dataset's default)") in err
    assert "python train.py --demo: 128x64), pass --img-height H --img-width W" in err


def test_backbone_as_weights_speaks_the_command_line(capsys, datasets_root, tmp_path):
    from network import LEViT, VARIANTS
    path = str(tmp_path / "backbone.pth")
    torch.save(LEViT(**VARIANTS["large"]).state_dict(), path)
    err = run_error(capsys, "market1501", "--weights", path, "--dataset-root", datasets_root, *SMALL)
    assert f"{path} is a LEViT-large backbone (ImageNet weights), not a trained ReID model" in err
    assert f"python train.py --net large --pretrained {path}" in err and "DBN(" not in err


@pytest.mark.parametrize("flags, message", [
    (["--device", "gpu"], "expected auto, cpu, cuda or cuda:N (a GPU id), got 'gpu'"),
    (["--gpus", "0,1"], "expected one GPU id (an integer >= 0): evaluation runs on one GPU; got '0,1'"),
    (["--gpus", "1", "--device", "cpu"], "--gpus 1 and --device cpu disagree; give one of them"),
])
def test_device_flag_errors(capsys, bare_weights, flags, message):
    assert message in run_error(capsys, "market1501", "--weights", bare_weights, *flags)


def test_a_gpu_is_picked_by_device_or_gpus(monkeypatch, capsys, bare_weights):
    parser = argparse.ArgumentParser(parents=[eval_cli.get_args_parser()])
    if not torch.cuda.is_available():
        err = run_error(capsys, "market1501", "--weights", bare_weights, "--device", "cuda:1")
        assert "--device cuda:1: no CUDA device is available; use --device cpu (or auto)" in err
        err = run_error(capsys, "market1501", "--weights", bare_weights, "--gpus", "1")
        assert "--gpus 1: no CUDA device is available" in err
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    count = torch.cuda.device_count()
    for flags in (["--device", f"cuda:{count - 1}"], ["--gpus", str(count - 1)],
                  ["--gpus", str(count - 1), "--device", "cuda"]):
        assert eval_cli._device(parser.parse_args(flags), parser) == torch.device("cuda", count - 1)
    with pytest.raises(SystemExit):
        eval_cli._device(parser.parse_args(["--gpus", str(count)]), parser)
    assert f"--gpus {count}: no GPU {count} (this machine has {count}" in capsys.readouterr().err


def test_vis_dir_chooses_the_pictures_folder(capsys, bare_weights, datasets_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, lines, _ = run(capsys, "market1501", "--weights", bare_weights, "--dataset-root", datasets_root, *SMALL,
                      "--vis", "1", "--vis-dir", "out/pictures")
    assert len(os.listdir(tmp_path / "out" / "pictures")) == 1 and not (tmp_path / "figs").exists()
    assert "written to out/pictures/market1501_rank_*.png" in "\n".join(lines)


# --- data that cannot be scored, Ctrl-C -----------------------------------------------------------

def test_check_scorable_on_hand_built_ids():
    # query id 1 seen by camera 0; the gallery has id 1 only under camera 0 (junk) and id 2 elsewhere
    with pytest.raises(evaluation.EvaluationError, match=r"none of the 2 queries has a correct gallery item"):
        evaluation.check_scorable([1, 2], [0, 1], [1, 2, 3], [0, 1, 0])
    evaluation.check_scorable([1, 2], [0, 1], [1, 2, 2], [0, 1, 0])  # id 2 under camera 0: scorable


def test_no_query_with_a_correct_gallery_item_is_a_clear_error(capsys, bare_weights, datasets_root, tmp_path):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(os.path.join(datasets_root, "market1501"), root / "market1501")
    gallery = root / "market1501" / "bounding_box_test"
    for i, name in enumerate(sorted(os.listdir(gallery))):  # every gallery image becomes a distractor (id 0)
        camera = re.match(r"-?\d+_c(\d+)", name).group(1)
        os.rename(gallery / name, gallery / f"0000_c{camera}s9_{i:06d}_00.jpg")
    err = run_error(capsys, "market1501", "--weights", bare_weights, "--dataset-root", str(root), *SMALL)
    assert "error: none of the" in err and "queries has a correct gallery item" in err
    assert "Check that query and gallery are the dataset's own folders" in err


def test_ctrl_c_exits_130_without_a_traceback(capsys, bare_weights, datasets_root, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(eval_cli, "evaluate", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main("market1501", ["--weights", bare_weights, "--dataset-root", datasets_root, *SMALL])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip().endswith("test_market1501.py: interrupted; nothing was written")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_unreadable_image_warning_is_one_clean_line(bare_weights, datasets_root, tmp_path, workers):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(os.path.join(datasets_root, "market1501"), root / "market1501")
    gallery = root / "market1501" / "bounding_box_test"
    bad = gallery / sorted(n for n in os.listdir(gallery) if not n.startswith("-"))[0]  # not junk (left out)
    bad.write_bytes(b"not an image")
    result = subprocess.run([sys.executable, "test_market1501.py", "--weights", bare_weights, "--dataset-root",
                             str(root), *SMALL[:4], "--num-workers", workers, "--device", "cpu"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "skipping unreadable image" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: skipping unreadable image {bad}: ")
    assert "UnreadableImageWarning" not in result.stderr and ".py:" not in result.stderr


# --- --save-features, --metrics-json, the scripts' constants --------------------------------------

def test_save_features_and_metrics_json(capsys, bare_weights, datasets_root, tmp_path):
    """The .npz holds the features the scores were computed from (L2-normalised, in the order of
    the paths it lists, with their ids and cameras); the JSON holds the metrics main() returns."""
    import json

    from datasets import build_dataset
    npz, report = tmp_path / "out" / "feats.npz", tmp_path / "out" / "metrics.json"
    metrics, lines, _ = run(capsys, "market1501", "--weights", bare_weights, "--dataset-root", datasets_root, *SMALL,
                            "--save-features", str(npz), "--metrics-json", str(report))
    assert RANK_RE.match(lines[-1]) and f"metrics written to {report}" in lines
    saved = np.load(npz)
    data = build_dataset("market1501", datasets_root)
    for split, items in (("query", data.query), ("gallery", data.gallery)):
        assert saved[f"{split}_paths"].tolist() == [item[0] for item in items]
        assert saved[f"{split}_pids"].tolist() == [item[1] for item in items]
        assert saved[f"{split}_camids"].tolist() == [item[2] for item in items]
        feats = saved[f"{split}_features"]
        assert feats.dtype == np.float32 and feats.shape == (len(items), 1920)
        assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    from evaluation.metrics import evaluate_rank_features
    q, g = (torch.from_numpy(saved[f"{s}_features"]) for s in ("query", "gallery"))
    cmc, mAP = evaluate_rank_features(q, g, saved["query_pids"], saved["gallery_pids"], saved["query_camids"],
                                      saved["gallery_camids"])
    assert mAP == pytest.approx(metrics["mAP"], abs=1e-9) and cmc[0] == pytest.approx(metrics["top1"], abs=1e-9)
    stored = json.loads(report.read_text())
    assert stored["metrics"] == pytest.approx(metrics) and (stored["img_height"], stored["img_width"]) == (64, 32)
    assert stored["net"] == "small" and stored["dataset"] == "market1501"


@pytest.mark.parametrize("dataset, split", [("car196", "test"), ("vehicleid", "test")])
def test_save_features_of_the_single_split_datasets(capsys, bare_weights, datasets_root, tmp_path, dataset, split):
    npz = tmp_path / "feats.npz"
    trials = ["--trials", "2"] if dataset == "vehicleid" else []  # a vehicleid flag (refused by the others)
    run(capsys, dataset, "--weights", bare_weights, "--dataset-root", datasets_root, *SMALL, *trials,
        "--save-features", str(npz))
    saved = np.load(npz)
    assert sorted(saved.files) == sorted([f"{split}_{k}" for k in ("features", "paths", "pids", "camids")] +
                                         ["provenance"])
    made_by = features.read_provenance(saved)
    assert made_by["variant"] == "small" and made_by["dtype"] == "float32" and made_by["flip"] is True
    assert made_by["weights_id"] == features.load_for_inference(bare_weights)[1]["weights_id"]
    assert len(saved[f"{split}_paths"]) == len(saved[f"{split}_features"]) == len(saved[f"{split}_pids"]) > 0


@pytest.mark.parametrize("flags, message", [
    (["--save-features", "feats.txt"], "--save-features feats.txt: give a file name ending in .npz"),
    (["--metrics-json", "."], "--metrics-json . is a folder; give a file name"),
])
def test_output_flag_errors(capsys, bare_weights, flags, message):
    assert message in run_error(capsys, "market1501", "--weights", bare_weights, *flags)


def test_each_script_states_its_defaults_as_constants():
    """WEIGHTS, NET and IMG_HEIGHT/IMG_WIDTH at the top of every test_<dataset>.py, passed to main();
    the size constants are the dataset's default size."""
    import ast

    from datasets import dataset_class
    for name in DATASETS + ("custom",):
        script = os.path.join(ROOT, f"test_{name}.py")
        tree = ast.parse(open(script).read())
        values = {}
        for node in tree.body:
            if isinstance(node, ast.Assign):
                names = [t.id for t in node.targets] if isinstance(node.targets[0], ast.Name) else \
                    [e.id for e in node.targets[0].elts]
                consts = ast.literal_eval(node.value)
                values.update(zip(names, consts if len(names) > 1 else [consts]))
        assert values == {"WEIGHTS": "params/ema.pth", "NET": "small", "IMG_HEIGHT": dataset_class(name).image_size[0],
                          "IMG_WIDTH": dataset_class(name).image_size[1]}, script
        assert f'main("{name}", weights=WEIGHTS, net=NET, img_height=IMG_HEIGHT, img_width=IMG_WIDTH)' in \
            open(script).read()


def test_script_constants_are_defaults_that_flags_and_the_checkpoint_override(capsys, bare_weights, datasets_root,
                                                                              tmp_path):
    from network import make_checkpoint
    common = ["--dataset-root", datasets_root, "--num-workers", "0", "--batch-size", "32", "--device", "cpu"]
    # a bare state_dict: the script's size is used (no --img-height/--img-width), its weights path too
    metrics = eval_cli.main("market1501", common, weights=bare_weights, img_height=64, img_width=32)
    out, err = capsys.readouterr()
    assert f"weights={bare_weights}" in out and "img_height=64 img_width=32" in out
    assert "evaluating at 64x32" in err
    # a described checkpoint: its own size wins over the script's constants
    described = str(tmp_path / "described.pth")
    torch.save(make_checkpoint(random_dbn(), 32, 16, dataset="market1501", transform="reid"), described)
    eval_cli.main("market1501", common, weights=described, net="large", img_height=64, img_width=32)
    out, err = capsys.readouterr()
    assert "net=small" in out and "img_height=32 img_width=16" in out and "warning" not in err
    assert 0 <= metrics["mAP"] <= 1


@pytest.mark.parametrize("dataset, flags, message", [
    ("market1501", ["--direction", "drone2satellite"], "--direction applies to university1652 only, not to market1501"),
    ("market1501", ["--test-size", "800"], "--test-size applies to vehicleid only, not to market1501"),
    ("market1501", ["--trials", "2"], "--trials applies to vehicleid only, not to market1501"),
    ("market1501", ["--kmeans", "kmeans++"], "--kmeans applies to car196 and cub200 only, not to market1501"),
    ("cub200", ["--ap", "plain"], "--ap applies to the ranking datasets only, not to cub200"),
    ("vehicleid", ["--direction", "drone2satellite"], "--direction applies to university1652 only, not to vehicleid"),
])
def test_flags_of_other_datasets_are_refused(capsys, dataset, flags, message):
    assert message in run_error(capsys, dataset, *flags)


def test_each_scripts_help_lists_its_own_flags(capsys):
    def help_of(dataset):
        with pytest.raises(SystemExit) as exit_info:
            eval_cli.main(dataset, ["--help"])
        assert exit_info.value.code == 0
        return capsys.readouterr().out

    market, cars, vehicles = help_of("market1501"), help_of("car196"), help_of("vehicleid")
    assert "--rerank" in market and "--ap" in market
    assert not any(flag in market for flag in ("--direction", "--test-size", "--trials", "--kmeans"))
    assert "--kmeans" in cars and "--rerank" not in cars and "--ap " not in cars
    assert "--test-size" in vehicles and "--trials" in vehicles and "--direction" not in vehicles
    assert "--direction" in help_of("university1652")
