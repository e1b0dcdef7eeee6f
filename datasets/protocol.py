"""Test protocols: what a dataset's test consists of, said by the dataset itself.

A dataset's `test_protocol(**options)` returns a `Protocol`: its test splits and how they are
scored. evaluation.evaluator.evaluate runs any protocol the same way, so no module has to know which
dataset (or dataset family) it evaluates:

- scoring "rank": every split is a query list ranked against a gallery list (CMC, mAP, mINP; the
  same id under the same camera is junk). Several splits (VehicleID's seeded trials) are averaged,
  and they share one feature pass over their distinct images, named `pool`.
- scoring "retrieval": the one split's query list is searched against itself, each image's own
  entry left out (Recall@K, and NMI of a k-means with one cluster per class).

Items are `(path, id, camid)` tuples. `query_view` / `gallery_view` name the University-1652 view
whose test transform applies (None: the dataset's one test transform).
"""
from dataclasses import dataclass
from typing import Optional

SCORINGS = ("rank", "retrieval")


@dataclass(frozen=True)
class TestSplit:
    name: str  # the prefix of its rank-list pictures: <vis-dir>/<name>_rank_<query>.png
    query: list
    gallery: Optional[list] = None  # None: retrieval within `query`
    query_view: Optional[str] = None
    gallery_view: Optional[str] = None


@dataclass(frozen=True)
class Protocol:
    splits: tuple
    scoring: str = "rank"
    title: str = ""  # several splits: what they are, on the line of their spread
    pool: Optional[str] = None  # several splits: one feature pass over their distinct images, named so

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise ValueError(f"unknown scoring {self.scoring!r}; expected one of {', '.join(SCORINGS)}")
        if not self.splits:
            raise ValueError("a protocol needs at least one test split")
        if self.scoring == "retrieval" and (len(self.splits) != 1 or self.splits[0].gallery is not None):
            raise ValueError("a retrieval protocol is one split searched against itself (gallery None)")
        if self.scoring == "rank" and any(split.gallery is None for split in self.splits):
            raise ValueError("every split of a rank protocol needs a gallery")
        if len(self.splits) > 1 and self.pool is None:
            raise ValueError("a protocol of several splits names the feature pass they share (pool)")
        if self.pool is not None and any(s.query_view or s.gallery_view for s in self.splits):
            raise ValueError("pooled splits share one feature pass, so one test transform: no views")
