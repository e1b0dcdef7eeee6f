"""Evaluate a DBN checkpoint on VeRi-776.

    python test_veri776.py --weights params/ema.pth --net small --dataset-root data
(see --help for every flag; the last line printed is the result in the release's format)
"""
from utils.evaluation import main

if __name__ == "__main__":
    main("veri776")
