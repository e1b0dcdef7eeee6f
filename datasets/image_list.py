"""Image sets named on a command line (extract.py, search.py): a folder, a glob pattern or a list file,
and the person ids and cameras their names carry.

- a folder: every .jpg/.jpeg/.png under it, recursively, sorted;
- a glob (holds * ? or [): the matching image files, sorted (** recurses);
- a list file (.txt): one image per line, `path [pid [camid]]`, paths relative to the list's folder
  (the `--dataset custom` list format); blank lines and lines starting with # are skipped.

Ids from names: Market-1501 names `<pid>_c<camera>...` (camera as written: c3 -> 3), or an integer
identity folder `<pid>/<name>` with an optional `c<N>` in the file name (the custom layout). A list
file's own columns win.
"""
import glob
import os

from datasets.base import is_image
from datasets.custom import CAMERA, MARKET_NAME


class ImageListError(ValueError):
    """A folder, glob or list file that names no usable image; the message says which and where."""


def _is_glob(spec):
    return any(ch in spec for ch in "*?[")


def read_image_list(path):
    """(paths, pids or None, camids or None) of a list file; pids/camids where every line has them."""
    folder = os.path.dirname(os.path.abspath(path))
    paths, pids, camids = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) > 3:
                raise ImageListError(f"{path}, line {lineno}: expected 'path [pid [camid]]' (paths cannot hold "
                                     f"spaces), got {line.strip()!r}")
            try:
                numbers = [int(v) for v in fields[1:]]
            except ValueError:
                raise ImageListError(f"{path}, line {lineno}: pid and camid must be integers, "
                                     f"got {' '.join(fields[1:])!r}") from None
            image = os.path.join(folder, fields[0])
            if not os.path.isfile(image):
                raise ImageListError(f"{path}, line {lineno}: listed image not found: {image}")
            paths.append(image)
            pids.append(numbers[0] if numbers else None)
            camids.append(numbers[1] if len(numbers) > 1 else None)
    if not paths:
        raise ImageListError(f"no images listed in {path}")
    return paths, (pids if None not in pids else None), (camids if None not in camids else None)


def collect_images(spec):
    """(paths, pids or None, camids or None) of a folder, glob pattern or list file (see the module doc)."""
    if os.path.isdir(spec):
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(spec) for f in files if is_image(f))
        if not paths:
            raise ImageListError(f"no images (.jpg/.jpeg/.png) under {spec}")
    elif os.path.isfile(spec) and spec.endswith(".txt"):
        paths, pids, camids = read_image_list(spec)
        if pids is not None:
            return paths, pids, camids if camids is not None else ids_from_names(paths)[1]
        return (paths, *ids_from_names(paths))
    elif os.path.isfile(spec) and is_image(spec):
        paths = [spec]
    elif _is_glob(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if is_image(p) and os.path.isfile(p))
        if not paths:
            raise ImageListError(f"no image files match {spec!r}")
    else:
        raise ImageListError(f"not found: {spec} (give a folder of images, a glob pattern such as "
                             "'frames/*.jpg', an image, or a .txt list with one image path per line)")
    return (paths, *ids_from_names(paths))


def id_from_name(path):
    """(pid or None, camid or None) from a Market-1501 name or an integer identity folder."""
    name = os.path.basename(path)
    match = MARKET_NAME.match(name)
    if match:
        return int(match.group(1)), int(match.group(2))
    parent = os.path.basename(os.path.dirname(path))
    camera = CAMERA.search(os.path.splitext(name)[0])
    camid = int(camera.group(1)) if camera else None
    try:
        return int(parent), camid
    except ValueError:
        return None, camid


def ids_from_names(paths):
    """(pids or None, camids or None): a list where every name carries them, else None."""
    found = [id_from_name(p) for p in paths]
    pids, camids = [f[0] for f in found], [f[1] for f in found]
    return (pids if None not in pids else None), (camids if None not in camids else None)
