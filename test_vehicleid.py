"""Evaluate a DBN checkpoint on VehicleID (mean over --trials seeded gallery draws of test_list_<--test-size>).

    python test_vehicleid.py --weights params/ema.pth --net small --dataset-root data
(see --help for every flag; the last line printed is the result in the release's format)
"""
from evaluation.cli import main

# This script's defaults, as plain constants to edit as the release's users do. A flag overrides
# them, and so does what the checkpoint records (train.py's files record the variant and the input
# size; a bare state_dict only its variant, read from the weights' shapes).
WEIGHTS = "params/ema.pth"
NET = "small"  # the variant when the file cannot tell; the weights' shapes say it for both released ones
IMG_HEIGHT, IMG_WIDTH = 256, 256  # used when neither the flags nor the checkpoint give the size

if __name__ == "__main__":
    main("vehicleid", weights=WEIGHTS, net=NET, img_height=IMG_HEIGHT, img_width=IMG_WIDTH)
