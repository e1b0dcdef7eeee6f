"""Evaluate a DBN checkpoint on your own data (--dataset custom; layouts in datasets/custom.py).

    python test_custom.py --weights params/ema.pth --dataset-root path/to/your_dataset
(--dataset-root is the dataset folder itself, holding query/ and gallery/ or query.txt and gallery.txt)
"""
from utils.evaluation import main

if __name__ == "__main__":
    main("custom")
