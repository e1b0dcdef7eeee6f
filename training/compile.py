"""train.py and pretrain.py --compile: the training forward through torch.compile, exact to the eager run's
random stream.

    step = CompiledStep(model, "default", batch)   # model: the DBN, or its DistributedDataParallel wrapper
    logits, embeddings = step(imgs)                # compiled for full batches, eager for a partial one

What stays eager, and why:
- The augmentations (random erasing, BatchDrop) draw Python numbers from torch's global generator image
  by image; network/dbn.py excludes them from the graph (torch.compiler.disable), so they draw what the
  eager run draws.
- Stochastic depth (torchvision's StochasticDepth, bernoulli_) is in the graph: inductor's
  `fallback_random` makes it call torch's own random operators on the global generator, in the eager
  order, instead of inductor's generator, so a compiled run consumes the eager stream and a resumed run
  (which restores the generator) stays bit-identical.
- A batch smaller than the first one seen (the release's partial last batch, images skipped as
  unreadable) runs eagerly: a graph for one batch size compiles once, needs no guards on the size and
  keeps its CUDA graphs under reduce-overhead (recorded per shape); marking the batch dynamic would
  cost a second, slower compile for one step an epoch.
- The loss stays eager: under torchrun its batch-hard mining gathers the embeddings of every process
  (a collective that would break the graph), and its cost is small against the network's.
- The BatchNorm pass after training runs on the averaged copy of the weights, which is not compiled.

The graph's buffers keep the eager run's strides (inductor's layout optimisation is off): the model
chooses its layouts itself (channels_last maps, attention windows with d innermost).

The modules are not changed: the checkpoint's keys are those of an eager run (no `_orig_mod.`).
Under torchrun the DistributedDataParallel module is compiled, as PyTorch's DDP notes advise
(TorchDynamo's DDPOptimizer splits the graph at the gradient buckets so communication overlaps).
"""
import time

import torch

from utils import distributed

MODES = ("off", "default", "reduce-overhead", "max-autotune")
MODE_HELP = ("compile the training forward with torch.compile (off: eager, the default; --compile alone: default; "
             "a resumed run may change it). default: "
             "inductor's fused kernels, one compile of the first batch (minutes on a CPU); reduce-overhead: also "
             "CUDA graphs, which remove the per-kernel launch cost on GPUs at the price of more GPU memory; "
             "max-autotune: also benchmarks kernel choices, a much longer compile for tuned kernels. On a CPU the "
             "compiled step runs at about the eager one's speed at 256x128: it is for GPUs. The compiled "
             "code is cached across runs (inductor's FX graph cache). Losses equal the eager run's up to float32 "
             "rounding; see docs/performance.md")


def add_compile_flag(group):
    group.add_argument("--compile", default="off", nargs="?", const="default", choices=MODES, metavar="MODE",
                       help=MODE_HELP)


def check_compile(parser, args, script):
    """--compile with several --gpus (DataParallel) outside torchrun: a usage error naming the torchrun command."""
    if args.compile != "off" and args.gpus and len(args.gpus) > 1 and not distributed.launched_by_torchrun():
        ids = ",".join(map(str, args.gpus))
        parser.error(f"--compile with --gpus {ids}: DataParallel replicates the module at every step, and "
                     "PyTorch compiles DistributedDataParallel instead; run one process per GPU: CUDA_VISIBLE_DEVICES="
                     f"{ids} torchrun --nproc-per-node {len(args.gpus)} {script} <the same flags without --gpus> "
                     "(see docs/distributed.md)")


class CompiledStep:
    """Calls `model` (in train mode) through torch.compile(model, mode=mode) for batches of `batch`
    images (a process's full batch), eagerly for smaller ones. The first step's time (the compile of
    the forward and, at its first backward, of the backward) is printed when the second step starts,
    unless `report` is false (benchmarks/model.py times the first step itself)."""

    def __init__(self, model, mode, batch, report=True):
        # the graph's random operators are torch's own, on the global generator, in the eager order
        torch._inductor.config.fallback_random = True
        # the buffers keep the eager strides: inductor's layout optimisation would store every 4-d
        # intermediate channels_last, the attention's (windows, heads, tokens, d) too, with the heads
        # innermost; its reductions over d then open a parallel region per token (measured: the CPU step
        # slower than the eager one; docs/performance.md)
        torch._inductor.config.layout_optimization = False
        self.model, self.mode, self.batch = model, mode, batch
        self.compiled = torch.compile(model, mode=mode)
        self.first, self.report = True, report
        self.started = None  # perf_counter() at the first compiled call, until the next call reports it

    def train(self):
        self.model.train()
        return self

    def __call__(self, imgs):
        if self.started is not None:  # the step after the first compiled one
            if distributed.is_main():
                print(f"--compile {self.mode}: the first step, compile included, took "
                      f"{time.perf_counter() - self.started:.1f} s", flush=True)
            self.started = None
        if imgs.shape[0] != self.batch:
            return self.model(imgs)  # a partial batch: eager, see the module's docstring
        if self.first:
            self.first, self.started = False, time.perf_counter() if self.report else None
        return self.compiled(imgs)
