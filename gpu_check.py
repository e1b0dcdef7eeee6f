"""GPU check, in under 10 minutes on one GPU: `python gpu_check.py`.

1. the tests marked `cuda` (tests/test_cuda.py: AMP float16 with GradScaler, bfloat16, channels_last,
   DataParallel and torchrun/NCCL with --sync-bn on 2 GPUs, a test script, an export, --eval-period);
2. a timed training on generated data at 256x128, batch 64 (LEViT-S from scratch, 2 epochs of 8
   batches): img/s, the share of time waiting for data and the peak GPU memory;
3. eager and compiled training steps side by side at 256x128, 32 and 64 images per GPU, float16
   autocast with a GradScaler (train.py's --amp): benchmarks.model's training table, 3 runs each,
   DBN-S and ResNet-50 compiled as train.py --compile compiles them (mode default), with img/s,
   compiled / eager and DBN-S / ResNet-50 in the same setting, then the compiled DBN-S at 32 images
   against its targets (2x its eager img/s, 3x ResNet-50 compiled);
4. `python -m benchmarks --what model --device cuda --quick --no-training` (part 3 is its training table).

Without CUDA it runs the tests (they skip, saying why), says that no GPU was found and what it
skipped, and exits with status 0. Otherwise the exit status is 1 when a part failed; the training
targets of part 3 are reported, not checked.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def run_cuda_tests():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                           os.path.join("tests", "test_cuda.py")], cwd=ROOT)
    return proc.returncode == 0


def timed_training(workers):
    """Train on generated data in this process; (img/s, data-wait share, peak GPU memory in GiB)."""
    import train
    from datasets.synthetic import generate
    with tempfile.TemporaryDirectory() as folder:
        generate("market1501", folder, ids=64, images_per_id=8, cameras=2, seed=0)  # 512 images: 8 batches
        save = os.path.join(folder, "ema.pth")
        argv = ["--dataset", "market1501", "--dataset-root", folder, "--net", "small", "--pretrained", "none",
                "--img-height", "256", "--img-width", "128", "--batch-size", "64", "--instance-num", "4",
                "--epochs", "1,2", "--ema-ratio", "0.5", "--ema-extra", "0", "--device", "cuda",
                "--num-workers", str(workers), "--no-eval", "--save-path", save]
        torch.cuda.reset_peak_memory_stats()
        train.main(train.parse_args(argv))
        last = [json.loads(line) for line in open(os.path.join(folder, "ema_log.jsonl"))][-1]  # warmed up
    return last["img_per_s"], last["data_wait_share"], torch.cuda.max_memory_allocated() / 2**30


def compare_training(device, batches=(32, 64), repeats=3):
    """Part 3: benchmarks.model.training_table at each of `batches` images, float16 autocast, compiled rows
    included; returns the line on the compiled DBN-S at the first batch against its targets."""
    from benchmarks import model as bench_model
    seconds = {batch: bench_model.training_table(batch, device, repeats, compiled=True, amp=torch.float16)
               for batch in batches}
    batch, s = batches[0], seconds[batches[0]]
    return (f"compiled DBN-S training at {batch} images per GPU, float16 AMP: {batch / s['DBN-S compiled']:.0f} "
            f"img/s, {s['DBN-S channels_last'] / s['DBN-S compiled']:.2f}x its eager img/s (target 2x), "
            f"{s['ResNet-50 channels_last compiled'] / s['DBN-S compiled']:.2f}x ResNet-50 channels_last "
            "compiled (target 3x)")


def main(argv=None):
    parser = argparse.ArgumentParser("gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-workers", type=int, default=4, help="loader processes of the timed training")
    args = parser.parse_args(argv)
    start = time.time()
    tests_ok = run_cuda_tests()
    if not torch.cuda.is_available():
        print("gpu_check: no GPU found (torch.cuda.is_available() is False): the cuda tests skipped (listed "
              "above); the timed training at 256x128 batch 64, the eager and compiled training steps (float16 "
              "AMP, 32 and 64 images per GPU) and `python -m benchmarks --what model --device cuda` were not run")
        return 0 if tests_ok else 1
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s)")
    img_s, wait, peak = timed_training(args.num_workers)
    print(f"gpu_check: training at 256x128, batch 64, --num-workers {args.num_workers}: {img_s:.0f} img/s, "
          f"data wait {wait:.0%} of the epoch, peak GPU memory {peak:.2f} GiB")
    part = time.time()
    line = compare_training(torch.device("cuda"))
    print(f"gpu_check: {line}; eager and compiled training steps took {time.time() - part:.0f} s")
    bench = subprocess.run([sys.executable, "-m", "benchmarks", "--what", "model", "--device", "cuda", "--quick",
                            "--no-training"], cwd=ROOT)
    print(f"gpu_check: {'all parts passed' if tests_ok and bench.returncode == 0 else 'a part FAILED (above)'} "
          f"in {time.time() - start:.0f} s")
    return 0 if tests_ok and bench.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
