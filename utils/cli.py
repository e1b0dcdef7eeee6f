"""Command-line pieces shared by train.py, the test scripts, extract.py, search.py and export.py."""
import argparse

import torch

from utils.device import DeviceError, available_cores, check_cuda
from utils.files import UnwritableError, check_writable


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only for flags that take a value and have a meaningful default."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        if isinstance(action, BooleanFlag):
            return f"{action.option_strings[0]} [{action.metavar}], {action.option_strings[1]}"
        return super()._format_action_invocation(action)


class BooleanFlag(argparse.Action):
    """An on/off flag, as argparse.BooleanOptionalAction: `--name` and `--no-name`; `--name true|false`
    is accepted too (the release's spelling, e.g. `--norm false`)."""

    def __init__(self, option_strings, dest, default=None, help=None):
        if len(option_strings) != 1 or not option_strings[0].startswith("--"):
            raise ValueError(f"BooleanFlag takes one --name, got {option_strings}")
        name = option_strings[0]
        super().__init__([name, f"--no-{name[2:]}"], dest, nargs="?", const=None, default=default,
                         type=bool_type, metavar="{true,false}", help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value (or give {self.option_strings[0]} true|false)")
            values = False
        setattr(namespace, self.dest, True if values is None else values)


def default_workers(most=4):
    """Loader processes by default (--num-workers): `most`, but no more than the cores this process
    may use, since PyTorch warns when a DataLoader has more workers than that."""
    return max(1, min(most, available_cores()))


def bool_type(text):
    """argparse type of a true/false flag value (the release's `--norm false`)."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y", "t", "on"):
        return True
    if value in ("0", "false", "no", "n", "f", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def require_at_least(parser, args, minimum, *names):
    """parser.error naming the first flag among `names` (attributes of `args`) whose value is below `minimum`
    (None: a flag left unset, not checked)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            rule = "0 or more" if minimum == 0 else f"at least {minimum}"
            parser.error(f"--{name.replace('_', '-')} must be {rule}, got {value}")


def check_gpu(parser, flag, index=None):
    """parser.error unless CUDA is available and, when `index` is given, this machine has GPU `index`;
    `flag` (e.g. "--gpus 0,1") starts the message."""
    try:
        check_cuda(index)
    except DeviceError as err:
        hint = "" if torch.cuda.is_available() else "; use --device cpu (or auto)"
        parser.error(f"{flag}: {err}{hint}")


def check_output(parser, flag, path, folder=False):
    """parser.error (exit 2, before any work) unless the output `path` of `flag` can be written: a file,
    or with `folder` a folder to write files in (utils.files.check_writable)."""
    try:
        check_writable(path, folder=folder)
    except UnwritableError as err:
        parser.error(f"{flag} {path}: {err}")
