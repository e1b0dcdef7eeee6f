"""Seeded data order and augmentation of train.py's loader: a batch sampler and a dataset wrapper.

A resumed run must see exactly the images, crops and flips the uninterrupted run would have
seen, whatever the number of loader workers and wherever it stopped. The batch order comes from
the sampler (a function of seed and epoch); each image's augmentation draws from its own seed,
a function of (seed, epoch, step, rank, position in the batch), instead of from a worker's
running random state.

    DataLoader(SeededDataset(ImageDataset(...)), batch_sampler=SeededBatches(PKSampler(...), seed, epoch, rank))
    seeded_loader(SeededDataset(...), sampler, seed, epoch, rank, num_workers, pin_memory, skip)  # the same
"""
import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.image_dataset import collate_skip


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


def seeded_loader(dataset, batch_sampler, seed, epoch, rank=0, num_workers=0, pin_memory=False, skip=0):
    """Loader of one epoch (0-based `epoch`) of a SeededDataset, starting at batch `skip`: the same batches
    and augmentation for a given seed and epoch whatever `num_workers`; unreadable images are skipped and
    counted (datasets.image_dataset.collate_skip). `batch_sampler` has set_epoch (PKSampler,
    datasets.imagefolder.ShuffledBatches)."""
    batch_sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return DataLoader(dataset, batch_sampler=SeededBatches(batch_sampler, seed, epoch, rank, skip),
                      num_workers=num_workers, collate_fn=collate_skip, generator=generator, pin_memory=pin_memory)
