"""Device choice for every script: one rule for "auto", "cpu", "cuda" and "cuda:N", and the cores a
process may use. Errors are DeviceError (a ValueError) stating the facts; the command line words
them with its flag."""
import os

import torch


class DeviceError(ValueError):
    """A device that this machine does not have."""


def available_cores():
    """Cores this process may use: its CPU affinity where the platform has one (Linux), else all cores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_cuda(index=None):
    """DeviceError unless CUDA is available and, when `index` is given, GPU `index` exists."""
    if not torch.cuda.is_available():
        raise DeviceError("no CUDA device is available")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise DeviceError(f"no GPU {index} (this machine has {count}: ids 0..{count - 1})")


def pick_device(name="auto"):
    """torch.device of "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N"; a CUDA device
    this machine does not have is a DeviceError."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        check_cuda(device.index)
    return device
