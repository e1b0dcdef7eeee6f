"""Images of a list of `(path, label, camid)` items, decoded by torchvision.io straight to uint8 RGB
tensors (3, H, W), and a collate that skips the unreadable ones.

An image that cannot be decoded (missing, truncated, not an image) does not stop training: its item
comes back as `(None, label, camid)` with an `UnreadableImageWarning` naming the path, and
`collate_skip` drops it from the batch and counts it, so the caller can report (and bound) how many
were skipped.
"""
import re
import warnings

import torch
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_image, read_file

# what torchvision.io raises for files it cannot read or decode: RuntimeError for a missing file,
# an unknown format and truncated or damaged data; OSError and ValueError for the rest
DECODE_ERRORS = (RuntimeError, OSError, ValueError)
# torchvision 0.29 (pinned in requirements.txt) marks its decoders as deprecated in favour of
# TorchCodec and warns on every call; they are the fastest route to a uint8 tensor that we have
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded; its item was skipped."""


def read_image(path):
    """The image at `path` as a uint8 tensor (3, H, W), RGB (grey is repeated, alpha dropped), fully
    decoded: corrupt or truncated data raises here, not later."""
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def _reason(err):
    # torchvision's messages start with the C++ function and source line: keep the reason only
    return re.sub(r"^\w+, \S+\.cpp:\d+, ", "", str(err))


class ImageDataset(torch.utils.data.Dataset):
    """`items` (path, label, camid) -> `(transform(image) or None, label, camid)`.

    `transform` is a callable (uint8 tensor (3, H, W) -> tensor), or a dict {camid: callable} choosing the
    transform by the item's camid (University-1652: one per view, see datasets.transforms).
    """

    def __init__(self, items, transform):
        self.items = list(items)
        if isinstance(transform, dict):
            missing = sorted({item[2] for item in self.items} - set(transform))
            if missing:
                raise ValueError(f"no transform for camid {missing[0]}: the transform dict has camids "
                                 f"{sorted(transform)}, the items use {sorted({item[2] for item in self.items})}")
            if not all(callable(t) for t in transform.values()):
                raise TypeError("every value of the transform dict must be callable (uint8 image tensor -> tensor)")
        elif not callable(transform):
            raise TypeError(f"transform must be a callable or a dict {{camid: callable}}, "
                            f"got {type(transform).__name__}")
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label, camid = self.items[index]
        try:
            img = read_image(path)
        except DECODE_ERRORS as err:
            warnings.warn(f"skipping unreadable image {path}: {_reason(err)}", UnreadableImageWarning, stacklevel=2)
            return None, label, camid
        transform = self.transform[camid] if isinstance(self.transform, dict) else self.transform
        return transform(img), label, camid


def collate_skip(batch):
    """[(img or None, label, camid), ...] -> (imgs (B, 3, H, W) float, labels (B,) int64, camids (B,) int64,
    num_skipped), B = the items whose image was read. When none was, imgs is an empty (0, 3, 0, 0) tensor."""
    kept = [item for item in batch if item[0] is not None]
    if kept:
        imgs = default_collate([item[0] for item in kept])  # shared memory inside loader workers
    else:
        imgs = torch.zeros(0, 3, 0, 0)
    labels = torch.tensor([int(item[1]) for item in kept], dtype=torch.int64)
    camids = torch.tensor([int(item[2]) for item in kept], dtype=torch.int64)
    return imgs, labels, camids, len(batch) - len(kept)
