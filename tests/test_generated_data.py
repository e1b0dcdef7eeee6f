"""Generated data sets are big enough for the README's commands, and a batch too big for generated data
says how to generate more (datasets/synthetic.py, the P x K checks of train.py and datasets/sampler.py)."""
import pytest

import train
from datasets import build_dataset
from datasets import synthetic
from datasets.sampler import PKSampler
from training.run_state import UsageError


def test_the_default_fills_the_largest_readme_batch(tmp_path):
    assert synthetic.main(["--dataset", "vehicleid", "--root", str(tmp_path)]) == 0
    dataset = build_dataset("vehicleid", str(tmp_path))
    assert dataset.num_classes == synthetic.DEFAULT_IDS == 64
    # VehicleID's release command: --batch-size 256 --instance-num 4, P = 64 identities
    sampler = PKSampler([item[1] for item in dataset.train], 256, 4)
    assert len(next(iter(sampler))) == 256
    assert synthetic.generated_with(dataset.root)["ids"] == 64


def test_a_batch_too_big_for_generated_data_says_how_to_generate_more(tmp_path):
    synthetic.generate("market1501", str(tmp_path), ids=8, images_per_id=4)
    args = train.parse_args(["--dataset", "market1501", "--dataset-root", str(tmp_path), "--pretrained", "none",
                             "--device", "cpu", "--num-workers", "0", "--save-path", str(tmp_path / "ema.pth"),
                             "--dry-run"])  # the release's Market command: P = 64 // 4 = 16 identities
    with pytest.raises(UsageError) as info:
        train.main(args)
    message = str(info.value)
    assert "8 identities cannot fill a batch of P = batch_size // K = 64 // 4 = 16 identities" in message
    assert message.endswith(f"The data in {tmp_path / 'market1501'} was generated with --ids 8: generate it again "
                            f"with enough identities, e.g. python -m datasets.synthetic --dataset market1501 --root "
                            f"{tmp_path} --ids 64 (into an empty folder)")


def test_data_of_ones_own_gets_no_generation_hint(tmp_path):
    folder = synthetic.generate("market1501", str(tmp_path), ids=8, images_per_id=4)
    (tmp_path / "market1501" / synthetic.MARKER).unlink()
    assert synthetic.regenerate_hint(folder, 16) == ""
    assert synthetic.regenerate_hint(str(tmp_path / "elsewhere"), 16) == ""


@pytest.mark.parametrize("batch, k, world, nearest", [(30, 4, 1, "28 or 32"), (10, 4, 1, "8 or 12"),
                                                      (6, 4, 1, "8"), (20, 4, 2, "16 or 24")])
def test_a_batch_that_does_not_split_names_the_nearest_valid_value(batch, k, world, nearest):
    with pytest.raises(ValueError, match=f"the nearest valid batch_size: {nearest}$"):
        PKSampler(list(range(64)) * 4, batch, k, world_size=world)
