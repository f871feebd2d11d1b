"""diff, compare, budgets (audit --config) and the fx-audit pre-commit hook, end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
from conftest import sarif_schema

pytest.importorskip("torch")

from training_profiler.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

MODELS = textwrap.dedent("""\
    from torch import nn


    def small(width=16):
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


    def wide():
        return small(width=64)


    def flattened():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Flatten(), nn.Linear(16 * 32 * 32, 100))
    """)

# small: conv 3*16*9 = 432 + bn 32 + fc 16*10+10 = 170 -> 634 params; wide: 1728 + 128 + 650 = 2506
PYPROJECT = textwrap.dedent("""\
    [tool.training-profiler.audit]
    max-plain-depth = 20

    [tool.training-profiler.audit.models.small]
    factory = "models:small"
    inputs = ["2,3,32,32"]
    max-params = 1000
    fail-on = ["error"]

    [tool.training-profiler.audit.models.flattened]
    factory = "models:flattened"
    inputs = [[2, 3, 32, 32]]
    optimizer = "sgd"
    max-params = {limit}
    """)


@pytest.fixture()
def project(tmp_path, monkeypatch):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.format(limit=2_000_000))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("models", None)


def test_audit_config_passes_within_budgets(project, capsys):
    assert main(["audit", "--config", "pyproject.toml"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("small (models:small): 634 params")
    assert "  budget: ok" in out
    assert any(line.startswith("flattened (models:flattened): 1,638,964 params") for line in out)


def test_audit_config_fails_when_a_budget_is_exceeded(project, capsys):
    (project / "pyproject.toml").write_text(PYPROJECT.format(limit=1_000_000))
    assert main(["audit", "--config", "pyproject.toml"]) == 1
    out = capsys.readouterr().out
    assert "  budget: EXCEEDED max-params: 1,638,964 > 1,000,000" in out
    # flattened's Linear holds 99.97% of the params and is fed by a flatten of the 16x32x32 map
    assert "FXA101 Linear '4' holds 1,638,500 params (100% of the model), fed by a flatten of '2' (16 channels x 32x32)" in out


def test_audit_config_sarif_gathers_every_model(project, capsys):
    assert main(["audit", "--config", "pyproject.toml", "--format", "sarif"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.Draft4Validator(sarif_schema()).validate(doc)
    assert [(r["ruleId"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]) for r in doc["runs"][0]["results"]] == [
        ("FXA101", "models.py")]


def test_audit_config_errors_are_usage_errors(project, capsys):
    (project / "pyproject.toml").write_text('[tool.training-profiler.audit.models.x]\nfactory = "models:nope"\ninputs = ["1,3,8,8"]\n')
    assert main(["audit", "--config", "pyproject.toml"]) == 2
    assert "models has no callable 'nope'" in capsys.readouterr().err


def test_audit_json_then_diff_end_to_end(project, capsys):
    for name in ("small", "wide"):
        assert main(["audit", f"models:{name}", "--input", "2,3,32,32", "--format", "json"]) == 0
        (project / f"{name}.json").write_text(capsys.readouterr().out)
    assert main(["diff", "small.json", "wide.json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  Params                        634 ->          2,506  +1,872 (+295.3%)"
    assert main(["diff", "small.json", "wide.json", "--config", "pyproject.toml", "--model", "small"]) == 1
    assert "budget newly exceeded: max-params: 2,506 > 1,000" in capsys.readouterr().out
    report = json.loads((project / "small.json").read_text())
    assert report["model"] == "models:small" and report["totals"]["params"] == 634
    jsonschema.validate(report, json.loads((ROOT / "docs" / "audit-report.schema.json").read_text()))


def test_audit_sarif_and_markdown_views(project, capsys):
    # FXA101 is an error: at the default --fail-level error the audit exits 1
    assert main(["audit", "models:flattened", "--input", "2,3,32,32", "--format", "sarif", "--no-memory"]) == 1
    doc = json.loads(capsys.readouterr().out)
    schema = sarif_schema()
    jsonschema.Draft4Validator(schema).validate(doc)
    (result,) = doc["runs"][0]["results"]
    assert result["ruleId"] == "FXA101"
    assert result["locations"][0]["physicalLocation"] == {"artifactLocation": {"uri": "models.py"}, "region": {"startLine": 13}}
    assert main(["audit", "models:flattened", "--input", "2,3,32,32", "--format", "markdown", "--no-memory"]) == 1
    assert "| error | `FXA101` | `models.py:13 module '4'` |" in capsys.readouterr().out


def test_compare_side_by_side(project, capsys):
    assert main(["compare", "models:small", "models:wide", "--input", "8,3,32,32", "--memory", "64MiB",
                 "--format", "markdown", "--target", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Model | Params | MACs | FLOPs/step | Peak memory | Max batch | Findings |"
    small, wide = (line.split(" | ") for line in lines[2:4])
    assert small[0] == "| models:small" and small[1] == "634" and wide[1] == "2,506"
    assert int(small[5]) > int(wide[5]) > 8  # the wider model fits fewer samples in 64 MiB


@pytest.mark.skipif(shutil.which("git") is None, reason="pre-commit needs git")
def test_precommit_fx_audit_hook(tmp_path):
    """`pre-commit try-repo` clones this repository's hook definition and runs it in a fresh git
    repository that defines a model. The hook is `language: system`, so no environment is built:
    it runs the `training-profiler` of the current environment (a few seconds: torch import + audit)."""
    repo = tmp_path / "user-repo"
    repo.mkdir()
    (repo / "models.py").write_text(MODELS)
    (repo / "pyproject.toml").write_text(PYPROJECT.format(limit=2_000_000))
    env = dict(os.environ, PRE_COMMIT_HOME=str(tmp_path / "cache"), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "add", "."], cwd=repo, check=True, env=env)
    cmd = [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), "fx-audit", "--all-files", "--verbose"]
    ok = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "fx-audit (architecture rules and budgets of the models in pyproject.toml)" in ok.stdout
    assert "Passed" in ok.stdout and "budget: ok" in ok.stdout
    (repo / "pyproject.toml").write_text(PYPROJECT.format(limit=1_000_000))
    subprocess.run(["git", "add", "."], cwd=repo, check=True, env=env)
    failed = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Failed" in failed.stdout and "EXCEEDED max-params: 1,638,964 > 1,000,000" in failed.stdout
