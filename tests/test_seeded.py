"""datasets/seeded.py: batches from any step with per-image seeds, the same draws whatever the workers."""
import pytest
import torch

from datasets.seeded import SeededBatches, SeededDataset, sample_seeds


class RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i, torch.rand(1).item()


def test_seeded_batches_skip_and_per_image_seeds():
    batches = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    full = list(SeededBatches(batches, seed=1, epoch=2))
    assert [[i for i, _ in b] for b in full] == batches
    assert full[1] == list(zip([3, 4, 5], sample_seeds(1, 2, 1, 0, 3)))
    assert list(SeededBatches(batches, seed=1, epoch=2, skip=2)) == full[2:]
    assert len(SeededBatches(batches, 1, 2, skip=2)) == 1
    assert full != list(SeededBatches(batches, seed=1, epoch=3))
    assert full != list(SeededBatches(batches, seed=1, epoch=2, rank=1))


@pytest.mark.parametrize("workers", [0, 2])
def test_seeded_dataset_same_draws_whatever_the_workers_and_keeps_caller_state(workers):
    batches = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    loader = torch.utils.data.DataLoader(SeededDataset(RandomItems()), batch_sampler=SeededBatches(batches, 5, 0),
                                         num_workers=workers, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    draws = [x for b in loader for x in b[1].tolist()]
    if workers == 0:
        assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    ref = []
    for batch in SeededBatches(batches, 5, 0):
        for _, s in batch:
            torch.manual_seed(s)
            ref.append(torch.rand(1).item())
    assert draws == pytest.approx(ref)
