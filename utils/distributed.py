"""Distributed training helpers: set up from torchrun's environment, ranks, rank-0 duties.

Under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), train.py
joins the process group (NCCL on GPUs, gloo on CPUs) and wraps the model in
DistributedDataParallel. Without those variables everything here degrades to one process:
rank 0 of a world of 1, and the collectives do nothing.
"""
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F


@dataclass
class DistInfo:
    distributed: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(use_cuda, timeout_s=600):
    """Join the process group torchrun describes; returns DistInfo (not distributed otherwise).

    `use_cuda`: NCCL with one GPU per process (cuda:LOCAL_RANK), else gloo on the CPU.
    `timeout_s`: how long a collective waits for a missing rank before raising, so a rank that
    dies makes the others fail instead of hanging.
    """
    if not launched_by_torchrun():
        return DistInfo()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    kwargs = {"device_id": torch.device("cuda", local_rank)} if use_cuda else {}
    timeout = datetime.timedelta(seconds=timeout_s)
    # torchrun keeps its store across the restarts of --max-restarts: each attempt's process group keeps its
    # keys under a prefix of its own, so a restarted rank never reads an address of the attempt before
    from torch.distributed.rendezvous import rendezvous  # only with torchrun: a build without it imports the rest
    store, _, _ = next(rendezvous("env://", rank, world_size, timeout=timeout))
    store = dist.PrefixStore(f"levit_reid/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout, **kwargs)
    return DistInfo(True, rank, world_size, local_rank, backend)


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main():
    """True on rank 0 (and in a single process): the one that prints, logs and saves."""
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(tensor):
    """In-place mean of `tensor` over the ranks (a no-op in a single process)."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(get_world_size())
    return tensor


def all_gather_batch(features, labels):
    """Every process's (B_r, D) `features` and (B_r,) `labels`, concatenated in rank order:
    ((sum B_r, D), (sum B_r,)), the same on every process; `(features, labels)` in a single process.

    The features keep their gradient (torch.distributed.nn.functional.all_gather): in backward each
    process receives the sum over the processes of the gradients of its own rows. So when every
    process computes the same loss L on the gathered batch, a process's rows get (world size) x
    dL/drow, and DDP's mean over the processes turns that back into exactly dL/dparameters: the
    gradient of one process computing L on the whole batch, with no extra factor. Shares may differ
    in size (unreadable images dropped): they are padded to the largest for the collectives.
    """
    if not is_dist():
        return features, labels
    world = get_world_size()
    size = torch.tensor([features.shape[0]], device=labels.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(n) for n in sizes]
    pad = max(sizes) - features.shape[0]
    with warnings.catch_warnings():
        # torch marks this autograd-aware gather deprecated in favour of a private module's; it is
        # still the public one, and its FutureWarning would land in the middle of the progress bar
        warnings.simplefilter("ignore", FutureWarning)
        gathered = dist_nn.all_gather(F.pad(features, (0, 0, 0, pad)))
    label_list = [torch.empty(max(sizes), dtype=labels.dtype, device=labels.device) for _ in range(world)]
    dist.all_gather(label_list, F.pad(labels, (0, pad)))
    return (torch.cat([f[:n] for f, n in zip(gathered, sizes)]),
            torch.cat([l[:n] for l, n in zip(label_list, sizes)]))


@torch.no_grad()
def average_bn_statistics(module):
    """Mean of every BatchNorm running_mean / running_var over the ranks.

    After `torch.optim.swa_utils.update_bn` on each rank's share of the data (equal numbers of
    equal-size batches per rank), the running statistics are cumulative means over batches, so
    their mean over ranks is the mean over all batches: identical on every rank afterwards.
    """
    if not is_dist():
        return
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            all_reduce_mean(m.running_mean)
            all_reduce_mean(m.running_var)


def cleanup():
    if is_dist():
        dist.destroy_process_group()
