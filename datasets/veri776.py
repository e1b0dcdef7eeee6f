"""VeRi-776 vehicle re-identification dataset.

Official layout (`--dataset-root`/VeRi, as unpacked from VeRi.zip; its name_*.txt and XML files are
not needed)::

    VeRi/
        image_train/   0001_c001_00016450_0.jpg, ...
        image_query/   0002_c002_00030600_0.jpg, ...
        image_test/    0002_c002_00030600_0.jpg, ...

File name `0001_c001_00016450_0.jpg`: vehicle id 0001, camera c001 (of c001..c020), frame 00016450.

Statistics (as published): 776 vehicles, 20 cameras, about 50,000 images. train: 576 ids, 37,778
images; query: 200 ids, 1,678 images; gallery (image_test): 200 ids, 11,579 images.

Citations: X. Liu, W. Liu, H. Ma, H. Fu. Large-scale Vehicle Re-identification in Urban Surveillance
Videos. ICME 2016. X. Liu, W. Liu, T. Mei, H. Ma. A Deep Learning-Based Approach to Progressive
Vehicle Re-identification for Urban Surveillance. ECCV 2016.
"""
import re

from datasets.base import FolderDataset


class VeRi776(FolderDataset):
    name = "veri776"
    folder = "VeRi"
    image_size = (256, 256)
    splits = ("image_train", "image_query", "image_test")
    pattern = re.compile(r"^(-?\d+)_c(\d+)_")
    example = "0001_c001_00016450_0.jpg"
