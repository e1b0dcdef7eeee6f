"""pretrain.py's recipe pieces (DeiT / LeViT on ImageNet): the scaled learning rate, the per-step warm-up
and cosine schedule, batch Mixup / CutMix, model EMA and top-k counts.

Schedule, stepped after every optimisation step (not per epoch): with S steps per epoch, warm-up
Ws = warmup_epochs * S steps and T = epochs * S steps in all, step s (0-based) trains at

    s <  Ws      lr * (s + 1) / Ws                                           linear warm-up
    s >= Ws      min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (s - Ws) / (T - Ws)))   cosine to min_lr

where lr = base_lr * batch_size / 512 (DeiT's linear scaling; the global batch under torchrun).
"""
import math

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

LR_BATCH = 512  # the batch size at which --lr is the learning rate


def scaled_lr(base_lr, batch_size):
    return base_lr * batch_size / LR_BATCH


class StepFactor:
    """lr_lambda of LambdaLR: completed steps s -> the rate of step s over the peak (see the module's
    docstring). A small object rather than a closure so that LambdaLR.state_dict() records it."""

    def __init__(self, warmup_steps, total_steps, min_ratio):
        self.warmup_steps, self.total_steps, self.min_ratio = int(warmup_steps), int(total_steps), float(min_ratio)

    def __call__(self, step):
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_step_scheduler(optimizer, warmup_epochs, epochs, steps_per_epoch, lr, min_lr):
    """LambdaLR over `optimizer` (its groups hold the peak `lr`); call .step() after every optimiser step."""
    return LambdaLR(optimizer, StepFactor(warmup_epochs * steps_per_epoch, epochs * steps_per_epoch,
                                          min(min_lr / lr, 1.0)))


def param_groups(model, weight_decay):
    """AdamW groups: no weight decay on biases, BatchNorm weights and the attention scales (1-D tensors),
    as timm's / DeiT's optimizer factory."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def batch_mix(mixup, cutmix, num_classes):
    """(images, labels) -> (images, soft targets (B, C)): Mixup or CutMix (one chosen at random per batch)
    of torchvision.transforms.v2, each with its Beta(alpha, alpha) (0 = that one off); None when both are off.
    Each pairs image i with image i - 1 of the batch (torchvision's roll)."""
    mixes = [m(alpha=a, num_classes=num_classes) for m, a in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if a > 0]
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def model_ema(model, decay):
    """An exponential moving average of `model`'s weights and BatchNorm buffers, updated after every step
    (torch.optim.swa_utils), or None when `decay` is 0."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@torch.no_grad()
def topk_correct(logits, labels, ks=(1, 5)):
    """Number of rows whose label is among the k highest logits, for each k (k capped at the classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (B, k)
    hits = top == labels[:, None]
    return [float(hits[:, :k].any(dim=1).sum()) for k in ks]
