"""training/schedule.py: the release's warm-up / cosine / hold learning rate, per epoch."""
import math

import pytest
import torch

from training.schedule import averaging_start, build_scheduler, lr_factor


def run_schedule(lr, warmup, total, ratio, extra):
    """The lr each epoch trains with, stepping the LambdaLR once per epoch as train.py does."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, warmup, total, ratio)
    rates = []
    for _ in range(total + extra):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_release_recipe_key_epochs():
    lr = 0.12
    rates = run_schedule(lr, 5, 75, 0.8, 25)
    assert len(rates) == 100
    # warm-up: epoch n trains with lr * (0.01 + 0.99 n / 5)
    assert rates[0] == pytest.approx(lr * (0.01 + 0.99 / 5))  # epoch 1 = 0.02496
    assert rates[0] == pytest.approx(0.02496)
    assert rates[2] == pytest.approx(lr * (0.01 + 0.99 * 3 / 5))
    assert rates[4] == pytest.approx(lr)  # epoch 5 = W: the peak
    # cosine: epoch 40 is halfway from W=5 to T=75
    assert rates[39] == pytest.approx(lr / 2)
    assert rates[5] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi / 70)))
    # held from epoch floor(75 * 0.8) = 60 to the end (epoch 100)
    held = lr * 0.5 * (1 + math.cos(math.pi * 55 / 70))
    assert rates[58] > held
    assert rates[59] == pytest.approx(held)  # epoch 60
    assert all(r == pytest.approx(held) for r in rates[59:])
    assert rates[58] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 54 / 70)))


def test_monotone_phases():
    rates = run_schedule(1.0, 3, 20, 0.9, 2)
    assert rates[:3] == sorted(rates[:3])
    assert rates[2:18] == sorted(rates[2:18], reverse=True)
    assert min(rates) > 0


def test_without_hold_reaches_near_zero():
    # ema_ratio 1: cosine all the way to T, where the factor is 0
    assert lr_factor(10, 2, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(12, 2, 10, 1.0) == pytest.approx(0.0, abs=1e-12)  # extra epochs hold it


def test_averaging_start_is_robust_to_float_products():
    assert averaging_start(75, 0.8) == 60
    assert averaging_start(55, 0.8) == 44
    assert averaging_start(15, 0.8) == 12
    assert averaging_start(100, 0.29) == 29  # 100 * 0.29 = 28.999999999999996 in floating point


def test_no_warmup():
    assert lr_factor(1, 0, 10, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))


def test_state_dict_round_trip():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, 2, 10, 0.8)
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    sched2 = build_scheduler(opt2, 2, 10, 0.8)
    sched2.load_state_dict(state)
    for _ in range(3):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
