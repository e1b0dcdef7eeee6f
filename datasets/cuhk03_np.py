"""CUHK03 under the new protocol (CUHK03-NP), detected and labeled boxes (`--dataset npdetected / nplabeled`).

Official layout (`--dataset-root`/cuhk03-np, as released with the re-ranking paper's code)::

    cuhk03-np/
        detected/
            bounding_box_train/   0001_c1_1.png, ...
            query/                ...
            bounding_box_test/    ...
        labeled/
            (the same three folders)

Market-style file names: `<person id>_c<camera 1 or 2>_<index>.png` (.jpg is accepted too).

Statistics (as published, new protocol): 1,467 identities, 2 cameras per identity.
train: 767 ids, 7,365 detected / 7,368 labeled images; query: 700 ids, 1,400 images;
gallery: 700 ids, 5,332 detected / 5,328 labeled images.

Citations: W. Li, R. Zhao, T. Xiao, X. Wang. DeepReID: Deep Filter Pairing Neural Network for Person
Re-identification. CVPR 2014. Z. Zhong, L. Zheng, D. Cao, S. Li. Re-ranking Person Re-identification
with k-reciprocal Encoding. CVPR 2017.
"""
import re

from datasets.base import FolderDataset


class CUHK03NP(FolderDataset):
    pattern = re.compile(r"^(-?\d+)_c(\d+)")
    example = "0001_c1_1.png"


class NPDetected(CUHK03NP):
    name = "npdetected"
    folder = "cuhk03-np/detected"


class NPLabeled(CUHK03NP):
    name = "nplabeled"
    folder = "cuhk03-np/labeled"
