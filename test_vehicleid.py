"""Evaluate a DBN checkpoint on VehicleID (mean over --trials seeded gallery draws of test_list_<--test-size>).

    python test_vehicleid.py --weights params/ema.pth --net small --dataset-root data
(see --help for every flag; the last line printed is the result in the release's format)
"""
from utils.evaluation import main

if __name__ == "__main__":
    main("vehicleid")
