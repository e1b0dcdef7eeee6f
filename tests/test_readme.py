"""The README's and docs/'s commands, as written: the Quick start and CI agree, every training command
of the release is in docs/training.md verbatim and passes --dry-run on generated data, every
evaluation command runs, the README's tables agree with the commands, every link resolves."""
import argparse
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from tests.helpers import ROOT
from tests.readme_commands import COMMANDS

README = open(os.path.join(ROOT, "README.md")).read()
DOC_FILES = sorted(f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
DOCS = {name: open(os.path.join(ROOT, "docs", name)).read() for name in DOC_FILES}
ALL_TEXT = "\n".join([README, *DOCS.values()])
RELEASE_ROOT = "your/dataset_root"
# generated sizes: enough identities for each command's P = batch-size / instance-num
IDS = {"market1501": 16, "dukemtmc": 16, "msmt17": 16, "veri776": 16, "vehicleid": 64, "car196": 8,
       "cub200": 8, "university1652": 8, "npdetected": 4, "nplabeled": 4, "custom": 16}


def section(title, text=README):
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section '## {title}'"
    return match.group(1)


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def readme_lines(prefix, text=README):
    return [line.strip() for block in bash_blocks(text) for line in block.splitlines()
            if line.strip().startswith(prefix)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from datasets.synthetic import generate
    root = str(tmp_path_factory.mktemp("data"))
    for name, ids in IDS.items():
        generate(name, root, ids=ids, images_per_id=2, cameras=2, seed=0)
    return root


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    blocks = bash_blocks(section("Quick start"))
    assert len(blocks) == 2
    install_and_demo, tests = (b.strip() for b in blocks)
    assert "pip install -r requirements.txt" in install_and_demo and install_and_demo.endswith("train.py --demo")
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert tests in [line.strip() for line in ci.splitlines()], "the CI must run exactly the README's test command"


def test_every_release_command_is_in_docs_training_verbatim():
    training = DOCS["training.md"]
    lines = readme_lines("python train.py --net", training)
    expected = [cmd.format(root=RELEASE_ROOT) for _, cmd in COMMANDS]
    assert lines == expected
    assert training.count("Release's reported result") == len(COMMANDS)
    titles = re.findall(r"^## (.+? — LEViT-[SL].*)$", training, re.M)
    assert titles == [title for title, _ in COMMANDS]
    # the README's one training command is the first of them
    assert readme_lines("python train.py --net", section("Training")) == expected[:1]


REPORTED = re.findall(r"^Release's reported result: `(.*)`$", DOCS["training.md"], re.M)


def test_readme_results_table_is_the_release_reported_numbers():
    """One row per release command, in order, with its variant, input size and the first and last
    figure of the release's reported line (rank-1 and mAP, or Recall@1 and NMI)."""
    assert "release's reported numbers" in section("Results") and "not reproduced" in section("Results")
    rows = re.findall(r"^\| ([^|]+) \| (LEViT-[SL]) \| (\d+x\d+) \| (\d\.\d{6}) \| (\d\.\d{6}) \|$",
                      section("Results"), re.M)
    assert len(rows) == len(COMMANDS) == len(REPORTED) == 19
    for (_, variant, size, first, last), (_, command), reported in zip(rows, COMMANDS, REPORTED):
        words = shlex.split(command)
        flag = lambda name: words[words.index(name) + 1]  # noqa: E731
        assert variant == {"small": "LEViT-S", "large": "LEViT-L"}[flag("--net")]
        assert size == f"{flag('--img-height')}x{flag('--img-width')}"
        figures = re.findall(r":(\d\.\d{6})", reported)
        assert (first, last) == (figures[0], figures[-1]), reported


def test_readme_training_table_matches_the_release_commands():
    """The README's table of what changes per dataset says what the 19 commands of docs/training.md do."""
    rows = re.findall(r"^\| `(\w+)` \|(.*)\|$", section("Training"), re.M)
    columns = ["input", "--batch-size", "--lr", "--epochs", "--ema-extra", "--instance-num", "--erasing", "--freeze"]
    by_dataset = {}
    for _, command in COMMANDS:
        words = shlex.split(command)
        by_dataset.setdefault(words[words.index("--dataset") + 1], []).append(words)
    assert [name for name, _ in rows] == list(by_dataset)
    for name, cells in rows:
        cells = dict(zip(columns, (c.strip() for c in cells.split("|"))))
        for words in by_dataset[name]:
            flag = lambda f: words[words.index(f) + 1] if f in words else ""  # noqa: E731
            assert flag("--ema-ratio") == "0.80"
            assert f"{flag('--img-height')}x{flag('--img-width')}" in cells["input"], (name, cells)
            for column in columns[1:-1]:
                assert cells[column] == flag(column), (name, column)
            assert (flag("--freeze") in cells["--freeze"]) if flag("--freeze") else True, (name, cells)
        if not any("--freeze" in words for words in by_dataset[name]):
            assert cells["--freeze"] == "", name


TRAIN_COMMANDS = [c for c in readme_lines("python train.py", ALL_TEXT) + readme_lines("torchrun", ALL_TEXT)
                  if "--demo" not in c and "pretrain.py" not in c]


def train_argv(command):
    """The train.py arguments of a `python train.py ...` or `torchrun [launcher flags] train.py ...` line."""
    words = shlex.split(command)
    return words[words.index("train.py") + 1:]


def test_torchrun_commands_use_valid_launcher_flags():
    from torch.distributed.run import get_args_parser
    commands = readme_lines("torchrun", ALL_TEXT)
    assert len(commands) >= 4 and readme_lines("torchrun")  # the README shows one, docs/distributed.md the rest
    for command in commands:
        words = shlex.split(command)
        launcher = get_args_parser().parse_args(words[1:])  # exits on an unknown torchrun flag
        assert launcher.training_script in ("train.py", "pretrain.py")


@pytest.mark.parametrize("command", [c for c in TRAIN_COMMANDS if "--resume" not in c])
def test_training_command_passes_dry_run(command, data_root, tmp_path, monkeypatch, capsys):
    argv = train_argv(command)
    argv = [a.replace("data/demo", data_root) for a in argv]
    argv = [data_root if a == RELEASE_ROOT else a for a in argv]
    os.symlink(data_root, tmp_path / "data")  # commands without --dataset-root use ./data
    monkeypatch.chdir(tmp_path)
    if "--pretrained" in argv and argv[argv.index("--pretrained") + 1] not in ("auto", "none"):
        write_pretrained_backbone(argv[argv.index("--pretrained") + 1], argv[argv.index("--net") + 1])
    train.main(train.parse_args([*argv, "--dry-run"]))
    out = capsys.readouterr().out
    dataset = argv[argv.index("--dataset") + 1]
    assert re.search(r"^train: \d+ identities, \d+ images$", out, re.M)
    assert re.search(r"GFLOPs", out) and "nothing trained" in out
    assert f"train: {IDS[dataset]} identities" in out
    assert not os.path.exists(tmp_path / "params" / "ema.pth")
    from network import released_path
    if "--pretrained" not in argv and not os.path.isfile(released_path(argv[argv.index("--net") + 1])):
        # a real run would stop for the missing backbone; the dry run says so and goes on
        assert "dry run: a real run stops here (exit status 2): --pretrained auto" in out


def write_pretrained_backbone(path, net):
    """What pretrain.py writes to --save-path, for a LEViT of `net` with 4 classes (untrained)."""
    import pretrain
    from datasets.shapes import SHAPES
    args = pretrain.parse_args(["--net", net, "--device", "cpu"])
    data = argparse.Namespace(classes=list(SHAPES[:4]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(pretrain.backbone_checkpoint(pretrain.build_model(args, 4), data, args, None), path)


PRETRAIN_COMMANDS = [c for c in readme_lines("python pretrain.py", ALL_TEXT) + readme_lines("torchrun", ALL_TEXT)
                     if "pretrain.py" in c]


def test_pretraining_doc_commands_pass_dry_run(tmp_path, monkeypatch, capsys):
    """docs/pretraining.md: its shapes generator runs as written, and every pretrain.py command (the
    ImageNet one on a generated ImageFolder large enough for its batch) passes --dry-run."""
    import pretrain
    from datasets import shapes
    assert len(PRETRAIN_COMMANDS) >= 2 and any(c.startswith("torchrun") for c in PRETRAIN_COMMANDS)
    monkeypatch.chdir(tmp_path)
    for line in readme_lines("python -m datasets.shapes", DOCS["pretraining.md"]):
        assert shapes.main(shlex.split(line)[3:]) == 0
    imagenet = shapes.generate_imagefolder(str(tmp_path / "imagenet"), classes=4, train_per_class=256,
                                           val_per_class=1, size=16)
    for command in PRETRAIN_COMMANDS:
        words = shlex.split(command)
        argv = words[words.index("pretrain.py") + 1:]
        argv[argv.index("--data-root") + 1] = {"/data/imagenet": imagenet}.get(argv[argv.index("--data-root") + 1],
                                                                               argv[argv.index("--data-root") + 1])
        assert pretrain.main(pretrain.parse_args([*argv, "--dry-run"])) is None
        assert "nothing trained" in capsys.readouterr().out


EVAL_COMMANDS = readme_lines("python test_", ALL_TEXT)


def test_every_dataset_has_an_evaluation_command():
    scripts = {shlex.split(c)[1] for c in EVAL_COMMANDS}
    assert scripts == {f"test_{name}.py" for name in IDS}
    assert {shlex.split(c)[1] for c in readme_lines("python test_")} == scripts  # all of them in the README
    for script in scripts:
        assert os.path.isfile(os.path.join(ROOT, script))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from network import DBN
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for net in ("small", "large"):
        torch.manual_seed(0)
        paths[net] = str(folder / f"{net}.pth")
        torch.save(DBN(num_classes=5, net=net, pretrained=None).state_dict(), paths[net])
    return paths


@pytest.mark.parametrize("command", EVAL_COMMANDS, ids=[shlex.split(c)[1] for c in EVAL_COMMANDS])
def test_evaluation_command_runs(command, data_root, weights, capsys):
    from evaluation import cli as eval_cli
    argv = shlex.split(command)[2:]
    net = argv[argv.index("--net") + 1] if "--net" in argv else "small"
    script = shlex.split(command)[1]
    dataset = script[len("test_"):-len(".py")]
    root = os.path.join(data_root, "custom") if dataset == "custom" else data_root  # custom: the dataset folder
    for flag, value in (("--dataset-root", root), ("--weights", weights[net])):
        argv[argv.index(flag) + 1] = value
    # a small input and batch so that the run takes seconds; later flags win in argparse
    trials = ["--trials", "2"] if dataset == "vehicleid" else []  # a vehicleid flag, refused by the others
    eval_cli.main(dataset, [*argv, "--img-height", "64", "--img-width", "32", "--batch-size", "16",
                              "--num-workers", "0", "--device", "cpu", *trials])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"(top1:\d\.\d{6} top5:\d\.\d{6} top10:\d\.\d{6} mAP:\d\.\d{6})|"
                        r"(Recall@1:\d\.\d{6} Recall@2:\d\.\d{6} Recall@4:\d\.\d{6} Recall@8:\d\.\d{6} NMI:\d\.\d{6})",
                        last)


@pytest.mark.slow
def test_demo_runs_as_documented_and_learns(tmp_path):
    """Quick start command 1 after the install: `python train.py --demo`, in a fresh folder."""
    import subprocess
    import sys
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"top1:\d\.\d{6} top5:\d\.\d{6} top10:\d\.\d{6} mAP:\d\.\d{6}", lines[-1])
    found = re.search(r"untrained \(random init\) mAP:(\S+) top1:\S+ \| trained mAP:(\S+) top1:\S+", proc.stdout)
    untrained, trained = float(found.group(1)), float(found.group(2))
    assert trained > untrained + 0.3 and trained > 0.5  # measured: 0.13 -> 0.71
    assert (tmp_path / "data" / "demo" / "market1501" / "bounding_box_train").is_dir()
    torch.load(tmp_path / "params" / "demo.pth", weights_only=True)


def test_benchmark_commands_parse():
    """docs/performance.md's commands are accepted as written by their modules' parsers."""
    from benchmarks import __main__ as bench
    from benchmarks import eval as bench_eval
    commands = re.findall(r"`python -m (benchmarks(?:\.eval)?)([^`]*)`", " ".join(DOCS["performance.md"].split()))
    assert {module for module, _ in commands} == {"benchmarks", "benchmarks.eval"}
    assert any("--malloc default" in args for _, args in commands)
    for module, args in commands:
        parser = bench.get_args_parser() if module == "benchmarks" else bench_eval.get_args_parser()
        parser.parse_args(shlex.split(args))


def _run_line(line, extra):
    """Run one README command line in-process: python -m datasets.synthetic, train.py (as --dry-run),
    test_<dataset>.py, extract.py, search.py, export.py; `extra` flags are appended per program."""
    import export
    import extract
    import search
    from datasets import synthetic
    from evaluation import cli as eval_cli
    words = shlex.split(line)
    if words[:3] == ["python", "-m", "datasets.synthetic"]:
        assert synthetic.main(words[3:]) == 0
    elif words[1] == "train.py":
        assert train.main(train.parse_args([*words[2:], "--dry-run"])) is None
    elif words[1].startswith("test_"):
        eval_cli.main(words[1][len("test_"):-len(".py")], [*words[2:], *extra["test"]])
    else:
        program = {"extract.py": extract, "search.py": search, "export.py": export}[words[1]]
        assert program.main([*words[2:], *extra.get(words[1], [])]) == 0, line


@pytest.mark.slow
def test_own_data_feature_and_export_sections_run_end_to_end(tmp_path, monkeypatch, capsys):
    """The bash lines of the README's "Your own data" and "Features, search and export" (feature
    extraction and retrieval, export for deployment), in order, in a fresh folder; the checkpoint the training line would write is a
    random DBN in train.py's format at 64x32 (train.py runs as --dry-run), and the ONNX and OpenVINO
    lines and the example that loads their files run when the optional packages are installed. The
    FeatureExtractor example runs too."""
    import importlib.util

    from network import DBN, make_checkpoint
    monkeypatch.chdir(tmp_path)
    fast = ["--num-workers", "0", "--device", "cpu"]
    extra = {"test": fast, "extract.py": fast, "search.py": fast}
    have_export = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime", "openvino"))
    lines = [line for title in ("Your own data", "Features, search and export")
             for line in readme_lines("", section(title))]
    assert any("--pretrained none" in line for line in lines if line.startswith("python train.py"))
    assert any("--format onnx" in line for line in lines) and "pip install -r requirements-export.txt" in lines
    assert any("--format openvino" in line for line in lines)
    for line in lines:
        if line.startswith("pip ") or (re.search("--format (onnx|openvino)", line) and not have_export):
            continue
        if "--format openvino" in line:  # a subprocess: OpenVINO in the test process crashed a later torch.compile
            words = shlex.split(line)
            proc = subprocess.run([sys.executable, os.path.join(ROOT, words[1]), *words[2:]], capture_output=True,
                                  text=True)
            assert proc.returncode == 0 and "(openvino vs eager PyTorch, unfused" in proc.stdout, proc.stderr
            continue
        _run_line(line, extra)
        if line.startswith("python train.py"):
            torch.manual_seed(0)
            os.makedirs("params", exist_ok=True)
            torch.save(make_checkpoint(DBN(num_classes=8, pretrained=None), 64, 32, dataset="custom",
                                       transform="reid"), os.path.join("params", "custom.pth"))
    out = capsys.readouterr().out
    assert re.search(r"^top1:\d\.\d{6} top5:\d\.\d{6} top10:\d\.\d{6} mAP:\d\.\d{6}$", out, re.M)
    gallery = sum(len(files) for _, _, files in os.walk(os.path.join("data", "custom", "gallery")))
    assert gallery >= 64  # the generator's default identities, each with gallery images
    assert f"wrote {gallery} x 1920 features to outputs/gallery.npz" in out and os.listdir(tmp_path / "outputs" / "search")
    assert out.count("vs eager PyTorch, unfused, on a random batch of 3): ok") == 2 + have_export
    from PIL import Image
    Image.new("RGB", (64, 128), (90, 30, 200)).save("frame.jpg")
    code = re.findall(r"```python\n(.*?)```", section("Features, search and export"), re.S)
    assert len(code) == 2
    scope = {}
    exec(compile(code[0], "README.md", "exec"), scope)
    assert scope["feats"].shape == (2, 1920) and scope["feats"].dtype == np.float32
    if have_export:  # the ONNX Runtime and OpenVINO example, on the files the export lines wrote (a subprocess)
        check = "\nassert feats.shape == (4, 1920) and np.allclose(feats, feats_ov, atol=1e-5)\n"
        subprocess.run([sys.executable, "-c", code[1] + check], check=True)


def test_docs_say_where_the_released_backbones_come_from():
    text = " ".join(section("Pretrained backbones", DOCS["checkpoints.md"]).split())
    assert "published in the `network/` folder of the release, the public LEViT ReID repository" in text
    assert "no download address or checksum is known here" in text
    from network import RELEASED_FILES
    for name in RELEASED_FILES.values():
        assert f"`network/{name}`" in text
    # the README says so at the top of Training, before its command
    training = " ".join(section("Training").split())
    assert training.index("`--pretrained none`") < training.index("python train.py")
    assert "`network/` folder of the release" in training and "`--pretrained auto`" in training


def test_readme_evaluates_the_demo_at_its_training_size():
    h, w = train.DEMO["img_height"], train.DEMO["img_width"]
    command = (f"python test_market1501.py --weights {train.DEMO['save_path']} --dataset-root "
               f"{train.DEMO['dataset_root']} --img-height {h} --img-width {w}")
    assert command in EVAL_COMMANDS


def test_evaluation_from_python_runs_as_written(data_root, tmp_path, monkeypatch, capsys):
    """docs/evaluation.md's Python example, on generated VehicleID data and bare random weights."""
    from network import DBN
    monkeypatch.chdir(tmp_path)
    os.symlink(data_root, "data")
    os.makedirs("params")
    torch.manual_seed(0)
    torch.save(DBN(num_classes=5, pretrained=None).state_dict(), os.path.join("params", "ema.pth"))
    (code,) = re.findall(r"```python\n(.*?)```", section("From Python", DOCS["evaluation.md"]), re.S)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["size"] == (256, 256) and scope["info"]["variant"] == "small"  # VehicleID's own default size
    assert len(scope["metrics"]["trials"]) == 10
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == scope["line"] and re.fullmatch(r"top1:\d\.\d{6} top5:\d\.\d{6} top10:\d\.\d{6} mAP:\d\.\d{6}",
                                                     out[-1])
    assert "vehicleid test_list_800, 10 trials (seeds 0..9)" in "\n".join(out)


def _anchors(text):
    """GitHub's heading anchors of a Markdown text: lower case, punctuation but '-' and '_' dropped,
    spaces as '-', a repeated heading numbered -1, -2, ..."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # no headings inside code blocks
    seen, anchors = {}, set()
    for title in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("name", ["README.md", *(f"docs/{f}" for f in DOC_FILES)])
def test_every_relative_link_resolves(name):
    """Every relative link of README.md and docs/*.md names an existing file, and its #anchor a
    heading of that file (or of the page itself for a bare #anchor)."""
    path = os.path.join(ROOT, name)
    text = open(path).read()
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    assert links or name.startswith("docs/"), f"{name} links nowhere"
    for link in links:
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        target_path = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
        assert os.path.exists(target_path), f"{name}: {link} names no file"
        if anchor:
            assert anchor in _anchors(open(target_path).read()), f"{name}: {link} names no heading"


def test_readme_links_every_doc():
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", README))
    assert linked == set(DOC_FILES)


def test_readme_is_at_most_350_lines():
    assert len(README.splitlines()) <= 350


def test_cpu_install_pins_the_requirements_versions():
    """The README's CPU-only install asks PyTorch's CPU index for exactly the versions
    requirements.txt pins, so the next `pip install -r requirements.txt` keeps that build."""
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", open(os.path.join(ROOT, "requirements.txt")).read(), re.M))
    (line,) = [line for line in readme_lines("pip install torch", section("Install"))]
    words = shlex.split(line)
    assert {w.split("==")[0]: w.split("==")[1] for w in words if "==" in w} == pins
    assert words[words.index("--index-url") + 1].endswith("/whl/cpu")
    assert "pip install -r requirements.txt" in readme_lines("pip install -r", section("Install"))


def test_readme_example_outputs_go_to_an_ignored_folder():
    """extract.py's --out and search.py's --vis in the README are under a folder git ignores."""
    import subprocess
    outputs = []
    for line in readme_lines("python extract.py") + readme_lines("python search.py"):
        words = shlex.split(line)
        outputs += [words[i + 1] for i, w in enumerate(words) if w in ("--out", "--vis")]
    assert len(outputs) == 2
    for output in outputs:
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", output], cwd=ROOT).returncode == 0, output


@pytest.mark.parametrize("old", ["utils/metrics", "utils/rerank", "utils/vis", "utils/evaluation", "utils/features",
                                 "utils/eval_cli", "utils/image_list", "utils/checkpoint", "utils/run_files",
                                 "utils/train_flags", "utils/schedule", "utils/bench", "utils.bench", "utils.evaluation",
                                 "utils.features", "network/kernels.py", "network/csrc"])
def test_docs_name_no_moved_path(old):
    assert old not in ALL_TEXT


def test_deployment_doc_commands_run(dbn_checkpoint, tmp_path, monkeypatch, capsys):
    """docs/deployment.md's export.py lines pass --dry-run on a checkpoint standing for params/ema.pth (when
    the optional packages are installed), and its benchmark command parses."""
    import export
    from benchmarks import __main__ as bench
    text = DOCS["deployment.md"]
    lines = readme_lines("python export.py", text)
    assert {shlex.split(line)[shlex.split(line).index("--format") + 1] for line in lines} == {"onnx", "openvino"}
    monkeypatch.chdir(tmp_path)
    for line in lines:
        words = shlex.split(line)
        if export.missing_packages(words[words.index("--format") + 1]):
            continue
        argv = [dbn_checkpoint if word == "params/ema.pth" else word for word in words[2:]]
        assert export.main([*argv, "--dry-run"]) == 0, line
        assert "dry run: would write outputs/dbn." in capsys.readouterr().out
    commands = re.findall(r"`python -m benchmarks([^`]*)`", " ".join(text.split()))
    assert commands and all(bench.get_args_parser().parse_args(shlex.split(args)).what == "deploy"
                            for args in commands)
