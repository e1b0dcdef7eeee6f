"""Seeded data order and augmentation of train.py's loader: a batch sampler and a dataset wrapper.

A resumed run must see exactly the images, crops and flips the uninterrupted run would have
seen, whatever the number of loader workers and wherever it stopped. The batch order comes from
the sampler (a function of seed and epoch); each image's augmentation draws from its own seed,
a function of (seed, epoch, step, rank, position in the batch), instead of from a worker's
running random state.

    DataLoader(SeededDataset(ImageDataset(...)), batch_sampler=SeededBatches(PKSampler(...), seed, epoch, rank))
"""
import numpy as np
import torch


def sample_seeds(seed, epoch, step, rank, count):
    """`count` 32-bit seeds for the images of one batch (numpy SeedSequence mixing)."""
    return np.random.SeedSequence([seed, epoch, step, rank]).generate_state(count).tolist()


class SeededBatches(torch.utils.data.Sampler):
    """Batch sampler wrapper: yields [(index, image_seed), ...] per batch, from batch `skip` on.

    `batch_sampler` must be deterministic for a given epoch (PKSampler after set_epoch).
    """

    def __init__(self, batch_sampler, seed, epoch, rank=0, skip=0):
        self.batch_sampler, self.seed, self.epoch, self.rank, self.skip = batch_sampler, seed, epoch, rank, skip

    def __iter__(self):
        for step, batch in enumerate(self.batch_sampler):
            if step < self.skip:
                continue
            batch = list(batch)
            yield list(zip(batch, sample_seeds(self.seed, self.epoch, step, self.rank, len(batch))))

    def __len__(self):
        return max(len(self.batch_sampler) - self.skip, 0)


class SeededDataset(torch.utils.data.Dataset):
    """Dataset wrapper: item (index, image_seed) -> dataset[index] with the torch random state
    seeded by image_seed for the duration of the call (the caller's state is left untouched)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, image_seed = item
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds every accelerator backend, and
            # where none is initialised it records a stack trace for each (about 1 ms an image)
            torch.default_generator.manual_seed(image_seed)
            return self.dataset[index]
