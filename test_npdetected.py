"""Evaluate a DBN checkpoint on CUHK03-NP detected.

    python test_npdetected.py --weights params/ema.pth --net small --dataset-root data
(see --help for every flag; the last line printed is the result in the release's format)
"""
from utils.evaluation import main

if __name__ == "__main__":
    main("npdetected")
