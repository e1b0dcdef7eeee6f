"""benchmarks/ and network/flops.py: parameter and FLOP counting, alternating timing, malloc settings,
the peers (release-style DBN-S, OSNet x1_0), the benchmark tables' shape."""
import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import benchmarks as bench
import benchmarks.loader as bench_loader
import utils.malloc
from network import DBN, VARIANTS, LEViT
from network.flops import count_flops, count_params
from network.levit import LocalEnhanceAttention


def hand_count_flops(model, height, width):
    """2 FLOPs per multiply-add: (convs + linears from their shapes, attention as two
    (tokens x window tokens x channels) products over the window-padded map)."""
    total = attn = 0

    def conv(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    def attention(m, inp, out):
        nonlocal attn
        B, C, H, W = inp[0].shape
        ws = m.window
        padded_tokens = (H + -H % ws) * (W + -W % ws)
        attn += 2 * 2 * B * padded_tokens * ws * ws * C

    hooks = []
    for m in model.modules():
        for kind, fn in ((nn.Conv2d, conv), (nn.Linear, linear), (LocalEnhanceAttention, attention)):
            if isinstance(m, kind):
                hooks.append(m.register_forward_hook(fn))
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, height, width, device="meta"))
    for h in hooks:
        h.remove()
    return total, attn


def test_count_flops_includes_attention_and_padding():
    with torch.device("meta"):
        small, dbn = LEViT(**VARIANTS["small"]), DBN(751, net="small", pretrained=None)
    for model, size in ((small, (256, 128)), (small, (250, 120)), (dbn, (256, 128))):
        dense, attn = hand_count_flops(model, *size)
        assert count_flops(model, *size) == dense + attn
        assert attn > 0.05 * dense  # the attention products are really in the count


def test_count_params():
    with torch.device("meta"):
        assert count_params(LEViT(**VARIANTS["large"])) == 9_650_300
        assert count_params(DBN(751, net="large", pretrained=None)) == 16_636_564


def test_time_alternating_alternates_and_takes_the_median(monkeypatch):
    clock = [0.0]
    order = []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def run(name, durations):
        it = iter(durations)

        def fn():
            order.append(name)
            clock[0] += next(it)
        return fn
    # first value of each: the warm-up call, not timed
    seconds = bench.time_alternating({"a": run("a", [9, 1, 5, 2]), "b": run("b", [9, 3, 3, 30])}, repeats=3)
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert seconds == {"a": 2, "b": 3}


def test_time_alternating_reports_page_faults_per_call(monkeypatch):
    counter = [0]
    monkeypatch.setattr(bench, "minor_faults", lambda: counter[0])

    def run(n):
        def fn():
            counter[0] += n
        return fn
    faults = {}
    bench.time_alternating({"a": run(5), "b": run(0)}, repeats=3, faults=faults)
    assert faults == {"a": 5, "b": 0}


FAULTS_SCRIPT = """
import sys
import torch
import benchmarks as bench
import utils.malloc
print(bench.configure_malloc(sys.argv[1]))
faults = []
for _ in range(20):
    before = bench.minor_faults()
    torch.ones(64 << 18)  # 64 MiB, allocated, filled and freed: above glibc's mmap threshold
    faults.append(bench.minor_faults() - before)
print(min(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or utils.malloc.resource is None,
                    reason="glibc and getrusage")
def test_tuned_malloc_stops_the_page_faults_of_big_blocks(repo_root):
    """A 64 MiB block faults in its 16,384 pages every time under glibc's defaults; tuned, the
    freed block is reused and faults in nothing. 20 rounds, the fewest faults of rounds 2-20: on a
    machine whose kernel reclaims idle pages (DAMON's pageout), the kept block's pages can be taken
    back in the first rounds (measured: faults in rounds 2-8, none from round 9 on), while under the
    defaults every round faults."""
    out = {}
    for mode in ("default", "tuned"):
        proc = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True,
                              cwd=repo_root, check=True)
        line, faults = proc.stdout.strip().splitlines()[-2:]
        out[mode] = (line, int(faults))
    assert out["default"][0] == "malloc: the C library's defaults"
    assert out["default"][1] > 10_000
    assert out["tuned"][0].startswith("malloc: glibc tuned")
    assert out["tuned"][1] < 1_000


def test_extract_worker_prints_one_json_line(repo_root):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--worker", "extract", "--malloc", "default",
                           "--size", "64x32", "--batch", "2", "--repeats", "1", "--threads", "1"],
                          capture_output=True, text=True, cwd=repo_root, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["malloc"] == "malloc: the C library's defaults"
    assert result["seconds"] > 0 and result["faults"] >= 0


# --- loader ------------------------------------------------------------------------------------

def test_loader_pipelines_are_the_training_transform_and_its_pillow_twin(tmp_path):
    """The tensor route is exactly build_transform(read_image(path)); the Pillow route runs the same
    steps on a Pillow image (so its resize is antialiased: close, not equal, when shrinking)."""
    from datasets.image_dataset import read_image
    from datasets.transforms import build_transform
    for name, family, view, (height, width), sizes in bench_loader.LOADER_SETTINGS:
        (path,) = bench_loader.write_loader_jpegs(str(tmp_path), sizes, 1, sites=view is not None)
        h, w = read_image(path).shape[1:]
        assert sizes[0][0] <= h <= sizes[0][1] and sizes[1][0] <= w <= sizes[1][1], (name, h, w)
        routes = bench_loader.loader_pipelines(family, view, height, width)
        assert list(routes) == ["decode_image + uint8 tensor", "Pillow"]
        outs = {}
        for route, fn in routes.items():
            torch.manual_seed(0)
            outs[route] = fn(path)
            assert outs[route].shape == (3, height, width) and outs[route].dtype == torch.float32, (name, route)
        torch.manual_seed(0)
        assert torch.equal(outs["decode_image + uint8 tensor"],
                           build_transform(family, height, width, train=True, view=view)(read_image(path)))
        if name == "University-1652 drone":  # 512 -> 448: only Pillow antialiases
            assert not torch.equal(outs["Pillow"], outs["decode_image + uint8 tensor"])


def test_loader_bench_prints_both_routes_and_their_ratio(repo_root):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--what", "loader", "--images", "2", "--repeats", "1"],
                          capture_output=True, text=True, cwd=repo_root, check=True)
    lines = proc.stdout.splitlines()
    assert any(line.startswith("loader: training transforms") and "1 thread" in line for line in lines)
    header = next(line for line in lines if line.startswith("setting"))
    assert "decode_image + uint8 tensor img/s" in header and "Pillow img/s" in header and "ratio" in header
    import re
    for name, _, _, (height, width), _ in bench_loader.LOADER_SETTINGS:
        (line,) = [line for line in lines if line.startswith(name + " ")]
        found = re.fullmatch(re.escape(name) + r"\s+(~?\d+x\d+)\s+(\d+)x(\d+)\s+(\d+)\s+(\d+)\s+(\d+\.\d\d)x", line)
        assert found, line
        assert (int(found[2]), int(found[3])) == (height, width)
        ours, pil, ratio = int(found[4]), int(found[5]), float(found[6])
        assert ours > 0 and pil > 0 and ratio == pytest.approx(ours / pil, rel=0.3, abs=0.02)
    assert "Anti-alias" not in proc.stderr  # the Pillow route's resize warning is silenced


def test_loader_bench_rejects_unknown_flags(repo_root):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--what", "loader", "--nope"],
                          capture_output=True, text=True, cwd=repo_root)
    assert proc.returncode == 2 and "unrecognized arguments: --nope" in proc.stderr


# --- peers -------------------------------------------------------------------------------------

def test_osnet_x1_0_has_the_published_size():
    """Zhou et al. 2019 (and torchreid's model zoo): OSNet x1_0 has 2.2 M parameters and 978.9 M
    multiply-adds at 256x128 (without the classifier, as ReID counts them)."""
    from benchmarks.peers import OSNet
    with torch.device("meta"):
        model = OSNet(751)
    params = count_params(model) - count_params(model.classifier)
    assert 2.15e6 < params < 2.25e6, params
    assert count_flops(model, 256, 128) / 2 == pytest.approx(978.9e6, rel=1e-3)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 256, 128, device="meta")).shape == (2, 512)


def test_release_style_dbn_gives_the_same_features():
    """The release-style stand-in (explicit attention, NCHW, BN not folded) computes our network."""
    from benchmarks.peers import ExplicitAttention, release_style
    from tests.helpers import with_formula_weights
    model = with_formula_weights(DBN(751, net="small", pretrained=None))
    peer = release_style(model)
    assert any(isinstance(m, ExplicitAttention) for m in peer.modules())
    assert not any(isinstance(m, ExplicitAttention) for m in model.modules())  # a copy: ours is unchanged
    x = torch.rand(2, 3, 256, 128)
    with torch.no_grad():
        for ours, theirs in zip(model(x), peer(x)):
            assert ((ours - theirs).abs().max() / ours.abs().max()).item() < 1e-4
    with pytest.raises(ValueError, match="release-style attention needs sides that are multiples of 8, got 12x8"):
        with torch.no_grad():
            peer(torch.rand(1, 3, 190, 128))
    with pytest.raises(ValueError, match="release_style needs a model whose BatchNorm is not folded"):
        release_style(model.fuse())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without CUDA")
def test_model_bench_on_cuda_without_cuda_says_so(repo_root):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--what", "model", "--device", "cuda"],
                          capture_output=True, text=True, cwd=repo_root)
    assert proc.returncode == 2 and "--device cuda: no CUDA device is available" in proc.stderr


def test_half_dtype_follows_the_cpu(monkeypatch):
    import benchmarks.model as bench_model
    import evaluation.features
    monkeypatch.setattr(evaluation.features, "cpu_has_native_bfloat16", lambda: True)
    assert bench_model.half_dtype("cpu") == "bfloat16"
    monkeypatch.setattr(evaluation.features, "cpu_has_native_bfloat16", lambda: False)
    assert bench_model.half_dtype("cpu") is None


def test_matmul_peak_is_the_faster_of_the_two_products(monkeypatch):
    import benchmarks.model as bench_model
    monkeypatch.setattr(bench_model, "time_alternating", lambda runs, repeats, warmup: {"mm": 1.0, "conv": 0.5})
    conv_flops = 2 * (32 * 512 * 32 * 32) * 512
    assert bench_model.matmul_peak(torch.float32, "cpu", 1) == pytest.approx(max(2 * 2048 ** 3, conv_flops / 0.5) / 1e9)
    monkeypatch.setattr(bench_model, "time_alternating", lambda runs, repeats, warmup: {"mm": 0.01, "conv": 100.0})
    assert bench_model.matmul_peak(torch.float32, "cpu", 1) == pytest.approx(2 * 2048 ** 3 / 0.01 / 1e9)


@pytest.mark.slow
def test_features_table_compares_one_crop_on_every_path(monkeypatch, capsys):
    """The features table, small: every crop count of each dtype, and the one-crop comparison of the
    path before the inference form (two calls) with the optimized and compiled paths, each with its ratio."""
    import benchmarks.model as bench_model
    monkeypatch.setattr(bench_model, "SIZE", (32, 16))
    monkeypatch.setattr(bench_model, "half_dtype", lambda device: "bfloat16")
    bench_model.features_table(torch.device("cpu"), 1, crops=(1, 2))
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    assert [r[:2] for r in rows if r and r[0] in ("float32", "bfloat16") and len(r) == 5] == [
        ["float32", "1"], ["float32", "2"], ["bfloat16", "1"], ["bfloat16", "2"]]
    crop = out.split("features of one crop")[1].splitlines()[1:]
    names = [line.rsplit(None, 2)[0] for line in crop if line.strip()]
    assert names == ["float32, BN folded only, two calls", "float32, optimized, one batch",
                     "float32, compiled, one batch", "bfloat16, optimized, one batch", "bfloat16, compiled, one batch"]
    assert crop[0].endswith(" 1.00x")


def test_inference_table_has_the_native_and_compiled_rows_and_the_peer_summary(monkeypatch, capsys):
    """The inference table, small and uncompiled (compile_model replaced by the identity: the rows,
    not inductor, are under test): with the kernels built it has the 'no native' rows beside the
    optimized ones, OSNet and DBN-S compiled, and a last line comparing float32 DBN-S with the peers."""
    import benchmarks.model as bench_model
    import evaluation.features
    from network.fast import kernels
    monkeypatch.setattr(bench_model, "SIZE", (128, 128))  # the release-style attention needs sides of 8
    monkeypatch.setattr(bench_model, "half_dtype", lambda device: "bfloat16")
    monkeypatch.setattr(bench_model, "compile_model", lambda model: model)
    monkeypatch.setattr(evaluation.features, "compile_model", lambda model: model)
    bench_model.inference_table(2, torch.device("cpu"), 1, peak=100.0)
    out = capsys.readouterr().out
    names = [line[:30].strip() for line in out.splitlines()[3:-1]]
    assert names[:9] == ["ResNet-50", "ResNet-50 channels_last", "OSNet x1_0 channels_last", "LEViT-S unoptimised",
                         "LEViT-S fused, channels_last", "DBN-S release-style", "DBN-S unoptimised",
                         "DBN-S fused, not optimized", "DBN-S fused, channels_last"]
    native = ["DBN-S fused, CL, no native"] if kernels.available() else []
    assert names[9:] == native + ["OSNet x1_0 CL compiled", "DBN-S compiled, float32", "DBN-S fused, bfloat16"] + (
        ["DBN-S bfloat16, no native"] if native else [])
    last = out.splitlines()[-1]
    assert last.startswith("float32 DBN-S against the peers: eager ") and last.endswith("x OSNet x1_0 compiled")


def test_native_kernels_line_says_what_runs(monkeypatch):
    import benchmarks.model as bench_model
    from network.fast import kernels
    monkeypatch.setattr(kernels, "enabled", lambda: False)
    assert bench_model.native_kernels_line() == ("native kernels: off (LEVIT_KERNELS=0): grouped convolutions in "
                                                 "oneDNN, attention in torch's operators")
    monkeypatch.setattr(kernels, "enabled", lambda: True)
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert bench_model.native_kernels_line().startswith("native kernels: not built (see the warning above): grouped")
    monkeypatch.setattr(kernels, "available", lambda: True)
    monkeypatch.setattr(kernels, "vector_lanes", lambda: 8)
    monkeypatch.setattr(kernels, "bfloat16_dot", lambda: False)
    assert bench_model.native_kernels_line().startswith("native kernels: built (8 float32 lanes): the grouped")


# --- training steps ----------------------------------------------------------------------------

def test_count_operators_counts_the_top_level_aten_operators():
    """aten::linear calls aten::t and aten::matmul (not counted: they are part of it); a region of
    record_function is not an operator (what runs in it is top-level); the backward's operators are."""
    from torch.nn import functional as F

    import benchmarks.model as bench_model
    x, w = torch.rand(4, 3), torch.rand(2, 3, requires_grad=True)

    def forward():
        with torch.profiler.record_function("a region"):
            y = F.linear(x, w)  # aten::linear
        return torch.relu(y).sum()  # aten::relu, aten::sum
    assert bench_model.count_operators(forward) == 3
    # backward: aten::ones_like (the seed gradient) and at least the relu's and the product's backward
    assert bench_model.count_operators(lambda: forward().backward()) >= 3 + 3


def test_settle_loss_scale_runs_until_a_step_is_taken():
    """A float16 gradient of 1000 x scale overflows (> 65504) from GradScaler's 65536 down to 128: ten
    steps are skipped (the scale halved each time) and the eleventh, at 64, is taken."""
    import benchmarks.model as bench_model
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    calls = []

    def step():
        calls.append(scaler.get_scale())
        loss = (w.half() * 1000).float().sum()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    bench_model.settle_loss_scale(step, scaler)
    assert calls == [2.0 ** k for k in range(16, 5, -1)]
    assert scaler.get_scale() == 64 and w.item() == pytest.approx(-1.0)  # one SGD step of lr x 1000
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    bench_model.settle_loss_scale(lambda: calls.append("no"), disabled)
    assert calls[-1] != "no"  # a float32 step is not run


def test_float16_training_steps_scale_the_loss_as_train_py(monkeypatch):
    """train.py's --amp: float16 autocast with a GradScaler at its default scale (the seeded DBN-S's
    float16 gradients overflow at it: the first step is skipped); bfloat16 and float32 run unscaled."""
    import benchmarks.model as bench_model
    monkeypatch.setattr(bench_model, "SIZE", (32, 16))
    cpu = torch.device("cpu")
    step, scaler = bench_model.training_runs(2, cpu, amp=torch.float16)["DBN-S channels_last"]
    assert scaler.is_enabled() and scaler.get_scale() == 65536
    step()
    assert scaler.get_scale() == 32768
    bench_model.settle_loss_scale(step, scaler)
    scale = scaler.get_scale()
    step()
    assert scaler.get_scale() == scale  # settled: the step was taken
    for amp in (torch.bfloat16, None):
        assert not any(s.is_enabled() for _, s in bench_model.training_runs(2, cpu, amp=amp).values())
    assert bench_model.training_precision(cpu) is None
    assert bench_model.training_precision(torch.device("cuda")) == torch.float16


def training_rows(out):
    """{name: (images/s, x ResNet-50, x ResNet-50 channels_last, operators)} of the training table in `out`."""
    lines = out.split("training step:")[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model ")) + 1
    rows = {}
    for line in lines[start:]:
        if line.startswith(("first step", "compiled / eager", "DBN-S / ResNet-50")):
            break
        cells = line[33:].split()
        rows[line[:33].strip()] = (float(cells[0]), float(cells[1][:-1]), float(cells[2][:-1]),
                                   int(cells[3].replace(",", "")))
    return rows


EAGER_TRAINING_ROWS = ["ResNet-50", "ResNet-50 channels_last", "LEViT-S unoptimised", "LEViT-S channels_last",
                       "DBN-S unoptimised", "DBN-S channels_last"]


def test_training_table_has_operators_and_compiled_rows_compiled_before_the_timed_runs(monkeypatch, capsys):
    """The training table, small, with CompiledStep replaced by an eager stand-in (the rows, not inductor,
    are under test): the compiled rows are DBN-S in the CPU training form and ResNet-50 channels_last,
    built as train.py --compile builds its step and called once before the timed runs; each row has its
    operator count, and the last lines give compiled / eager and DBN-S / ResNet-50 from the same times."""
    import benchmarks.model as bench_model
    from network.fast.training import Group4Conv2d
    built = []

    class EagerStep:
        def __init__(self, model, mode, batch, report=True):
            self.model, self.calls = model, 0
            built.append((self, type(model).__name__, mode, batch, report))

        def __call__(self, imgs):
            self.calls += 1
            return self.model(imgs)
    timing = bench_model.time_alternating

    def time_alternating(runs, repeats, **kwargs):
        calls_before.extend(step.calls for step, *_ in built)
        return timing(runs, repeats, **kwargs)
    calls_before = []
    monkeypatch.setattr(bench_model, "SIZE", (32, 16))
    monkeypatch.setattr(bench_model, "CompiledStep", EagerStep)
    monkeypatch.setattr(bench_model, "time_alternating", time_alternating)
    seconds = bench_model.training_table(2, torch.device("cpu"), 1, compiled=True)
    out = capsys.readouterr().out
    assert [b[1:] for b in built] == [("DBN", "default", 2, False), ("ResNet", "default", 2, False)]
    assert any(isinstance(m, Group4Conv2d) for m in built[0][0].model.modules())  # the CPU training form
    assert calls_before == [1, 1]  # the compile call, untimed
    assert "batch 2, 32x16, float32 (median of 1 alternating runs)" in out
    assert "operators: the top-level aten operators of one step" in out
    rows = training_rows(out)
    assert list(rows) == list(seconds) == EAGER_TRAINING_ROWS + ["DBN-S compiled", "ResNet-50 channels_last compiled"]
    for name, (img_s, x_base, x_cl, operators) in rows.items():
        assert img_s == pytest.approx(2 / seconds[name], abs=0.051)
        assert x_cl == pytest.approx(seconds["ResNet-50 channels_last"] / seconds[name], abs=0.0051)
        assert operators > 100, name
    # the stand-in runs the eager twin's model: the same operators
    assert rows["DBN-S compiled"][3] == rows["DBN-S channels_last"][3]
    assert rows["ResNet-50 channels_last compiled"][3] == rows["ResNet-50 channels_last"][3]
    lines = out.splitlines()
    assert lines[-3].startswith("first step, compile included (not timed): DBN-S compiled ")
    assert ", ResNet-50 channels_last compiled " in lines[-3] and lines[-3].endswith(" s")
    ratio = {name: seconds[eager] / seconds[name] for name, eager in bench_model.COMPILED_TRAINING.items()}
    assert lines[-2] == (f"compiled / eager, images/s: DBN-S channels_last {ratio['DBN-S compiled']:.2f}x, "
                         f"ResNet-50 channels_last {ratio['ResNet-50 channels_last compiled']:.2f}x")
    cl = seconds["ResNet-50 channels_last"]
    assert lines[-1] == (f"DBN-S / ResNet-50 channels_last, images/s: eager {cl / seconds['DBN-S channels_last']:.2f}x, "
                         f"compiled {seconds['ResNet-50 channels_last compiled'] / seconds['DBN-S compiled']:.2f}x "
                         "(against ResNet-50 channels_last compiled)")


@pytest.mark.slow
def test_compiled_training_rows_dispatch_fewer_operators(monkeypatch, capsys):
    """The training table with the compile (inductor, minutes on 2 cores; 32x16, batch 2): the graphs'
    fused kernels replace aten operators, so each compiled row dispatches fewer than its eager twin."""
    import benchmarks.model as bench_model
    monkeypatch.setattr(bench_model, "SIZE", (32, 16))
    bench_model.training_table(2, torch.device("cpu"), 1, compiled=True)
    rows = training_rows(capsys.readouterr().out)
    for name, eager in bench_model.COMPILED_TRAINING.items():
        assert 0 < rows[name][3] < rows[eager][3], (name, rows[name], rows[eager])


@pytest.mark.parametrize("flags, compiled", [(["--quick"], True), (["--quick", "--no-compiled-training"], False)])
def test_model_bench_runs_the_training_table_as_train_py_trains(monkeypatch, flags, compiled):
    """On the CPU: float32 (train.py's default there), compiled rows unless --no-compiled-training."""
    import benchmarks.__main__ as bench_main
    import benchmarks.model as bench_model
    calls = []
    for name in ("compile_from_cold", "print_flop_table", "inference_table", "latency_table", "features_table"):
        monkeypatch.setattr(bench_model, name, lambda *args: None)
    monkeypatch.setattr(bench_model, "configure_malloc", lambda mode: f"malloc: {mode}")
    monkeypatch.setattr(bench_model, "native_kernels_line", lambda: "native kernels: -")
    monkeypatch.setattr(bench_model, "matmul_peak", lambda dtype, device, repeats: 1.0)
    monkeypatch.setattr(bench_model, "training_table", lambda *args: calls.append(args))
    bench_main.main(["--what", "model", "--threads", str(torch.get_num_threads())] + flags)
    assert calls == [(32, torch.device("cpu"), 3, compiled, None)]


def test_training_alone_runs_only_the_training_table(monkeypatch, capsys):
    import benchmarks.__main__ as bench_main
    import benchmarks.model as bench_model
    calls = []
    monkeypatch.setattr(bench_model, "compile_from_cold", lambda: None)
    monkeypatch.setattr(bench_model, "configure_malloc", lambda mode: f"malloc: {mode}")
    monkeypatch.setattr(bench_model, "inference_table", lambda *args: pytest.fail("not the training table"))
    monkeypatch.setattr(bench_model, "training_table", lambda *args: calls.append(args))
    bench_main.main(["--what", "training", "--threads", str(torch.get_num_threads()), "--no-compiled-training"])
    assert calls == [(32, torch.device("cpu"), 5, False, None)]
    assert "malloc: tuned" in capsys.readouterr().out


def test_deploy_bench_without_its_packages_says_what_to_install(monkeypatch, capsys):
    import benchmarks.__main__ as bench_main
    import benchmarks.deploy as deploy
    monkeypatch.setattr(deploy, "missing_packages", lambda: ["openvino"])
    with pytest.raises(SystemExit) as info:
        bench_main.main(["--what", "deploy"])
    assert info.value.code == 2
    assert ("--what deploy needs the onnx, onnxscript, onnxruntime and openvino packages (missing: openvino); "
            "install them with: pip install -r requirements-export.txt") in capsys.readouterr().err


# OpenVINO is loaded in a subprocess only: loaded into the test process, it crashed a later torch.compile there
DEPLOY_SMALL = ("import sys, benchmarks.deploy as d; d.SIZE, d.BATCHES, d.IMAGES_PER_RUN = (64, 32), (1, 2), 2; "
                "from benchmarks.__main__ import main; main(sys.argv[1:])")


@pytest.mark.slow
def test_deploy_bench_times_both_forms_and_osnet_in_both_runtimes(repo_root):
    import benchmarks.deploy as deploy
    if deploy.missing_packages():
        pytest.skip(f"needs {', '.join(deploy.missing_packages())}")
    proc = subprocess.run([sys.executable, "-c", DEPLOY_SMALL, "--what", "deploy", "--threads", "1", "--quick"],
                          capture_output=True, text=True, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for runtime in ("onnxruntime", "openvino"):
        table = out.split(f"\n{runtime}, float32, 1 threads")[1].split("\n\n")[0].splitlines()
        assert table[1].split() == ["network", "batch", "1", "batch", "2"]
        rows = {line[:28].strip(): re.findall(r"(\d+\.\d+) \( *(\d+\.\d)/s\) +(\d+\.\d\d)x", line[28:])
                for line in table[2:]}
        assert set(rows) == {"DBN-S, onnxruntime form", "DBN-S, openvino form", "OSNet x1_0"}
        assert all(len(cells) == 2 for cells in rows.values())  # ms per call (images/s) ratio, per batch
        assert [ratio for _, _, ratio in rows["OSNet x1_0"]] == ["1.00", "1.00"]
    assert re.search(r"^ONNX Runtime / PyTorch: \d+\.\d\dx$", out, re.M)
