"""The C library's memory allocator on the CPU.

With glibc's default settings every freed block above its mmap threshold (at most 32 MiB) goes
straight back to the system, so a model whose activations are larger than that, such as DBN at
the evaluation batch of 64 or ResNet-50 at 32, faults all of that memory in again on every
forward pass. `keep_freed_memory()` makes glibc keep freed memory for reuse instead; the price
is that the process keeps its peak memory until it exits. DBN-S feature extraction at batch 64
(with the flipped copy) ran 1.12x faster with it at 256x128 and 1.26x at 256x256 on a 2-core CPU
(`python -m benchmarks --what extract`).
"""
import ctypes
import ctypes.util

try:
    import resource
except ImportError:  # not on Windows
    resource = None

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    return libc


def keep_freed_memory():
    """glibc only: serve blocks up to 1 GiB from the heap and never trim it, so that freed memory
    is reused without page faults. Returns whether the settings took effect (False elsewhere)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(1 << 30))
                and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2 ** 31 - 1)))


def tune_allocator(device):
    """The entry points' one call (train.py, the test scripts), once their torch.device is known: on the
    CPU, keep freed memory for reuse (no page faults for each batch's activations). Returns whether
    the allocator was changed."""
    return device.type == "cpu" and keep_freed_memory()


def minor_faults():
    """Page faults of this process so far that needed no disk read (0 where getrusage is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0
