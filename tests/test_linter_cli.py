"""`training-profiler lint`: output formats, exit codes, noqa, config, --fix and robustness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import sarif_schema

from training_profiler.cli import main

BCE = textwrap.dedent(
    """\
    import torch
    import torch.nn.functional as F


    def loss_fn(logits, target):
        return F.binary_cross_entropy(torch.sigmoid(logits), target)


    scaler = torch.amp.GradScaler("cuda")  # the file trains with AMP: AMP301 is an error
    """
)
CLEAN = "import torch.nn.functional as F\n\nloss = F.binary_cross_entropy_with_logits(z, y)\n"


def lint(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["lint", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder as the working directory (no pyproject.toml above it is read)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    return tmp_path


def test_text_report_groups_by_file(project, capsys):
    (project / "model.py").write_text(BCE)
    code, out, _ = lint(capsys, "model.py")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "File: model.py"
    assert lines[1].startswith("  Line 6: [error] AMP301 binary_cross_entropy is unsafe in fp16")
    assert lines[2].startswith("    -> why: binary_cross_entropy takes probabilities")
    assert lines[3].startswith("    -> fix: Drop the sigmoid")
    assert lines[-1] == "1 finding (1 error)"


def test_json_report_fields(project, capsys):
    (project / "model.py").write_text(BCE)
    code, out, _ = lint(capsys, "model.py", "--format", "json")
    assert code == 1
    (item,) = json.loads(out)
    assert {k: item[k] for k in ("code", "severity", "path", "line", "col")} == {
        "code": "AMP301", "severity": "error", "path": "model.py", "line": 6, "col": 12,
    }
    assert item["message"].startswith("binary_cross_entropy is unsafe")
    assert item["fix"].startswith("Drop the sigmoid")
    assert item["data"] == {"autofix": True}


def test_sarif_report_validates_against_the_official_schema(project, capsys):
    import jsonschema

    schema = sarif_schema()
    (project / "model.py").write_text(BCE)
    (project / "broken.py").write_text("def f(:\n")
    code, out, _ = lint(capsys, ".", "--format", "sarif")
    assert code == 1
    doc = json.loads(out)
    jsonschema.validate(doc, schema)
    results = doc["runs"][0]["results"]
    assert [(r["ruleId"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]) for r in results] == [
        ("AMP000", "./broken.py"), ("AMP301", "./model.py"),
    ]
    region = results[1]["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 6, "startColumn": 12}
    rules = doc["runs"][0]["tool"]["driver"]["rules"]
    assert rules[results[1]["ruleIndex"]]["id"] == "AMP301"


def test_clean_file_exits_zero(project, capsys):
    (project / "model.py").write_text(CLEAN)
    code, out, _ = lint(capsys, "model.py")
    assert (code, out) == (0, "No findings.\n")


@pytest.mark.parametrize(
    "comment, reported",
    [("  # noqa: AMP301", False), ("  # noqa", False), ("  # noqa: AMP3", False), ("  # noqa: E501", True)],
)
def test_noqa(project, capsys, comment, reported):
    (project / "model.py").write_text(BCE.replace("target)\n", f"target){comment}\n", 1))
    code, out, _ = lint(capsys, "model.py", "--format", "json")
    assert [f["code"] for f in json.loads(out)] == (["AMP301"] if reported else [])
    assert code == (1 if reported else 0)


def test_usage_errors_exit_2(project, capsys):
    code, _, err = lint(capsys, ".", "--select", "XYZ9")
    assert code == 2 and "'XYZ9' matches no rule code" in err
    with pytest.raises(SystemExit) as exc:
        main(["lint", ".", "--format", "yaml"])
    assert exc.value.code == 2


def test_missing_path_message(project, capsys):
    code, _, err = lint(capsys, "missing.py")
    assert code == 2
    assert err.strip() == "training-profiler lint: error: no such file or folder: missing.py"


def test_pyproject_config_ignore_and_fail_level(project, capsys):
    (project / "model.py").write_text(BCE)
    (project / "pyproject.toml").write_text('[tool.training-profiler.lint]\nignore = ["AMP301"]\n')
    assert lint(capsys, "model.py")[0] == 0
    (project / "pyproject.toml").write_text('[tool.training-profiler.lint]\nexclude = ["model.py"]\n')
    assert lint(capsys, "model.py")[:2] == (0, "No findings.\n")
    (project / "pyproject.toml").write_text('[tool.training-profiler.lint]\nignroe = ["AMP301"]\n')
    code, _, err = lint(capsys, "model.py")
    assert code == 2 and "unknown key(s) ignroe" in err
    # command-line flags win over the file
    (project / "pyproject.toml").write_text('[tool.training-profiler.lint]\nignore = ["AMP301"]\n')
    assert lint(capsys, "model.py", "--ignore", "AMP9")[0] == 2
    assert lint(capsys, "model.py", "--ignore", "AMP0")[0] == 1


def test_fix_rewrites_safely_and_relints(project, capsys):
    target = project / "model.py"
    target.write_text(BCE)
    code, out, err = lint(capsys, "model.py", "--fix")
    assert code == 0, out
    assert "fixed 1 finding in model.py" in err
    assert target.read_text() == BCE.replace(
        "F.binary_cross_entropy(torch.sigmoid(logits), target)", "F.binary_cross_entropy_with_logits(logits, target)"
    )


def test_fix_keeps_findings_it_cannot_fix(project, capsys):
    source = "import torch.nn.functional as F\n\nloss = F.binary_cross_entropy(p.half(), y)\n"
    (project / "model.py").write_text(source)
    code, out, _ = lint(capsys, "model.py", "--fix", "--format", "json")
    assert code == 1 and [f["line"] for f in json.loads(out)] == [3]
    assert (project / "model.py").read_text() == source


def test_bad_files_never_stop_the_run(project, capsys):
    (project / "a_binary.py").write_bytes(b"\x00\x01\x02torch\xff")
    (project / "b_latin1.py").write_bytes(
        b"# -*- coding: latin-1 -*-\nimport torch.nn.functional as F\n# caf\xe9\nloss = F.binary_cross_entropy(p.half(), y)\n"
    )
    (project / "c_syntax.py").write_text("import torch\ndef f(:\n")
    (project / "d_deep.py").write_text("import torch\nx = " + " + ".join(["torch.sum(y)"] * 5000) + "\n")
    (project / "e_undecodable.py").write_bytes(b"import torch\nx = '\xff\xfe'\n")
    (project / "f_model.py").write_text(BCE)
    code, out, _ = lint(capsys, ".", "--format", "json")
    assert code == 1
    got = [(Path(f["path"]).name, f["code"], f["line"]) for f in json.loads(out)]
    assert got == [
        ("a_binary.py", "AMP000", 1),
        ("b_latin1.py", "AMP301", 4),
        ("c_syntax.py", "AMP000", 2),
        ("d_deep.py", "AMP000", 1),  # CPython's own parser gives up on a 5000-term chain
        ("e_undecodable.py", "AMP000", 1),
        ("f_model.py", "AMP301", 6),
    ]


def test_long_generated_expression_is_analysed():
    from training_profiler.linter.api import lint_source

    chain = " + ".join(["F.binary_cross_entropy(p, y)"] * 1500)
    findings = lint_source(f"import torch.nn.functional as F\nx = {chain}\n", amp=True)
    assert {f.code for f in findings} == {"AMP301"}


def test_huge_generated_file_is_skipped_quickly(project, capsys, monkeypatch):
    from training_profiler.linter import api

    monkeypatch.setattr(api, "MAX_FILE_BYTES", 1000)
    (project / "gen_pb2.py").write_text("import torch\n" + "x = 1\n" * 400)
    code, out, _ = lint(capsys, ".", "--format", "json")
    (item,) = json.loads(out)
    assert item["code"] == "AMP000" and "larger than the" in item["message"]


def test_output_is_identical_across_hash_seeds(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run(
            [sys.executable, "-m", "training_profiler", "lint", "--format", "json", str(repo / "examples"), str(repo / "tests")],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )
        assert proc.returncode in (0, 1), proc.stderr
        outputs.add(proc.stdout)
    assert len(outputs) == 1


def test_rules_command_lists_every_rule(capsys):
    from training_profiler.linter.rules import all_rules

    assert main(["rules"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out if line.startswith("AMP")] == [r.code for r in all_rules()]
    assert any(line.startswith("AMP301  error") for line in out)


FP32_BCE = "import torch.nn as nn\n\ncriterion = nn.BCELoss()\n"  # a classic fp32 DCGAN script


def test_fp32_script_gets_readiness_advice_not_an_error(project, capsys):
    (project / "dcgan.py").write_text(FP32_BCE)
    assert lint(capsys, "dcgan.py", "--format", "json")[:2] == (0, "[]\n")  # info is off by default
    code, out, _ = lint(capsys, "dcgan.py", "--format", "json", "--extend-select", "AMP306")
    (item,) = json.loads(out)
    assert code == 0  # info never fails the default fail level
    assert (item["code"], item["severity"], item["line"]) == ("AMP306", "info", 3)
    assert item["message"].startswith("AMP readiness: nn.BCELoss is fine in fp32 but raises under CUDA autocast")
    code, out, _ = lint(capsys, "dcgan.py", "--extend-select", "AMP306")
    assert out.splitlines()[1].startswith("  Line 3: [info] AMP306 AMP readiness:")


@pytest.mark.parametrize("flag, config, shown", [(["--amp", "fp16"], None, '"fp16"'), ([], "true", "true"), ([], '"bf16"', '"bf16"')])
def test_amp_package_option_makes_it_an_error(project, capsys, flag, config, shown):
    (project / "dcgan.py").write_text(FP32_BCE)
    if config:
        (project / "pyproject.toml").write_text(f"[tool.training-profiler.lint]\namp = {config}\n")
    code, out, _ = lint(capsys, "dcgan.py", "--format", "json", *flag)
    (item,) = json.loads(out)
    assert code == 1
    assert (item["code"], item["severity"]) == ("AMP301", "error")
    assert f"(the package is configured with amp = {shown})" in item["message"]
    code, out, _ = lint(capsys, "dcgan.py", "--format", "sarif", *flag)
    (result,) = json.loads(out)["runs"][0]["results"]
    assert (result["ruleId"], result["level"]) == ("AMP301", "error")


def test_amp_bf16_package_keeps_fp16_overflow_rules_as_advice(project, capsys):
    """-1e9 fits bfloat16: a bf16 package gets readiness advice for it, an fp16 package an error."""
    (project / "attn.py").write_text("def attend(scores, mask):\n    return scores.masked_fill(mask, -1e9)\n")
    assert lint(capsys, "attn.py", "--format", "json", "--amp", "bf16")[:2] == (0, "[]\n")
    code, out, _ = lint(capsys, "attn.py", "--format", "json", "--amp", "bf16", "--extend-select", "AMP404")
    assert [(f["code"], f["severity"]) for f in json.loads(out)] == [("AMP404", "info")]
    code, out, _ = lint(capsys, "attn.py", "--format", "json", "--amp", "fp16")
    assert code == 1 and [(f["code"], f["severity"]) for f in json.loads(out)] == [("AMP401", "error")]


def test_amp_config_must_name_a_precision(project, capsys):
    (project / "pyproject.toml").write_text('[tool.training-profiler.lint]\namp = "yes"\n')
    (project / "m.py").write_text(FP32_BCE)
    code, _, err = lint(capsys, "m.py")
    assert code == 2
    assert """amp = 'yes' is not a precision: use true, false, "fp16" or "bf16" in [tool.training-profiler.lint]""" in err
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error
        main(["lint", "m.py", "--amp", "fp8"])
    assert exc.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


def test_lint_source_rejects_a_bad_amp_value():
    from training_profiler.linter.api import lint_source

    with pytest.raises(ValueError, match='amp = 1.5 is not a precision: use true, false, "fp16" or "bf16"'):
        lint_source("x = 1\n", amp=1.5)
