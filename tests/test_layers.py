"""The packages' import graph: layers run one way and no package-level import cycle.

utils/ (leaf helpers) imports nothing of the project; datasets/, losses/ and network/ sit on utils/;
network/fast/ (the CPU speed forms of the model) on network/; evaluation/ and training/ on those;
benchmarks/ and the scripts on top. Imports are read from the source (also those inside functions).
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PACKAGES = ("utils", "datasets", "losses", "network", "network.fast", "evaluation", "training", "benchmarks")
# what each package may import besides itself (imports inside functions included)
ALLOWED = {
    "utils": set(),
    "datasets": {"utils"},
    "losses": {"utils"},
    "network": {"utils"},
    "network.fast": {"network", "utils"},
    "evaluation": {"utils", "datasets", "network", "network.fast"},
    "training": {"utils", "datasets", "losses", "network", "network.fast", "evaluation"},
    "benchmarks": {"utils", "datasets", "losses", "network", "network.fast", "evaluation", "training"},
}
SCRIPTS = sorted(f for f in os.listdir(ROOT) if f.endswith(".py"))


def package_of(module):
    """The package of PACKAGES a dotted module name belongs to (the longest match), or None."""
    matches = [p for p in PACKAGES if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(path, own_module):
    """Dotted names of the modules a source file imports (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = own_module if path.endswith("__init__.py") else own_module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]  # `from network import fast`
    return names


def package_graph(root=ROOT):
    """{package: {imported package: [the first file that imports it]}} over the library's source files."""
    graph = {p: {} for p in PACKAGES}
    for top in {p.split(".")[0] for p in PACKAGES}:
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, root)
                module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
                source = package_of(module)
                for imported in imported_modules(path, module):
                    target = package_of(imported)
                    if target and target != source:
                        graph[source].setdefault(target, rel)
    return graph


def find_cycle(graph):
    """A list of packages [a, b, ..., a] forming an import cycle, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt, node]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_package_level_import_cycle():
    graph = package_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "package import cycle: " + " -> ".join(
        f"{a} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_cycle_finder_names_a_cycle():
    assert find_cycle({"a": {"b": "a/x.py"}, "b": {"c": "b/y.py"}, "c": {"a": "c/z.py"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "a/x.py"}, "b": {}}) is None


def test_layers_run_one_way():
    wrong = [f"{source} imports {target} ({path})" for source, targets in package_graph().items()
             for target, path in targets.items() if target not in ALLOWED[source]]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_script_is_imported_by_the_library():
    scripts = {name[:-3] for name in SCRIPTS}
    offenders = []
    for top in {p.split(".")[0] for p in PACKAGES}:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    hits = scripts.intersection(m.split(".")[0] for m in imported_modules(path, "x.y") if m)
                    offenders += [f"{os.path.relpath(path, ROOT)} imports {h}.py" for h in sorted(hits)]
    assert not offenders, offenders


@pytest.mark.slow
def test_every_scripts_help_runs_without_sched_getaffinity():
    """os.sched_getaffinity exists only on Linux: --help of every script must work without it (macOS, Windows)."""
    code = ("import os, runpy, sys\n"
            "del os.sched_getaffinity\n"
            f"for script in {SCRIPTS!r}:\n"
            "    sys.argv = [script, '--help']\n"
            "    try:\n"
            "        runpy.run_path(script, run_name='__main__')\n"
            "    except SystemExit as exit:\n"
            "        assert exit.code in (0, None), (script, exit.code)\n"
            "    else:\n"
            "        raise AssertionError(script + ' --help did not exit')\n"
            "print('all help ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("all help ok")
    assert "usage: train.py" in proc.stdout and "usage: test_market1501.py" in proc.stdout


def test_train_py_reads_top_to_bottom_in_at_most_450_lines():
    with open(os.path.join(ROOT, "train.py"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 450, f"train.py has {len(lines)} lines; move run-state plumbing to training/"
    order = [next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
             for name in ("get_args_parser", "train_one_epoch", "main", "final_evaluation", "cli")]
    assert order == sorted(order)
