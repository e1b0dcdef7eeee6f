"""Reading LEViT / DBN checkpoints: safe loading, unwrapping, key surgery and clear errors.

All key surgery lives in `checkpoint_filter_fn(state_dict, model)`: it returns a state_dict that
loads strictly into `model` or raises `CheckpointError` saying what is wrong and how to fix it.
"""
import os
import pickle
import warnings
import zipfile

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


def export_kind(path):
    """What export.py-style file `path` is ("a TorchScript export", "a torch.export program", "an ONNX
    model"), or None for anything else (a checkpoint is a zip of a data.pkl and tensors)."""
    if path.endswith(".onnx"):
        return "an ONNX model"
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if any("/code/__torch__" in name or name.endswith("/constants.pkl") for name in names):
        return "a TorchScript export"
    if any("serialized_exported_program" in name or name.endswith("archive_format") for name in names):
        return "a torch.export program"
    return None


def read_checkpoint(path):
    """torch.load(path, weights_only=True) on CPU; every failure becomes a CheckpointError."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file ({where_files_go()})")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} ({where_files_go()})")
    exported = export_kind(path)
    if exported:
        raise CheckpointError(f"{path} is {exported} (a program for inference, not weights): pass the .pth "
                              "checkpoint it was exported from")
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
        warnings.warn(f"load_reid_weights: {source} was trained on {arch['num_classes']} classes, the model has "
                      f"{own}; keeping the model's classifiers (not used for test features)", stacklevel=2)
    model.load_state_dict(checkpoint_filter_fn(state_dict, model, source=source))


# --- the self-describing file train.py writes to --save-path ------------------------------------

FORMAT = "levit-reid-dbn"
FORMAT_VERSION = 1
# what a checkpoint says about itself besides the weights (see make_checkpoint)
INFO_KEYS = ("variant", "mlp_ratio", "num_classes", "num_parts", "img_height", "img_width", "dataset",
             "transform", "args", "metrics")


def _plain(value):
    """Namespaces, numpy scalars and other objects -> what torch.load(weights_only=True) reads back."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        return value.item()
    return str(value)


def make_checkpoint(model, img_height, img_width, dataset=None, transform=None, args=None, metrics=None):
    """The file train.py writes to --save-path: a DBN's state_dict and what is needed to use it.

    Keys: "format" (FORMAT), "format_version" (FORMAT_VERSION), "state_dict" (the release's keys, so
    anything that unwraps {"state_dict": ...} loads it), "variant" ("small" / "large"), "mlp_ratio",
    "num_classes", "num_parts", "img_height", "img_width" (the input size trained at), "dataset"
    (the --dataset name), "transform" (its transform family: "reid", "metric" or "university"),
    "args" (the training flags as a dict) and "metrics" (the final evaluation, or None). Every value
    is a tensor or a plain Python value, so torch.load(path, weights_only=True) reads it.
    """
    if getattr(model, "fused", False):
        raise ValueError("make_checkpoint: the model was fused for inference (its keys changed); save the "
                         "unfused model")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "variant": model.net, "mlp_ratio": float(model.mlp_ratio), "num_classes": int(model.num_classes),
        "num_parts": list(model.num_parts), "img_height": int(img_height), "img_width": int(img_width),
        "dataset": dataset, "transform": transform, "args": _plain(args), "metrics": _plain(metrics),
    }


def checkpoint_info(obj, source="checkpoint"):
    """(state_dict, info) of anything read_checkpoint returns.

    `info` has INFO_KEYS plus "format_version" (0: a bare state_dict such as the release's
    params/ema.pth, or a train.py _last.pth checkpoint) and "source". What the file does not say is
    None, except the variant, MLP ratio and classes, which the shapes give (detect_architecture).
    """
    state_dict = unwrap_state_dict(obj)
    arch = detect_architecture(state_dict)
    info = dict.fromkeys(INFO_KEYS)
    info.update(format_version=0, source=source, variant=arch["variant"], mlp_ratio=arch["mlp_ratio"],
                num_classes=arch["num_classes"])
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{source} has checkpoint format version {version!r}; this code reads versions "
                                  f"up to {FORMAT_VERSION}: update the code, or load obj['state_dict'] yourself")
        info.update({k: obj.get(k) for k in INFO_KEYS}, format_version=version)
        if arch["variant"] not in (None, info["variant"]):
            raise CheckpointError(f"{source} says variant {info['variant']!r} but its weights are "
                                  f"{describe(arch)}; the file is inconsistent")
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj.get("args"), dict):  # <stem>_last.pth
        trained = obj["args"]
        info.update(img_height=trained.get("img_height"), img_width=trained.get("img_width"),
                    dataset=trained.get("dataset"), args=trained)
    return state_dict, info


def read_reid_checkpoint(path):
    """(state_dict, info) of a DBN file: the --save-path format, a _last.pth or a bare state_dict."""
    state_dict, info = checkpoint_info(read_checkpoint(path), source=os.fspath(path))
    arch = detect_architecture(state_dict)
    if arch["kind"] == "backbone":
        name = f"LEViT-{arch['variant']}" if arch["variant"] else "LEViT"
        net = f" --net {arch['variant']}" if arch["variant"] else ""
        raise CheckpointError(f"{path} is a {name} backbone (ImageNet weights), not a trained ReID model. To "
                              f"train from this backbone: python train.py{net} --pretrained {path} ...")
    return state_dict, info


def resolve_settings(info, net=None, img_height=None, img_width=None, fallback_net=None):
    """The variant and input size to use: what the file says, or the flags where it says nothing.

    A flag that contradicts the file raises CheckpointError naming both; `fallback_net` is the
    variant where neither the file nor `net` says. Returns
    (net, img_height, img_width); the size is None where neither the file nor a flag gives it.
    """
    source, variant = info["source"], info["variant"]
    if net is not None and variant is not None and net != variant:
        embed = VARIANTS[variant]["embed_dim"]
        raise CheckpointError(f"{source} holds a LEViT-{variant} DBN (embed_dim {embed}) but --net {net} was "
                              f"given; pass --net {variant} (or leave --net out: the file says which)")
    net = net or variant or fallback_net
    if net is None:
        raise CheckpointError(f"{source}: cannot tell the variant from the weights (no released LEViT variant "
                              "has their widths); pass --net small or --net large")
    size = (info["img_height"], info["img_width"])
    given = (img_height, img_width)
    if None not in size and any(g is not None and g != s for g, s in zip(given, size)):
        shown = "x".join(str(g if g is not None else s) for g, s in zip(given, size))
        raise CheckpointError(f"{source} was trained at {size[0]}x{size[1]} (height x width) but the flags ask "
                              f"for {shown}; pass --img-height {size[0]} --img-width {size[1]} or leave them out")
    height = img_height if img_height is not None else size[0]
    width = img_width if img_width is not None else size[1]
    return net, height, width
