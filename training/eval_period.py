"""--eval-period N: the test protocol's metrics of the weights being trained, every N epochs and after
the last, on rank 0 (the other processes wait at a barrier), and the best of them in <stem>_best.pth.

An evaluation leaves the training as it was: it runs the model in eval mode (BatchNorm buffers are
read, not updated) under no_grad, restores train mode, and restores every random state of the
process (torch, CUDA, numpy, Python: the test loader draws its seed from torch's generator), so a
run with --eval-period ends with the same weights as the run without it.

<stem>_best.pth is written in --save-path's format (network.make_checkpoint) with "epoch" (1-based)
and "metrics" of the evaluation that chose it: the best mAP, or Recall@1 on retrieval datasets
(car196, cub200); a tie keeps the earlier epoch.
"""
import logging
import os

from datasets import DatasetError
from evaluation.evaluator import EvaluationError, check_scorable, evaluate
from evaluation.features import prepare_for_inference
from network import CheckpointError, make_checkpoint, read_checkpoint
from training.resume import best_checkpoint_path, rng_state, set_rng_state
from utils import distributed
from utils.files import atomic_save

log = logging.getLogger(__name__)


def check_test_split(dataset, flag):
    """The dataset's test protocol, built before any training; DatasetError (naming `flag`) when it
    cannot be scored. Returns the name of the score that picks the best weights ("mAP" or "R1")."""
    try:
        protocol = dataset.test_protocol()
        if protocol.scoring == "rank":
            for split in protocol.splits:
                check_scorable(*([item[k] for item in items] for items in (split.query, split.gallery)
                                 for k in (1, 2)))
        elif len(protocol.splits[0].query) < 2:
            raise EvaluationError(f"the test set holds {len(protocol.splits[0].query)} image(s); Recall@K needs 2")
    except (DatasetError, EvaluationError, ValueError) as err:
        raise DatasetError(f"{flag} evaluates on the test split of {dataset.root}, which cannot be evaluated: "
                           f"{err}\nFix the test data, or drop {flag} (the run is then evaluated at the end only)") \
            from None
    return "R1" if protocol.scoring == "retrieval" else "mAP"


class PeriodicEvaluation:
    """Evaluate every `args.eval_period` epochs and after the last of `epochs_total` (nothing when the
    period is 0); keep the best weights in <stem>_best.pth. `resumed`: a best file already there is
    the run's own and its score is the one to beat."""

    def __init__(self, dataset, args, epochs_total, main_rank, resumed):
        self.dataset, self.args, self.epochs_total, self.main_rank = dataset, args, epochs_total, main_rank
        self.period = args.eval_period
        self.path = best_checkpoint_path(args.save_path)
        self.key = check_test_split(dataset, f"--eval-period {self.period}") if self.period else None
        self.best = self._earlier_best() if self.period and resumed and main_rank else None

    def due(self, epoch):
        """Whether the 0-based `epoch` is evaluated."""
        return self.period > 0 and ((epoch + 1) % self.period == 0 or epoch + 1 == self.epochs_total)

    def __call__(self, model, epoch):
        """The metrics of `model` (the weights being trained, unwrapped) after the 0-based `epoch` on rank 0
        when it is due, else None; every process must call it."""
        if not self.due(epoch):
            return None
        metrics = self.evaluate(model, epoch) if self.main_rank else None
        if metrics is not None and (self.best is None or metrics[self.key] > self.best):
            self.best = metrics[self.key]
            atomic_save({**make_checkpoint(model, self.args.img_height, self.args.img_width, dataset=self.args.dataset,
                                           transform=self.dataset.family, args=self.args, metrics=metrics),
                         "epoch": epoch + 1}, self.path)
        distributed.barrier()  # the other processes wait for rank 0's evaluation
        return metrics

    def evaluate(self, model, epoch):
        state = rng_state()
        try:
            metrics, line = evaluate(prepare_for_inference(model), self.dataset, image_size=(self.args.img_height, self.args.img_width),
                                     batch_size=self.args.batch_size, num_workers=self.args.num_workers)
        except EvaluationError as err:
            raise DatasetError(f"--eval-period {self.period}: {err}") from None
        finally:
            set_rng_state(state)
        log.info(f"epoch {epoch + 1}: {line}")
        return metrics

    def _earlier_best(self):
        if not os.path.isfile(self.path):
            return None
        try:
            return float(read_checkpoint(self.path)["metrics"][self.key])
        except (CheckpointError, KeyError, TypeError, ValueError):
            log.info(f"{self.path} cannot be read; the next evaluation replaces it")
            return None

