"""The library surface: `import graft_edge as ge` gives the handful of functions a script starts from, resolved
lazily (an edge device importing the runtime does not load training or pruning), and the README's script runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import graft_edge

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves_to_a_documented_object():
    for name in graft_edge.__all__:
        if name == "__version__":
            continue
        obj = getattr(graft_edge, name)
        assert obj.__doc__ and obj.__module__.startswith("graft_edge"), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        graft_edge.nope  # noqa: B018


def test_importing_graft_edge_loads_nothing_heavy():
    code = ("import sys, graft_edge\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_pruning', 'onnxruntime', 'timm')"
            " or m.startswith('graft_edge.')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def _readme_script() -> str:
    text = README.read_text()
    section = text[text.index("## Use it from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_script_runs(tmp_path):
    script = _readme_script()
    assert len(script.strip().splitlines()) <= 12  # a short script, as the README promises
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    mAP = float(p.stdout.strip().splitlines()[-1])
    assert 0.0 <= mAP <= 1.0
    assert (tmp_path / "pruned.pt").is_file() and (tmp_path / "exp" / "model.int8-dynamic.onnx").is_file()
    assert (tmp_path / "exp" / "model.onnx").is_file()  # kept: it was asked for
