"""training/run_state.py: the time spent waiting for data and its warning, the epoch's log line."""
import time
import warnings

import pytest
import torch

from training import run_state
from training.run_state import EpochTotals, slow_data_advice, waiting_for_data, warn_if_waiting_for_data


def slow_batches(delays):
    for delay in delays:
        time.sleep(delay)
        yield delay


def test_waiting_counts_only_the_time_the_batches_take_to_arrive():
    totals = EpochTotals()
    for _ in waiting_for_data(slow_batches([0.05, 0.0, 0.05]), totals):
        time.sleep(0.1)  # the step itself: not waiting
    assert 0.1 <= totals.data_wait < 0.18


def test_log_line_carries_the_wait_in_seconds_and_share():
    totals = EpochTotals(steps=2, images=16, seconds=4.0, data_wait=1.0, losses={"loss": 3.0})
    record = totals.log_record(0, 0.1, 1)
    assert record["data_wait"] == 1.0 and record["data_wait_share"] == 0.25 and "metrics" not in record
    assert totals.log_record(0, 0.1, 1, {"mAP": 0.5})["metrics"] == {"mAP": 0.5}
    # a checkpoint written before the wait was counted still restores
    old = {k: v for k, v in totals.state_dict().items() if k != "data_wait"}
    assert EpochTotals.from_state_dict(old).data_wait == 0 and EpochTotals.from_state_dict(old).losses == {"loss": 3.0}


def test_more_workers_are_suggested_only_when_a_core_is_free():
    assert slow_data_advice(0.15, 0, 16, 1) is None  # waiting little
    advice = slow_data_advice(0.5, 2, 16, 1)
    assert "waited for their batches 50% of the time" in advice and "try --num-workers 6" in advice
    assert slow_data_advice(0.5, 15, 16, 1) is None  # every core already busy
    assert slow_data_advice(0.5, 0, 2, 2) is None  # the CPU training's 2 threads take both cores
    assert "try --num-workers 2" in slow_data_advice(0.5, 0, 8, 6)


def test_the_slow_data_warning_is_given_once_per_run(monkeypatch):
    monkeypatch.setattr(run_state, "_TOLD", [])
    monkeypatch.setattr(run_state, "available_cores", lambda: 64)
    slow = EpochTotals(seconds=10.0, data_wait=5.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            warn_if_waiting_for_data(slow, 0, torch.device("cuda"))
    assert len(caught) == 1 and "--num-workers" in str(caught[0].message)


@pytest.mark.parametrize("cores", [1, 2])
def test_no_warning_when_the_cores_are_taken(monkeypatch, cores):
    monkeypatch.setattr(run_state, "_TOLD", [])
    monkeypatch.setattr(run_state, "available_cores", lambda: cores)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_waiting_for_data(EpochTotals(seconds=10.0, data_wait=9.0), cores - 1, torch.device("cuda"))
    assert not caught
