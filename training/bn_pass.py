"""The BatchNorm pass after weight averaging (train.py): the averaged weights' statistics from one
pass over the training data, as the release."""
from torch import nn
from torch.optim.swa_utils import update_bn

from utils import distributed


def recompute_bn(model, loader, device, dp_ids, autocast):
    """BatchNorm statistics of `model` (the averaged weights) from one pass of `loader` in train mode,
    with a cumulative average (torch.optim.swa_utils.update_bn), as the release.

    With several --gpus (`dp_ids`) the pass runs through DataParallel, as the release's does: every
    batch is split over the GPUs and only the replica on the first GPU shares the model's buffers
    (the others update copies that are dropped), so the statistics are those of GPU 0's share of
    each batch. Under torchrun each process passes its own share and the statistics are then
    averaged over the processes.
    """
    bn_model = nn.DataParallel(model, device_ids=dp_ids) if dp_ids else model
    with autocast:
        update_bn((batch for batch in loader if batch[0].shape[0]), bn_model, device=device)
    distributed.average_bn_statistics(model)
