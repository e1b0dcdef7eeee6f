"""What train.py and pretrain.py share around a run: the device and process group it runs on, and the
command line's exit statuses (2: usage, data or checkpoint; 1: training stopped; 128 + signal:
interrupted), each failure a message without a traceback."""
import os
import sys

from datasets import DatasetError
from network import CheckpointError
from training.flags import training_device
from training.run_files import release_run_lock
from training.run_state import Interrupted, TrainingError, UsageError
from utils import distributed
from utils.malloc import tune_allocator


def run_on_device(args, body):
    """body(args, device, dist_info, DataParallel ids) on the device of --device / --gpus / torchrun; the
    run's lock file and process group are released however it ends."""
    device, dist_info, dp_ids, note = training_device(args.device, args.gpus, args.dist_timeout)
    if note and dist_info.rank == 0:
        print(note, file=sys.stderr if note.startswith("warning") else sys.stdout)
    tune_allocator(device)
    try:
        return body(args, device, dist_info, dp_ids)
    finally:
        release_run_lock()
        distributed.cleanup()


def run_cli(program, main, args):
    """main(args), turning the known failures into `program: error: ...` and an exit status."""
    try:
        return main(args)
    except (DatasetError, CheckpointError, UsageError, TrainingError) as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_status if isinstance(err, TrainingError) else 2)
    except Interrupted as err:  # every process stops; one message (torchrun's global rank 0)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{program}: {err}", file=sys.stderr)
        sys.exit(128 + int(err.signum))
