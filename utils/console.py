"""The scripts' console: warnings as one clean line each, above the progress bars, and the library's
log messages (logging.getLogger(__name__) in evaluation/, network/, training/, datasets/) as plain
lines on stdout. Library code logs or warns; only the scripts decide where it goes (show_warnings_as_lines).

Python prints a warning as `file:line: Category: message` followed by the source line, and in
the middle of a tqdm bar when the bar's line is not finished; the scripts show `warning: message`
on a line of its own instead, through tqdm.write in the main process.
"""
import logging
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


LIBRARY_LOGGERS = ("datasets", "evaluation", "losses", "network", "training")


class StdoutLines(logging.Handler):
    """Each record's message as a line on the current sys.stdout, above any progress bar."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging's own policy: a failed emit must not stop the program
            self.handleError(record)


def show_warnings_as_lines():
    """Warnings as `warning: message` lines on stderr and the library's INFO messages as lines on stdout."""
    warnings.showwarning = warning_line
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, StdoutLines) for h in logger.handlers):
            logger.addHandler(StdoutLines())
        logger.setLevel(logging.INFO)
        logger.propagate = False
