"""Evaluate a DBN checkpoint on University-1652 (--direction satellite2drone or drone2satellite).

    python test_university1652.py --weights params/ema.pth --net small --dataset-root data
(see --help for every flag; the last line printed is the result in the release's format)
"""
from utils.evaluation import main

if __name__ == "__main__":
    main("university1652")
