"""Reading LEViT / DBN checkpoints: safe loading, unwrapping, key surgery and clear errors.

All key surgery lives in `checkpoint_filter_fn(state_dict, model)`: it returns a state_dict that
loads strictly into `model` or raises `CheckpointError` saying what is wrong and how to fix it.
"""
import os
import pickle

import torch

from .levit import RELEASED_FILES, VARIANTS

WRAPPER_KEYS = ("state_dict", "model")  # {"state_dict": sd} (release, timm), {"model": sd} (DeiT)
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
# backbone name -> DBN name of the same module; stage3 feeds both branches
BACKBONE_TO_DBN = {"stem": ("stem",), "stage1": ("layer1",), "stage2": ("layer2",),
                   "stage3": ("branch_1", "branch_2")}
MAX_LISTED = 5


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unsafe, unreadable or of another architecture."""


# where the released backbone files come from (no download address or checksum is known here)
RELEASE_SOURCE = "the network/ folder of the release, the public LEViT ReID repository"


def where_files_go():
    names = ", ".join(f"network/{f} ({v})" for v, f in RELEASED_FILES.items())
    return (f"released backbone files go in the network/ folder under their release names: {names}; they come "
            f"from {RELEASE_SOURCE}; ReID models are wherever train.py's --save-path wrote them")


def read_checkpoint(path):
    """torch.load(path, weights_only=True) on CPU; every failure becomes a CheckpointError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} ({where_files_go()})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), type(e).__name__)
        if "GLOBAL" in reason:
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects that would run code when unpickled "
                f"({reason}); nothing in it was executed. Use a checkpoint that holds only tensors, e.g. "
                "re-save one you trust with torch.save(model.state_dict(), path)") from None
        raise CheckpointError(
            f"cannot read {path} as a torch checkpoint: it is corrupt, not written by torch.save, or uses "
            f"pickle features that torch.load(weights_only=True) refuses ({reason}); nothing in it was executed") from None
    except Exception as e:  # noqa: BLE001 - the unpickler of a random or text file raises anything
        # (IndexError, KeyError, UnicodeDecodeError, ...): every failure to read is the same refusal
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: it is corrupt or not written by "
                              f"torch.save ({type(e).__name__}: {e}); nothing in it was executed") from None


def unwrap_state_dict(obj):
    """{"state_dict": sd} / {"model": sd} / bare sd -> sd with `module.` / `_orig_mod.` stripped."""
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint is not a state_dict of tensors, nor a dict holding one under {WRAPPER_KEYS}; found {found}")
    out = {}
    for key, value in obj.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def detect_architecture(state_dict):
    """What a state_dict looks like: kind ("backbone" / "dbn" / None), widths and the variant."""
    kind = ("backbone" if "stage1.layers.0.mlp.proj_out.0.weight" in state_dict else
            "dbn" if "layer1.layers.0.mlp.proj_out.0.weight" in state_dict else None)
    arch = dict(kind=kind, stem=None, embed_dim=None, mlp_ratio=None, heads=None, variant=None, num_classes=None)
    if "stem.0.conv.weight" in state_dict:
        arch["stem"] = state_dict["stem.0.conv.weight"].shape[0]
    if kind is None:
        return arch
    prefix = "stage" if kind == "backbone" else "layer"
    proj_out = state_dict[f"{prefix}1.layers.0.mlp.proj_out.0.weight"]  # (E, hidden, 1, 1)
    arch["embed_dim"] = embed_dim = proj_out.shape[0]
    arch["mlp_ratio"] = proj_out.shape[1] / embed_dim
    scales = [state_dict.get(f"{prefix}{s}.layers.0.attns.logit_scale") for s in (1, 2)]
    arch["heads"] = [t.shape[0] for t in scales if t is not None] or None
    head_key = "head.weight" if kind == "backbone" else "class_list.0.weight"
    if head_key in state_dict:
        arch["num_classes"] = state_dict[head_key].shape[0]
    for name, cfg in VARIANTS.items():
        if cfg["embed_dim"] == embed_dim and arch["stem"] in (None, cfg["stem"]):
            arch["variant"] = name
    return arch


def describe(arch):
    if arch["kind"] is None:
        return "not a LEViT backbone or DBN ReID model"
    what = "LEViT backbone" if arch["kind"] == "backbone" else "DBN ReID model"
    variant = f"LEViT-{arch['variant']}" if arch["variant"] else "no released variant"
    return (f"a {what} like {variant} (stem {arch['stem']}, embed_dim {arch['embed_dim']}, "
            f"mlp_ratio {arch['mlp_ratio']:g}, heads {arch['heads']})")


def model_architecture(model):
    return detect_architecture({k: v for k, v in model.state_dict().items()})


def checkpoint_filter_fn(state_dict, model, source="checkpoint"):
    """Map a (backbone or DBN) state_dict onto `model` (LEViT or DBN) for a strict load.

    Accepts what `unwrap_state_dict` returns (or any raw form: wrappers and prefixes are
    removed here too). For a DBN from a backbone file: stem/stage1/stage2 become
    stem/layer1/layer2, stage3 fills both branch_1 and branch_2, head.* is dropped and the
    model keeps its own bn_list/class_list. Classifier weights whose class count differs from
    the model's (class_list.* or head.*) are replaced by the model's own. Does not modify its
    inputs. Raises CheckpointError when the file is of another architecture.
    """
    state_dict = unwrap_state_dict(state_dict)
    target = model.state_dict()
    is_dbn = "layer1.layers.0.mlp.proj_out.0.weight" in target
    arch = detect_architecture(state_dict)
    if arch["kind"] is None:
        raise CheckpointError(
            f"{source} is not a LEViT backbone or DBN ReID state_dict (first keys: {list(state_dict)[:5]}); "
            f"{where_files_go()}")
    if arch["kind"] == "dbn" and not is_dbn:
        raise CheckpointError(f"{source} is {describe(arch)}; load it into DBN with load_reid_weights, "
                              "not into a LEViT backbone")
    out = {}
    if arch["kind"] == "backbone" and is_dbn:
        for key, value in state_dict.items():
            top, _, rest = key.partition(".")
            for new_top in BACKBONE_TO_DBN.get(top, ()):  # head.* has no DBN counterpart
                out[f"{new_top}.{rest}"] = value
        for key, value in target.items():  # the ReID head is not in a backbone file
            if key.startswith(("bn_list.", "class_list.")):
                out[key] = value
    else:
        out = dict(state_dict)
    for key, value in target.items():  # the number of classes is the dataset's, not the architecture's
        if key.startswith(("head.", "class_list.")) and key in out and out[key].shape != value.shape:
            out[key] = value

    missing = [k for k in target if k not in out]
    unexpected = [k for k in out if k not in target]
    mismatched = [k for k in target if k in out and out[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"  {k}: file {tuple(out[k].shape)} vs model {tuple(target[k].shape)}" for k in mismatched[:MAX_LISTED]]
        lines += [f"  {k}: missing from file" for k in missing[:MAX_LISTED]]
        lines += [f"  {k}: not in model" for k in unexpected[:MAX_LISTED]]
        counts = f"{len(mismatched)} shape mismatches, {len(missing)} missing, {len(unexpected)} unexpected keys"
        fix = ""
        if arch["variant"]:
            fix = f" Build the model with net='{arch['variant']}'"
            if arch["mlp_ratio"] != VARIANTS[arch["variant"]]["mlp_ratio"]:
                fix += f" and mlp_ratio={arch['mlp_ratio']:g}"
            fix += " (test scripts: --net " + arch["variant"] + ")."
        raise CheckpointError(
            f"{source} does not fit the model ({counts}); first differences:\n" + "\n".join(lines) +
            f"\nThe file is {describe(arch)}; the model is {describe(model_architecture(model))}.{fix}")
    return out


def _read(path_or_state_dict):
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        return unwrap_state_dict(read_checkpoint(source)), source
    return unwrap_state_dict(path_or_state_dict), "state_dict"


def load_weights(model, path_or_state_dict):
    """Load a checkpoint (path or state_dict, in any circulating form) strictly into LEViT or DBN."""
    state_dict, source = _read(path_or_state_dict)
    model.load_state_dict(checkpoint_filter_fn(state_dict, model, source=source))


def load_reid_weights(model, path_or_state_dict):
    """Load a trained DBN checkpoint (what train.py saves to --save-path, the release's
    params/ema.pth, wrapped or prefixed) for evaluation. class_list.* may hold another number
    of classes (the model keeps its own then: they are not used at test time); everything
    else must match exactly."""
    state_dict, source = _read(path_or_state_dict)
    arch = detect_architecture(state_dict)
    if arch["kind"] == "backbone":
        raise CheckpointError(
            f"{source} is {describe(arch)} (ImageNet weights), not a trained ReID model; "
            "to train from it, put it at network/<release name> (picked up by DBN(pretrained='auto')) "
            "or pass it as DBN(pretrained=path)")
    own = model.class_list[0].weight.shape[0]
    if arch["kind"] == "dbn" and arch["num_classes"] not in (None, own):
        print(f"load_reid_weights: {source} was trained on {arch['num_classes']} classes, the model has "
              f"{own}; keeping the model's classifiers (not used for test features)")
    model.load_state_dict(checkpoint_filter_fn(state_dict, model, source=source))
