"""Benchmarks, run as `python -m benchmarks --what ...` (see benchmarks/__main__.py).

model.py: parameters, FLOPs, throughput and latency of DBN / LEViT next to their peers; extract.py:
feature extraction under the two malloc settings; loader.py: one loader worker's transforms;
eval.py: CMC/mAP against the release's loop and torchreid's (also `python -m benchmarks.eval`);
peers.py: the networks the figures are judged against (release-style DBN-S, OSNet x1_0).

The timing helpers shared by all of them live here.
"""
import statistics
import time

from utils.malloc import keep_freed_memory, minor_faults


def configure_malloc(mode):
    """'tuned': glibc keeps freed memory for reuse (utils.malloc.keep_freed_memory), so no model
    faults in fresh pages on every run; 'default': the C library's own settings. Returns a line
    saying what is in effect."""
    if mode == "default":
        return "malloc: the C library's defaults"
    if not keep_freed_memory():
        return "malloc: not glibc (or it refused the settings), left at its defaults"
    return "malloc: glibc tuned (mmap threshold 1 GiB, no trimming): no model pays page faults for fresh memory"


def time_alternating(runs, repeats, warmup=1, faults=None):
    """Median seconds per call of each zero-argument callable, calling them in turn. When a
    dict is given as `faults`, it receives the median number of page faults per call."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runs}
    counts = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            faults_before = minor_faults()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            counts[name].append(minor_faults() - faults_before)
    if faults is not None:
        faults.update({name: statistics.median(c) for name, c in counts.items()})
    return {name: statistics.median(t) for name, t in times.items()}


def height_by_width(text):
    """Parse "256x128" as (256, 128); a dataset's default size is its class's image_size, not this."""
    height, _, width = text.partition("x")
    return int(height), int(width)
