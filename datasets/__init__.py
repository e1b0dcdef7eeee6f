"""Dataset parsers, one module per dataset; `build_dataset(name, root)` returns the parsed dataset.

Every dataset object has `name`, `family` ("reid", "metric" or "university"), `root` (its folder),
`train` [(path, label 0..C-1, camid)], `num_classes`, `query` / `gallery` [(path, raw id, camid)] or
None, `test` (metric family) and `summary()`, and states its protocol: `image_size`,
`train_transform()`, `test_transform()`, `sampler_views()`, `test_protocol(**protocol_options)`
(datasets.base.Dataset, datasets.protocol). Bad layouts raise DatasetError with a message naming
the path (and, for a missing one, the expected tree). `dataset_class(name)` gives the class, whose
attributes say the protocol before any folder is read.
"""
from datasets.base import DatasetError
from datasets.car196 import Cars196
from datasets.cub200 import CUB200
from datasets.cuhk03_np import NPDetected, NPLabeled
from datasets.custom import Custom
from datasets.dukemtmc import DukeMTMC
from datasets.market1501 import Market1501
from datasets.msmt17 import MSMT17
from datasets.university1652 import University1652
from datasets.vehicleid import VehicleID
from datasets.veri776 import VeRi776

_DATASETS = {cls.name: cls for cls in (Market1501, DukeMTMC, MSMT17, VeRi776, VehicleID, Cars196, CUB200,
                                       University1652, NPDetected, NPLabeled, Custom)}
DATASET_NAMES = tuple(_DATASETS)
# each dataset's folder under --dataset-root ("" for custom: --dataset-root is the dataset folder)
DATASET_FOLDERS = {name: cls.folder for name, cls in _DATASETS.items()}
# the --dataset-root help of train.py and the test scripts
DATASET_ROOT_HELP = ("folder holding the dataset folders ("
                     + ", ".join(dict.fromkeys(f"{f.split('/')[0]}/" for f in DATASET_FOLDERS.values() if f))
                     + "); --dataset custom and test_custom.py: the dataset folder itself")

__all__ = ["DATASET_FOLDERS", "DATASET_NAMES", "DATASET_ROOT_HELP", "DatasetError", "build_dataset", "dataset_class"]


def dataset_class(name):
    """The parser class of dataset `name` (one of DATASET_NAMES); DatasetError for another name."""
    if name not in _DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    return _DATASETS[name]


def build_dataset(name, root):
    """Parse dataset `name` (one of DATASET_NAMES) from its folder under `root` (--dataset-root; for
    "custom", `root` is the dataset folder itself)."""
    return dataset_class(name)(root)
