"""Training curves from <stem>_log.jsonl: loss and each term, lr, img/s, the share of time spent
waiting for data, and the test metrics of the evaluated epochs (train.py's --eval-period, pretrain.py's
top-1/top-5 on val/ at every epoch).

train.py and pretrain.py redraw <stem>_curves.png after every epoch (rank 0). To compare runs in one picture:

    python -m training.curves params/a_log.jsonl params/b_log.jsonl --out figs/curves.png

matplotlib is optional (requirements-dev.txt): without it train.py skips the curves with one warning
and this command exits with status 2; both say `pip install matplotlib`.
"""
import argparse
import json
import os
import warnings

from utils.files import atomic_write

NO_MATPLOTLIB = "the training curves need matplotlib: pip install matplotlib"
_warned = []  # train.py: the missing matplotlib is said once per run


def read_log(path):
    """The records of a <stem>_log.jsonl, in epoch order (a resumed run's lines replace its earlier ones)."""
    by_epoch = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_epoch[record["epoch"]] = record
    return [by_epoch[k] for k in sorted(by_epoch)]


def run_name(path):
    name = os.path.splitext(os.path.basename(path))[0]
    return name[:-len("_log")] if name.endswith("_log") else name


def _metrics(record):
    """The test metrics of a record: train.py's "metrics" (--eval-period), or pretrain.py's top1/top5."""
    return record.get("metrics") or {k: record[k] for k in ("top1", "top5") if k in record}


def _score_names(records):
    names = []
    for record in records:
        for key in ("mAP", "top1", "R1"):
            if key in _metrics(record) and key not in names:
                names.append(key)
    return names


def draw(runs, out):
    """One picture of `runs` ({name: records}) to `out` (PNG, written atomically). ImportError without
    matplotlib."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    titles = ("loss (and its terms, thin)", "lr", "img/s", "data wait (share of the epoch)", "test metrics",
              "epoch time (s)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for index, (name, records) in enumerate(runs.items()):
        color = f"C{index}"
        epochs = [r["epoch"] for r in records]
        axes[0].plot(epochs, [r["loss"] for r in records], color=color, label=name)
        for term in records[0]["terms"] if records else ():
            axes[0].plot(epochs, [r["terms"].get(term, float("nan")) for r in records], color=color, lw=0.6, alpha=0.5)
        axes[1].plot(epochs, [r["lr"] for r in records], color=color, label=name)
        axes[2].plot(epochs, [r["img_per_s"] for r in records], color=color, label=name)
        axes[3].plot(epochs, [r.get("data_wait_share", float("nan")) for r in records], color=color, label=name)
        axes[5].plot(epochs, [r["seconds"] for r in records], color=color, label=name)
        evaluated = [r for r in records if _metrics(r)]
        for style, key in zip(("o-", "s--", "^:"), _score_names(evaluated)):
            axes[4].plot([r["epoch"] for r in evaluated], [_metrics(r).get(key, float("nan")) for r in evaluated],
                         style, color=color, label=f"{name} {key}" if len(runs) > 1 else key)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=80)


def draw_run_curves(log_file, out):
    """train.py's <stem>_curves.png from its log, after an epoch; without matplotlib one warning per run."""
    try:
        draw({run_name(log_file): read_log(log_file)}, out)
    except ImportError:
        if not _warned:
            _warned.append(True)
            warnings.warn(f"{NO_MATPLOTLIB} (the run goes on without {out})")


def main(argv=None):
    parser = argparse.ArgumentParser("python -m training.curves", description="Draw the curves of train.py "
                                     "logs (<stem>_log.jsonl) in one picture, one colour per run.")
    parser.add_argument("logs", nargs="+", metavar="LOG.jsonl", help="train.py's <stem>_log.jsonl files")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="the picture to write (PNG)")
    args = parser.parse_args(argv)
    runs = {}
    for path in args.logs:
        try:
            records = read_log(path)
        except OSError as err:
            parser.error(f"{path}: cannot be read ({err.strerror or err})")
        except (ValueError, KeyError) as err:
            parser.error(f"{path}: not a train.py log (one JSON object with \"epoch\" per line): {err}")
        if not records:
            parser.error(f"{path}: no epoch logged yet")
        runs[run_name(path) if run_name(path) not in runs else path] = records
    try:
        draw(runs, args.out)
    except ImportError:
        parser.error(NO_MATPLOTLIB)
    except OSError as err:
        parser.error(f"--out {args.out}: cannot write there ({err.strerror or err})")


if __name__ == "__main__":
    main()
