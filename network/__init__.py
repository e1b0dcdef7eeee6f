"""LEViT backbone, DBN ReID head and checkpoint loading."""
from .checkpoint import (FORMAT_VERSION, CheckpointError, checkpoint_filter_fn, detect_architecture,
                         load_reid_weights, make_checkpoint, read_checkpoint, read_reid_checkpoint,
                         resolve_settings, unwrap_state_dict)
from .dbn import DBN, PretrainedNotFound, out_of_range, released_path
from .levit import LEViT, RELEASED_FILES, VARIANTS, fuse_conv_bn

__all__ = ["LEViT", "DBN", "PretrainedNotFound", "VARIANTS", "RELEASED_FILES", "CheckpointError", "checkpoint_filter_fn",
           "detect_architecture", "load_reid_weights", "read_checkpoint",
           "unwrap_state_dict", "released_path", "out_of_range", "fuse_conv_bn", "FORMAT_VERSION", "make_checkpoint",
           "read_reid_checkpoint", "resolve_settings"]
