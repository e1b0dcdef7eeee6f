"""The self-describing --save-path file (network.checkpoint.make_checkpoint) and DBN.from_checkpoint:
the new format, the release's bare state_dict and train.py's _last.pth all load, flags that
contradict the file are errors naming both, the test scripts take the variant and size from it."""
import argparse
import functools

import pytest
import torch

from network import DBN, FORMAT_VERSION, CheckpointError, make_checkpoint, read_reid_checkpoint
from tests.helpers import seeded_dbn

tiny_dbn = functools.partial(seeded_dbn, num_classes=5)  # tiny_dbn(net="small", seed=0): this module's DBN


@pytest.fixture(scope="module")
def small():
    return tiny_dbn()


def save(obj, tmp_path, name="w.pth"):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_make_checkpoint_holds_what_is_needed_and_reads_weights_only(small, tmp_path):
    args = argparse.Namespace(net="small", epochs=(5, 75), lr=0.12, amp=None)
    obj = make_checkpoint(small, 64, 32, dataset="custom", transform="reid", args=args,
                          metrics={"mAP": torch.tensor(0.5), "top1": 0.75})
    path = save(obj, tmp_path)
    back = torch.load(path, weights_only=True)
    assert back["format_version"] == FORMAT_VERSION == 1
    assert {k: back[k] for k in ("variant", "mlp_ratio", "num_classes", "num_parts", "img_height", "img_width",
                                 "dataset", "transform")} == dict(
        variant="small", mlp_ratio=1.0, num_classes=5, num_parts=[1, 2], img_height=64, img_width=32,
        dataset="custom", transform="reid")
    assert back["args"] == {"net": "small", "epochs": [5, 75], "lr": 0.12, "amp": None}
    assert back["metrics"] == {"mAP": 0.5, "top1": 0.75}
    model, info = DBN.from_checkpoint(path)
    assert same_weights(model, small) and not model.training
    assert (info["variant"], info["img_height"], info["img_width"], info["format_version"]) == ("small", 64, 32, 1)
    assert info["metrics"]["mAP"] == 0.5 and info["dataset"] == "custom"


def test_a_file_of_other_parts_is_refused(small, tmp_path):
    obj = dict(make_checkpoint(small, 64, 32, dataset="custom", transform="reid"), num_parts=[1, 3])
    with pytest.raises(CheckpointError, match=r"parts \[1, 3\] per branch; this code builds \[1, 2\]"):
        DBN.from_checkpoint(save(obj, tmp_path))


def test_make_checkpoint_refuses_a_fused_model(tmp_path):
    with pytest.raises(ValueError, match="fused for inference"):
        make_checkpoint(tiny_dbn().fuse(), 64, 32)


@pytest.mark.parametrize("net", ["small", "large"])
def test_bare_release_state_dict_loads_key_for_key_with_the_variant_from_the_shapes(tmp_path, net):
    model = tiny_dbn(net, num_classes=751)
    loaded, info = DBN.from_checkpoint(save(model.state_dict(), tmp_path))
    assert same_weights(loaded, model)
    assert (info["variant"], info["num_classes"], info["format_version"]) == (net, 751, 0)
    assert (info["img_height"], info["img_width"]) == (None, None)  # a bare file does not say
    _, info = DBN.from_checkpoint(save(model.state_dict(), tmp_path), img_height=256, img_width=128)
    assert (info["img_height"], info["img_width"]) == (256, 128)  # the flags fill it in


def test_training_checkpoint_gives_its_size(small, tmp_path):
    path = save({"model": small.state_dict(), "args": {"img_height": 48, "img_width": 16, "net": "small",
                                                         "dataset": "market1501"}}, tmp_path)
    _, info = DBN.from_checkpoint(path)
    assert (info["img_height"], info["img_width"], info["dataset"]) == (48, 16, "market1501")


def test_flags_that_contradict_the_file_name_both(small, tmp_path):
    path = save(make_checkpoint(small, 64, 32), tmp_path)
    with pytest.raises(CheckpointError) as err:
        DBN.from_checkpoint(path, net="large")
    assert str(err.value) == (f"{path} holds a LEViT-small DBN (embed_dim 96) but --net large was given; pass "
                              "--net small (or leave --net out: the file says which)")
    with pytest.raises(CheckpointError) as err:
        DBN.from_checkpoint(path, img_height=128)
    assert str(err.value) == (f"{path} was trained at 64x32 (height x width) but the flags ask for 128x32; pass "
                              "--img-height 64 --img-width 32 or leave them out")
    model, info = DBN.from_checkpoint(path, net="small", img_height=64, img_width=32)  # agreeing flags are fine
    assert info["variant"] == "small"


def test_unreadable_descriptions_are_errors(small, tmp_path):
    newer = dict(make_checkpoint(small, 64, 32), format_version=FORMAT_VERSION + 1)
    path = save(newer, tmp_path)
    with pytest.raises(CheckpointError, match=f"has checkpoint format version {FORMAT_VERSION + 1}; this code "
                                              f"reads versions up to {FORMAT_VERSION}"):
        read_reid_checkpoint(path)
    lying = dict(make_checkpoint(small, 64, 32), variant="large")
    path = save(lying, tmp_path)
    with pytest.raises(CheckpointError, match="says variant 'large' but its weights are a DBN ReID model like "
                                              "LEViT-small"):
        read_reid_checkpoint(path)
    from network import LEViT
    path = save(LEViT(num_classes=10).state_dict(), tmp_path)
    with pytest.raises(CheckpointError) as err:
        DBN.from_checkpoint(path)
    assert str(err.value) == (f"{path} is a LEViT-small backbone (ImageNet weights), not a trained ReID model. "
                              f"To train from this backbone: python train.py --net small --pretrained {path} ...")


def test_test_script_takes_variant_and_size_from_the_file(tmp_path, capsys):
    from datasets.synthetic import generate
    from evaluation import cli as eval_cli
    root = str(tmp_path / "data")
    generate("market1501", root, ids=3, images_per_id=4, cameras=2)
    path = save(make_checkpoint(tiny_dbn("large"), 48, 32, dataset="market1501", transform="reid"), tmp_path)
    common = ["--weights", path, "--dataset-root", root, "--num-workers", "0", "--device", "cpu"]
    eval_cli.main("market1501", common)
    out = capsys.readouterr().out
    assert "net=large" in out and "img_height=48 img_width=32" in out
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main("market1501", [*common, "--net", "small"])
    assert exit_info.value.code == 2
    assert "holds a LEViT-large DBN (embed_dim 192) but --net small was given" in capsys.readouterr().err
