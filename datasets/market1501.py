"""Market-1501 person re-identification dataset.

Official layout (`--dataset-root`/market1501, as unpacked from Market-1501-v15.09.15.zip)::

    market1501/
        bounding_box_train/   0002_c1s1_000451_03.jpg, ...
        query/                0001_c1s1_001051_00.jpg, ...
        bounding_box_test/    -1_c1s1_000401_03.jpg, 0000_c1s1_000151_01.jpg, 0001_c1s1_001051_03.jpg, ...

File name `0002_c1s1_000451_03.jpg`: person id 0002, camera 1 (of 6), sequence 1, frame 000451,
bounding box 03 of that frame. In bounding_box_test, id -1 marks junk boxes (dropped from the
gallery) and id 0000 distractors (kept in the gallery, never matched).

Statistics (as published): 1,501 identities from 6 cameras, 32,668 boxes (DPM detections).
train: 751 ids, 12,936 images; query: 750 ids, 3,368 images; gallery (bounding_box_test): 19,732
images of 750 ids plus distractors and junk (15,913 once junk is dropped).

Citation: L. Zheng, L. Shen, L. Tian, S. Wang, J. Wang, Q. Tian. Scalable Person Re-identification:
A Benchmark. ICCV 2015.
"""
import re

from datasets.base import FolderDataset


class Market1501(FolderDataset):
    name = "market1501"
    folder = "market1501"
    official_folders = ("Market-1501-v15.09.15", "Market-1501")
    pattern = re.compile(r"^(-?\d+)_c(\d+)s\d+_")
    example = "0002_c1s1_000451_03.jpg"
