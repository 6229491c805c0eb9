"""`graft-edge prune` through typer's CliRunner: happy paths, bad inputs (exit 2, nothing written), resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from graft_edge.checkpoint import read_checkpoint
from graft_edge.cli.main import app
from graft_edge.workflows.prune import partial_path

runner = CliRunner()


def _prune(*args: str):
    return runner.invoke(app, ["prune", *args])


def _inspect(path: Path) -> dict:
    res = runner.invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _one_error_line(res) -> str:
    text = res.stderr if res.stderr_bytes is not None else res.output
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    return lines[0]


def test_structured_to_sixty_percent(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "p60.pt"
    dense = _inspect(tiny_checkpoint)["params_embedding"]
    res = _prune(str(tiny_checkpoint), "--target", "60%", "--out", str(out), "--json", str(tmp_path / "s.json"))
    assert res.exit_code == 0, res.output
    facts = _inspect(out)
    target = round(0.6 * dense)
    assert 0.98 * target <= facts["params_embedding"] <= target
    (entry,) = facts["history"]
    assert entry["method"] == "structured" and entry["target"] == target and entry["step"] == entry["steps"] == 1
    assert facts["pruned"] is True and not partial_path(out).exists()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["params_embedding"] == facts["params_embedding"] and summary["arch"]["blocks"]


def test_unstructured_and_two_four(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "u.pt"
    res = _prune(str(tiny_checkpoint), "--target", "200K", "--out", str(out), "--method", "unstructured")
    assert res.exit_code == 0, res.output
    facts = _inspect(out)
    assert facts["params_nonzero"] == 200_000 and facts["history"][-1]["method"] == "unstructured"
    out24 = tmp_path / "s24.pt"
    res = _prune(str(tiny_checkpoint), "--out", str(out24), "--method", "2:4")
    assert res.exit_code == 0, res.output
    assert _inspect(out24)["history"][-1]["method"] == "2:4"


BAD = [
    (["--target", "10G"], "not smaller"),
    (["--target", "1K"], "smallest size structured"),
    (["--target", "sixty"], "cannot parse size"),
    (["--target", "150%"], "percentage"),
    (["--target", "60%", "--finetune-epochs", "1"], "needs --data"),
    (["--target", "60%", "--method", "magic"], "expected one of structured, unstructured, 2:4"),
    (["--target", "60%", "--steps", "0"], "--steps"),
    ([], "--target is required"),
    (["--method", "unstructured", "--target", "1K"], "smallest size unstructured"),
    (["--method", "2:4", "--target", "100K"], "unreachable by 2:4"),
    (["--target", "60%", "--data", "/nonexistent/data"], "not a directory"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[b[1].split()[0] for b in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tiny_checkpoint: Path, tmp_path: Path, extra, message) -> None:
    out = tmp_path / "bad.pt"
    res = _prune(str(tiny_checkpoint), "--out", str(out), *extra)
    assert res.exit_code == 2, res.output
    assert message in _one_error_line(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_missing_model_file(tmp_path: Path) -> None:
    res = _prune(str(tmp_path / "nope.pt"), "--target", "60%", "--out", str(tmp_path / "o.pt"))
    assert res.exit_code == 2 and "does not exist" in _one_error_line(res)


def test_method_mixing_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    u, s24 = tmp_path / "u.pt", tmp_path / "s24.pt"
    assert _prune(str(tiny_checkpoint), "--target", "90%", "--out", str(u), "--method", "unstructured").exit_code == 0
    res = _prune(str(u), "--target", "60%", "--out", str(tmp_path / "x.pt"))
    assert res.exit_code == 2 and "already pruned with unstructured" in _one_error_line(res)
    assert _prune(str(tiny_checkpoint), "--out", str(s24), "--method", "2:4").exit_code == 0
    res = _prune(str(s24), "--out", str(tmp_path / "y.pt"), "--method", "2:4")
    assert res.exit_code == 2 and "already 2:4" in _one_error_line(res)
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_resume_continues_from_last_finished_step(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    from graft_edge.compress import structured

    out = tmp_path / "r.pt"
    real_step = structured.StructuredPruner.step
    calls, fail_at = [], {"call": 2}

    def flaky_step(self, *a, **k):
        calls.append(1)
        if len(calls) == fail_at["call"]:
            raise KeyboardInterrupt  # the run dies during step 2
        return real_step(self, *a, **k)

    monkeypatch.setattr(structured.StructuredPruner, "step", flaky_step)
    args = [str(tiny_checkpoint), "--target", "50%", "--out", str(out), "--steps", "3"]
    res = _prune(*args)
    assert res.exit_code == 130 and not out.exists()
    part = read_checkpoint(partial_path(out))
    assert part.extra["prune_run"]["done"] == 1 and [e["step"] for e in part.history] == [1]

    res = _prune(*args[:2], "40%", *args[3:], "--resume")  # a different run: refused, partial kept
    assert res.exit_code == 2 and "different prune run" in _one_error_line(res)
    assert partial_path(out).exists()

    calls.clear()
    fail_at["call"] = None
    res = _prune(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert len(calls) == 2  # steps 2 and 3 only
    facts = _inspect(out)
    assert [e["step"] for e in facts["history"]] == [1, 2, 3]
    assert facts["history"][0] == part.history[0]
    target = facts["history"][-1]["target"]
    assert 0.98 * target <= facts["params_embedding"] <= target
    assert not partial_path(out).exists()
    torch.load(out, weights_only=True)
