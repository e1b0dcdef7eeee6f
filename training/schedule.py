"""The release's learning-rate schedule, as a `torch.optim.lr_scheduler.LambdaLR`.

`--epochs W,T --ema-ratio r --ema-extra e`: training runs T + e epochs, numbered n = 1 .. T + e
(as the log prints them). The rate of epoch n is lr * factor(n) with, for S = floor(T * r):

    n <= W          0.01 + 0.99 * n / W                      linear warm-up from lr/100 towards lr
    W <= n <= S     0.5 * (1 + cos(pi * (n - W) / (T - W)))  cosine from lr at W towards 0 at T
    n >= S          factor(S)                                held while the weights are averaged

The rate changes once per epoch (not per step), as in the release: the scheduler is stepped at
the end of every epoch, so `LambdaLR.last_epoch` counts completed epochs and epoch n trains
with factor(n). Epoch 1 therefore already runs at lr * (0.01 + 0.99 / W).
"""
import math

from torch.optim.lr_scheduler import LambdaLR


def averaging_start(total_epochs, ema_ratio):
    """S = floor(T * r): the first epoch (1-based) whose weights are averaged and whose rate is held.
    A tiny tolerance keeps products like 75 * 0.8 = 59.99999... from dropping an epoch."""
    return int(math.floor(total_epochs * ema_ratio + 1e-9))


def lr_factor(epoch, warmup_epochs, total_epochs, ema_ratio):
    """Multiplier of the base lr during epoch `epoch` (1-based)."""
    W, T = warmup_epochs, total_epochs
    S = averaging_start(T, ema_ratio)
    n = min(epoch, S)
    if n <= W:
        return 0.01 + 0.99 * n / W
    return 0.5 * (1.0 + math.cos(math.pi * (n - W) / (T - W)))


class EpochFactor:
    """lr_lambda of LambdaLR: completed epochs k -> lr_factor(k + 1). A small object rather than a
    closure so that LambdaLR.state_dict() records its settings."""

    def __init__(self, warmup_epochs, total_epochs, ema_ratio):
        self.warmup_epochs = int(warmup_epochs)
        self.total_epochs = int(total_epochs)
        self.ema_ratio = float(ema_ratio)

    def __call__(self, completed_epochs):
        return lr_factor(completed_epochs + 1, self.warmup_epochs, self.total_epochs, self.ema_ratio)


def build_scheduler(optimizer, warmup_epochs, total_epochs, ema_ratio):
    """LambdaLR over `optimizer` (whose param groups hold the base lr); call .step() once per epoch."""
    return LambdaLR(optimizer, EpochFactor(warmup_epochs, total_epochs, ema_ratio))
