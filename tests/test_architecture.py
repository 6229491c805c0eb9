"""The package's shape: every module imports on its own, packages form a one-way stack, inference stays light."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import graft_edge

ROOT = Path(graft_edge.__file__).parent
# edges that would put a package below one it serves (the stack: data -> model -> train -> compress ->
# export / runtime -> profile / serve -> workflows -> cli); each pair is (importer, imported)
FORBIDDEN = [("runtime", "export"), ("checkpoint", "compress"), ("model", "compress"), ("compress", "train"),
             ("compress", "workflows"), ("compress", "export"), ("compress", "runtime"), ("train", "compress"),
             ("train", "runtime"), ("profile", "workflows"), ("artefact", "export"), ("artefact", "runtime"),
             ("evaluation", "runtime"), ("data", "model"), ("runtime", "serve"), ("export", "serve"),
             ("profile", "serve"), ("serve", "workflows")]


def _modules() -> list[str]:
    names = []
    for f in sorted(ROOT.rglob("*.py")):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_graph() -> dict[str, set[str]]:
    """{package: packages it imports}, counting every import in the source, function-level ones included."""
    graph: dict[str, set[str]] = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        module = ".".join(parts)
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graft_edge"):
                targets = [node.module] + [f"graft_edge.{a.name}" for a in node.names if node.module == "graft_edge"
                                           and ((ROOT / a.name).is_dir() or (ROOT / f"{a.name}.py").is_file())]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("graft_edge")]
            for t in targets:
                a, b = _package(module), _package(t)
                if a != b and b != "__init__":
                    graph.setdefault(a, set()).add(b)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_import_graph_is_acyclic_and_one_way():
    graph = package_graph()
    assert _cycle(graph) is None, f"import cycle between packages: {' -> '.join(_cycle(graph))}"
    upward = [(a, b) for a, b in FORBIDDEN if b in graph.get(a, set())]
    assert not upward, f"packages importing upward: {upward}"
    assert [a for a, deps in graph.items() if "cli" in deps] == ["__main__"]  # only `python -m graft_edge`


def test_export_reaches_runtimes_only_through_the_runtime_package():
    """The exporter opens, describes and commits every format through `graft_edge.runtime` (the registry of runtime
    families), never through one runtime's backend module."""
    bad = []
    for f in sorted((ROOT / "export").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else [
                a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{f.name}: {n}" for n in names if n.startswith("graft_edge.runtime.")]
    assert not bad, bad


_IMPORT_EACH_ALONE = """
import importlib, json, sys
import numpy, torch, timm, onnx, onnxruntime  # third-party packages stay loaded: only graft_edge's order is tested
failed = []
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "graft_edge" or m.startswith("graft_edge.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append([name, f"{type(exc).__name__}: {exc}"])
print(json.dumps(failed))
"""


def test_every_module_imports_alone():
    """Each module first in a clean graft_edge namespace (a hidden cycle fails when its other end comes first)."""
    import json

    names = [m for m in _modules() if m != "graft_edge.__main__"]
    p = subprocess.run([sys.executable, "-c", _IMPORT_EACH_ALONE, json.dumps(names)], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []


def test_running_a_pruned_checkpoint_does_not_import_the_pruning_library(tmp_path):
    from graft_edge.checkpoint import load_model, save_checkpoint
    from graft_edge.compress import prune_to_target
    from graft_edge.config import get_preset
    from graft_edge.model import build_model, embedding_params

    cfg = get_preset("synthetic")
    model = build_model(cfg.model).eval()
    model, arch, history = prune_to_target(model, int(0.5 * embedding_params(model)))
    path = save_checkpoint(tmp_path / "pruned.pt", model, cfg, arch=arch, history=history)
    assert load_model(path)[1].arch == arch
    code = (
        "import sys; import numpy as np\n"
        "from graft_edge.runtime import load_embedder\n"
        f"e = load_embedder({str(path)!r})\n"
        "h, w = e.info.img_size\n"
        "out = e.embed({m: np.zeros((2, 3, h, w), np.float32) for m in e.info.modalities})\n"
        "assert out.shape == (2, e.info.embed_dim), out.shape\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch_pruning', 'onnxruntime', 'tensorrt')))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", p.stdout


def test_modules_stay_small():
    big = {str(f.relative_to(ROOT)): n for f in ROOT.rglob("*.py") if (n := len(f.read_text().splitlines())) > 500}
    assert not big, big
