"""`--what extract`: DBN-S test-time feature extraction (image + flipped copy, the evaluation's default
batch of 64) under glibc's default malloc settings and tuned, each in a fresh process."""
import json
import os
import statistics
import subprocess
import sys

import torch

from network import DBN
from network.fast import inference_form
from benchmarks import configure_malloc, time_alternating

def worker(args):
    """In a fresh process: seconds per batch of DBN-S feature extraction (network.fast's inference
    form, as FeatureExtractor runs it, image plus its flip) and page faults per batch, medians of --repeats, printed as one JSON line."""
    torch.set_num_threads(args.threads)
    malloc = configure_malloc(args.malloc)
    height, width = args.size
    model = inference_form(DBN(751, net="small", pretrained=None))
    x = torch.rand(args.batch, 3, height, width)

    def batch():
        with torch.no_grad():
            return torch.cat(model(x), 1) + torch.cat(model(torch.flip(x, dims=[3])), 1)
    faults = {}
    seconds = time_alternating({"extract": batch}, args.repeats, faults=faults)["extract"]
    print(json.dumps({"malloc": malloc, "seconds": seconds, "faults": faults["extract"]}))


def bench(args, batch=64, rounds=2):
    """Feature extraction with glibc's default malloc settings and tuned (as train.py and the test
    scripts run on the CPU), one fresh process per run, the two alternating; medians of `rounds`."""
    print(f"\nDBN-S feature extraction (inference form, image + flip), batch {batch}, {args.threads} threads; "
          f"a fresh process per run, {rounds} runs each, medians")
    print(f"{'input':8s} {'default s/batch':>16s} {'faults':>9s} {'tuned s/batch':>14s} {'faults':>7s} {'speed-up':>9s}")
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for height, width in ((256, 128), (256, 256)):
        runs = {"default": [], "tuned": []}
        for _ in range(rounds):
            for mode in runs:
                cmd = [sys.executable, "-m", "benchmarks", "--worker", "extract", "--malloc", mode,
                       "--size", f"{height}x{width}", "--batch", str(batch), "--threads", str(args.threads),
                       "--repeats", "3"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=repo_root).stdout
                runs[mode].append(json.loads(out.strip().splitlines()[-1]))
        d, t = ({key: statistics.median(r[key] for r in runs[mode]) for key in ("seconds", "faults")}
                for mode in ("default", "tuned"))
        print(f"{height}x{width:<5d} {d['seconds']:16.3f} {d['faults']:9,.0f} {t['seconds']:14.3f} "
              f"{t['faults']:7,.0f} {d['seconds'] / t['seconds']:8.2f}x")
