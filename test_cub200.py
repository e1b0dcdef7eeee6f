"""Evaluate a DBN checkpoint on CUB-200-2011 (Recall@1,2,4,8 and NMI).

    python test_cub200.py --weights params/ema.pth --net small --dataset-root data
(see --help for every flag; the last line printed is the result in the release's format)
"""
from utils.evaluation import main

if __name__ == "__main__":
    main("cub200")
