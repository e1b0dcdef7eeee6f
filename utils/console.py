"""Warnings as one clean line each, above the progress bars (train.py and the test scripts).

Python prints a warning as `file:line: Category: message` followed by the source line, and in
the middle of a tqdm bar when the bar's line is not finished; the scripts show `warning: message`
on a line of its own instead, through tqdm.write in the main process.
"""
import sys
import warnings

from torch.utils.data import get_worker_info
from tqdm import tqdm


def warning_line(message, category, filename, lineno, file=None, line=None):
    """A `warnings.showwarning` replacement: `warning: <message>` on stderr, one line."""
    text = f"warning: {message}"
    if get_worker_info() is None:
        tqdm.write(text, file=sys.stderr)
    else:  # a loader worker does not know the main process's bar: start a line of its own
        start = "\r\033[K" if sys.stderr.isatty() else "\n"
        sys.stderr.write(f"{start}{text}\n")
        sys.stderr.flush()


def show_warnings_as_lines():
    warnings.showwarning = warning_line
