"""Evaluate a DBN checkpoint on your own data (--dataset custom; layouts in datasets/custom.py).

    python test_custom.py --weights params/ema.pth --dataset-root path/to/your_dataset
(--dataset-root is the dataset folder itself, holding query/ and gallery/ or query.txt and gallery.txt)
"""
from evaluation.cli import main

# This script's defaults, as plain constants to edit as the release's users do. A flag overrides
# them, and so does what the checkpoint records (train.py's files record the variant and the input
# size; a bare state_dict only its variant, read from the weights' shapes).
WEIGHTS = "params/ema.pth"
NET = "small"  # the variant when the file cannot tell; the weights' shapes say it for both released ones
IMG_HEIGHT, IMG_WIDTH = 256, 128  # used when neither the flags nor the checkpoint give the size

if __name__ == "__main__":
    main("custom", weights=WEIGHTS, net=NET, img_height=IMG_HEIGHT, img_width=IMG_WIDTH)
