"""train.py and pretrain.py --compile (training/compile.py): the flag's checks, a compiled forward against the
eager one, and compiled runs resumed bit-identically. The compile of LEViT-S takes minutes on 2 cores the
first time (inductor's cache shortens the later ones): those tests are slow."""
import copy
import functools
import json
import os
import signal

import pytest
import torch

import pretrain
import train
from datasets.shapes import generate_imagefolder
from losses import ReIDLoss
from network import DBN, VARIANTS, LEViT
from network.fast import training_form
from tests.helpers import assert_same_state, load, tiny_run
from training.compile import CompiledStep
from training.flags import RESUME_CHANGES, RUN_FLAGS
from training.run_state import Interrupted, reduce_step

IMAGES_PER_ID = 8  # of the training_root fixture (tests/conftest.py)
# batches of 12 over 64 items: 5 full ones (compiled) and the release's partial one of 4 (eager) per epoch
tiny = functools.partial(tiny_run, batch_size=12, epochs="1,2", ema_ratio=0.5, ema_extra=0)


def parse_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        train.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_compile_alone_is_the_default_mode_and_off_is_the_default():
    assert train.parse_args([]).compile == "off"
    assert train.parse_args(["--compile"]).compile == "default"
    assert train.parse_args(["--compile", "max-autotune"]).compile == "max-autotune"


def test_unknown_compile_mode_is_refused(capsys):
    assert "argument --compile: invalid choice: 'fast'" in parse_error(capsys, ["--compile", "fast"])


def test_compile_under_dataparallel_is_refused_naming_the_torchrun_command(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    err = parse_error(capsys, ["--compile", "--gpus", "0,1"])
    assert "--compile with --gpus 0,1: DataParallel" in err
    assert "CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc-per-node 2 train.py <the same flags without --gpus>" in err


def test_compile_is_a_run_flag_a_resumed_run_may_change():
    assert "compile" in RUN_FLAGS and "compile" not in RESUME_CHANGES


def compiled_against_eager(count=3):
    """`count` SGD steps of DBN-S at 32x16, batch 8, random erasing and stochastic depth drawing from the global
    generator, in its CPU training form (the grouped convolutions in the native kernels, which the compiled
    graph calls too). Each step runs twice from the same weights, input and generator state, compiled and
    eager; the eager model then takes the SGD step and both start the next one from its weights. Returns
    per step {"compiled"|"eager": (loss, gradients by name, generator state after the step)}."""
    torch.manual_seed(0)
    model = training_form(DBN(num_classes=4, net="small", pretrained=None, erasing=0.3, drop_path=0.05)).train()
    twin = copy.deepcopy(model)
    forwards = {"compiled": (twin, CompiledStep(twin, "default", batch=8)), "eager": (model, model)}
    criterion = ReIDLoss(normalize=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    data = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat_interleave(2)
    results = []
    torch.manual_seed(5)
    for _ in range(count):
        x = torch.randn(8, 3, 32, 16, generator=data)
        twin.load_state_dict(model.state_dict())  # the BatchNorm statistics too
        state, step = torch.get_rng_state(), {}
        for name, (module, forward) in forwards.items():  # eager last: its generator state carries on
            torch.set_rng_state(state)
            logits, embeddings = forward(x)
            loss, _ = criterion(logits, embeddings, labels)
            module.zero_grad()
            loss.backward()
            grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
            step[name] = (loss.item(), grads, torch.get_rng_state())
        optimizer.step()
        results.append(step)
    return results


@pytest.mark.slow
def test_compiled_steps_match_eager_within_float32_rounding():
    # one thread: the order of the float32 sums then depends on the code alone (inductor's fused loops
    # against aten's), not on how a thread count splits them, so the tolerances below are the code's
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = compiled_against_eager()
    finally:
        torch.set_num_threads(threads)
    for i, step in enumerate(results):
        (loss, grads, state), (eager_loss, eager_grads, eager_state) = step["compiled"], step["eager"]
        # the same random draws (erasing outside the graph, stochastic depth through fallback_random)
        assert torch.equal(state, eager_state)
        # the loss agrees to float32 rounding: inductor fuses the operators and reorders the sums of the
        # reductions, a few ulp; other draws (the seed 6 for 5) move it by 6e-3 relative
        assert loss == pytest.approx(eager_loss, rel=1e-6)
        # gradients: within 1e-4 of the largest gradient entry at the first step. The scale is global because
        # the biases of the convolutions followed by BatchNorm have a gradient of 0 in exact arithmetic (1e-9 of
        # rounding noise), which no relative tolerance per tensor can compare; a dropped stochastic-depth row or
        # another erased box would move the gradients by far more. The second step's weights (one SGD step from
        # a random start) amplify rounding into the stem's gradients: 4.4e-4 of the scale, the same whether the
        # compiled graph runs the grouped convolutions in the kernels or in inductor's own convolutions; 1e-3
        # there
        assert grads.keys() == eager_grads.keys()
        scale = max(g.abs().max().item() for g in eager_grads.values())
        worst = max((grads[n] - g).abs().max().item() for n, g in eager_grads.items())
        assert worst <= (1e-4 if i == 0 else 1e-3) * scale, (i, worst, scale)


class StopAt(ReIDLoss):
    """A Ctrl-C at the `at`-th loss: the run stops after that step and writes a mid-epoch checkpoint."""
    calls = 0
    at = 9

    def forward(self, logits, embeddings, labels):
        StopAt.calls += 1
        if StopAt.calls == StopAt.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(logits, embeddings, labels)


@pytest.mark.slow
def test_compiled_run_resumes_bit_identically_and_saves_plain_keys(training_root, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference" / "ema.pth"
    train.main(train.parse_args(tiny(training_root, reference, "--no-eval", "--compile")))
    out = capsys.readouterr().out
    assert "--compile default: the first step, compile included, took" in out

    monkeypatch.setattr(train, "ReIDLoss", StopAt)
    StopAt.calls = 0  # the 9th loss: epoch 2 (of 6 batches, the last partial), batch 3
    save = tmp_path / "run" / "ema.pth"
    with pytest.raises(Interrupted, match="interrupted in epoch 2 after batch 3"):
        train.main(train.parse_args(tiny(training_root, save, "--no-eval", "--compile")))
    monkeypatch.undo()
    last = tmp_path / "run" / "ema_last.pth"
    assert load(last)["args"]["compile"] == "default"
    train.main(train.parse_args(["--resume", str(last), "--no-eval"]))  # --compile comes from the checkpoint

    assert_same_state(load(reference), load(save))
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "run" / "ema_log.jsonl")] == [1, 2]
    # the checkpoints hold the module's own keys, as an eager run's: no torch.compile prefix
    for state in (load(save)["state_dict"], load(last)["model"]):
        assert not [k for k in state if "_orig_mod" in k]
    DBN(num_classes=8, net="small", pretrained=None).load_state_dict(load(save)["state_dict"])  # strict


# --- pretrain.py --compile ------------------------------------------------------------------------------------

def test_pretrain_compile_under_dataparallel_is_refused_naming_the_torchrun_command(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as info:
        pretrain.parse_args(["--compile", "reduce-overhead", "--gpus", "0,1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--compile with --gpus 0,1: DataParallel" in err
    assert "torchrun --nproc-per-node 2 pretrain.py <the same flags without --gpus>" in err
    assert pretrain.parse_args(["--compile"]).compile == "default" and pretrain.parse_args([]).compile == "off"


def stop_at(count):
    """pretrain.py's reduce_step, which sends a SIGINT at its `count`-th call: the run stops after that step."""
    calls = []

    def reduce(*args, **kwargs):
        calls.append(1)
        if len(calls) == count:
            os.kill(os.getpid(), signal.SIGINT)
        return reduce_step(*args, **kwargs)
    return reduce


@pytest.mark.slow
def test_compiled_pretraining_resumes_bit_identically_and_saves_plain_keys(tmp_path, monkeypatch, capsys):
    # 4 classes x 16 images at 32x32, batches of 16: 4 compiled steps an epoch; Mixup, CutMix, RandAugment,
    # erasing, stochastic depth and the EMA on
    root = generate_imagefolder(str(tmp_path / "shapes"), classes=4, train_per_class=16, val_per_class=4, size=32)

    def argv(save):
        return ["--data-root", root, "--img-size", "32", "--batch-size", "16", "--epochs", "2", "--warmup-epochs",
                "1", "--lr", "0.1", "--model-ema-decay", "0.9", "--device", "cpu", "--num-workers", "0", "--seed",
                "1", "--compile", "--save-path", str(save)]
    reference = tmp_path / "reference" / "backbone.pth"
    pretrain.main(pretrain.parse_args(argv(reference)))
    assert "--compile default: the first step, compile included, took" in capsys.readouterr().out

    monkeypatch.setattr(pretrain, "reduce_step", stop_at(6))
    save = tmp_path / "run" / "backbone.pth"
    with pytest.raises(Interrupted, match="interrupted in epoch 2 after batch 2"):
        pretrain.main(pretrain.parse_args(argv(save)))
    monkeypatch.undo()
    last = tmp_path / "run" / "backbone_last.pth"
    assert load(last)["args"]["compile"] == "default"
    pretrain.main(pretrain.parse_args(["--resume", str(last)]))  # --compile comes from the checkpoint

    for part in ("state_dict", "head"):
        assert_same_state(load(reference)[part], load(save)[part])
    assert load(reference)["metrics"] == load(save)["metrics"]
    for state in (load(save)["state_dict"], load(last)["model"]):
        assert not [k for k in state if "_orig_mod" in k]
    saved = load(save)
    LEViT(num_classes=4, **VARIANTS["small"]).load_state_dict(  # strict
        {**saved["state_dict"], **{f"head.{k}": v for k, v in saved["head"].items()}})
