"""Report views, JSON schema, diff and config parsing on hand-built reports (no engine needed)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
from conftest import sarif_schema

from training_profiler.cli import main
from training_profiler.findings import Location
from training_profiler.inputs import InputSpec
from training_profiler.formats.audit import audit_to_markdown, audit_to_sarif, human_bytes, human_count
from training_profiler.fx_audit.records import AuditReport, CaptureInfo, LayerRecord, MemoryReport, TensorInfo
from training_profiler.fx_audit.review import Budget, check_budget, diff_reports, load_config
from training_profiler.fx_audit.rules import FXA101, FXA102

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "audit-report.schema.json").read_text())


def make_report(fc_params=2_000_000, peak=3 * 2**30, findings=()):
    layers = [
        LayerRecord(name="features.0", node="features_0", op="Conv2d", kind="module", inputs=["x"],
                    output_shape=[8, 16, 32, 32], output_dtype="float32", params=448, trainable_params=448,
                    macs=3_538_944, flops_forward=7_077_888, flops_backward=14_155_776, output_bytes=524_288,
                    extra={"kernel_size": [3, 3]}),
        LayerRecord(name="fc", node="fc", op="Linear", kind="module", inputs=["features_0"], output_shape=[8, 10],
                    output_dtype="float32", params=fc_params, trainable_params=fc_params, macs=8 * fc_params,
                    flops_forward=16 * fc_params, flops_backward=32 * fc_params, output_bytes=320),
    ]
    memory = MemoryReport(peak_bytes=peak, peak_phase="backward", peak_module="fc",
                          breakdown={"params": 8_000_000, "grads": 8_000_000}, optimizer="adam",
                          top_tensors=[TensorInfo("grad of fc.weight", [10, 200_000], "float32", 8_000_000, "grads", "fc")])
    totals = {"params": 448 + fc_params, "trainable_params": 448 + fc_params, "frozen_params": 0, "buffers": 0,
              "macs": 3_538_944 + 8 * fc_params, "flops_forward": 7_077_888 + 16 * fc_params,
              "flops_backward": 14_155_776 + 32 * fc_params, "peak_bytes": peak, "peak_phase": "backward"}
    return AuditReport(model="Net", inputs=[{"shape": [8, 3, 32, 32], "dtype": "float32"}],
                       capture=CaptureInfo(path="symbolic_trace"), layers=layers, totals=totals, memory=memory,
                       findings=list(findings), source={"file": "models/net.py", "line": 12})


BIG_FC = FXA101.finding(Location(path="models/net.py", line=15, module="fc", node="fc"),
                        {"params": 2_000_000, "share": 0.9998}, module="fc", params="2,000,000", share="100%",
                        fed_by="", remedy="add a bottleneck or shrink it")
STEM = FXA102.finding(Location(path="models/net.py", line=14, module="features.0", node="features_0"),
                      {"kernel_size": [11, 11]}, module="features.0", kernel="11x11", params="448")


def test_json_round_trip_validates_against_the_documented_schema():
    report = make_report(findings=[BIG_FC])
    data = json.loads(report.to_json())
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(data, SCHEMA)
    assert AuditReport.from_dict(data).to_dict() == data
    broken = dict(data, findings=[dict(data["findings"][0], severity="fatal")])
    with pytest.raises(jsonschema.ValidationError, match="'fatal' is not one of"):
        jsonschema.validate(broken, SCHEMA)


def test_markdown_view_has_totals_findings_and_top_layers():
    md = audit_to_markdown(make_report(findings=[BIG_FC, STEM]))
    lines = md.splitlines()
    assert lines[0] == "### training-profiler audit: `Net`"
    assert "| Params | 2,000,448 (trainable 2,000,448) |" in lines
    assert "| Peak memory (training step) | 3.00 GiB (backward at `fc`; cpu, adam) |" in lines
    assert "#### Findings (2, 1 error)" in lines
    assert ("| error | `FXA101` | `models/net.py:15 module 'fc'` | Linear 'fc' holds 2,000,000 params (100% of the model): "
            "add a bottleneck or shrink it | " + BIG_FC.fix + " |") in lines
    top = lines[lines.index("#### Top 2 layers by training FLOPs") + 4:]
    assert top[0] == "| `fc` | Linear | 8x10 | 2,000,000 | 32.00M | 64.00M |"
    assert top[1] == "| `features.0` | Conv2d | 8x16x32x32 | 448 | 7.08M | 14.16M |"


def test_sarif_view_locates_findings_at_the_model_source():
    doc = json.loads(audit_to_sarif(make_report(findings=[BIG_FC, STEM])))
    run = doc["runs"][0]
    assert doc["version"] == "2.1.0"
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == [f"FXA10{i}" for i in range(1, 10)]
    results = {r["ruleId"]: r for r in run["results"]}
    loc = results["FXA101"]["locations"][0]
    assert loc["physicalLocation"] == {"artifactLocation": {"uri": "models/net.py"}, "region": {"startLine": 15}}
    assert loc["logicalLocations"] == [{"fullyQualifiedName": "fc", "kind": "module"}]
    assert results["FXA101"]["level"] == "error" and results["FXA102"]["level"] == "warning"
    assert results["FXA101"]["ruleIndex"] == 0 and results["FXA102"]["ruleIndex"] == 1
    assert run["properties"]["model"] == "Net" and run["properties"]["totals"]["params"] == 2_000_448


def test_sarif_view_validates_against_the_official_schema():
    schema = sarif_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    doc = json.loads(audit_to_sarif(make_report(findings=[BIG_FC, STEM])))
    jsonschema.Draft4Validator(schema).validate(doc)
    doc["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(doc)


def test_human_numbers():
    assert human_count(4_089_184_256) == "4.09G" and human_count(950) == "950" and human_count(None) == "-"
    assert human_bytes(3 * 2**30) == "3.00 GiB" and human_bytes(512) == "512 B"


def test_diff_lists_changed_totals_and_new_and_fixed_findings():
    base, head = make_report(findings=[STEM]), make_report(fc_params=3_000_000, peak=4 * 2**30, findings=[BIG_FC])
    result = diff_reports(base, head)
    assert [(k, a, b) for k, _, a, b in result.metrics][0] == ("params", 2_000_448, 3_000_448)
    assert [f.code for f in result.new_findings] == ["FXA101"]
    assert [f.code for f in result.fixed_findings] == ["FXA102"]
    text = result.to_text().splitlines()
    assert text[0] == "audit diff: Net -> Net"
    assert text[1] == "  Params                  2,000,448 ->      3,000,448  +1,000,000 (+50.0%)"
    assert "  Peak memory              3.00 GiB ->       4.00 GiB  +1.00 GiB (+33.3%)" in text
    assert "new findings (1):" in text and "fixed findings (1):" in text
    md = result.to_markdown()
    assert "| Params | 2,000,448 | 3,000,448 | +1,000,000 (+50.0%) |" in md
    assert "- **error** `FXA101` `fc`: Linear 'fc' holds 2,000,000 params" in md


def test_budgets_only_newly_exceeded_ones_count():
    budget = Budget(max_params=2_500_000, max_peak_memory=int(3.5 * 2**30), fail_on=())
    base, head = make_report(), make_report(fc_params=3_000_000, peak=4 * 2**30)
    assert check_budget(head, budget) == ["max-params: 3,000,448 > 2,500,000", "max-peak-memory: 4.00 GiB > 3.50 GiB"]
    assert diff_reports(base, head, budget).new_violations == check_budget(head, budget)
    assert diff_reports(head, head, budget).new_violations == []  # already exceeded at base
    errors = Budget(fail_on=(FXA101.severity,))
    assert check_budget(make_report(findings=[BIG_FC]), errors) == ["fail-on error: 1 finding"]


def write_reports(tmp_path, base, head):
    (tmp_path / "base.json").write_text(base.to_json())
    (tmp_path / "head.json").write_text(head.to_json())
    return str(tmp_path / "base.json"), str(tmp_path / "head.json")


def test_diff_cli_exit_codes(tmp_path, capsys):
    base, head = write_reports(tmp_path, make_report(), make_report(fc_params=3_000_000))
    assert main(["diff", base, head]) == 0
    assert "+1,000,000 (+50.0%)" in capsys.readouterr().out
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(textwrap.dedent("""\
        [tool.training-profiler.audit.models.net]
        factory = "models:build"
        inputs = ["8,3,32,32"]
        max-params = 2_500_000
        """))
    assert main(["diff", base, head, "--config", str(cfg), "--format", "markdown"]) == 1
    assert "**Budget newly exceeded:** max-params: 3,000,448 > 2,500,000" in capsys.readouterr().out
    assert main(["diff", head, head, "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["diff", base, str(tmp_path / "missing.json")]) == 2
    assert "audit report '" in capsys.readouterr().err


def test_load_config_and_its_errors(tmp_path):
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(textwrap.dedent("""\
        [tool.training-profiler.audit]
        max-plain-depth = 30
        [tool.training-profiler.audit.models.vit]
        factory = "mypkg.models:vit"
        inputs = [[2, 3, 224, 224]]
        optimizer = "adamw"
        amp = "bf16"
        max-peak-memory = "8GiB"
        max-flops = 2e10
        fail-on = ["error", "warning"]
        """))
    config, (spec,) = load_config(cfg)
    assert config.max_plain_depth == 30
    assert spec.name == "vit" and spec.inputs == (InputSpec((2, 3, 224, 224)),) and spec.amp == "bf16"
    assert spec.budget == Budget(max_params=None, max_peak_memory=8 * 2**30, max_flops=2e10,
                                 fail_on=(FXA101.severity, FXA102.severity))
    cfg.write_text('[tool.training-profiler.audit.models.x]\nfactory = "a:b"\ninputs = ["1,2"]\nmax-param = 3\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) max-param in \[tool.training-profiler.audit.models.x\]"):
        load_config(cfg)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    cfg.write_text('[tool.training-profiler.audit.models.x]\nfactory = "a:b"\ninputs = [[1, -2]]\n')
    with pytest.raises(ValueError, match=r"models.x.inputs: cannot read input shape \[1, -2\]"):
        load_config(cfg)


def test_rules_review_and_views_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import training_profiler.fx_audit.rules, training_profiler.fx_audit.review, training_profiler.formats.audit\n"
            "from training_profiler.cli import main\n"
            "sys.exit(main(['rules']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    codes = [line.split()[0] for line in out.stdout.splitlines()]
    assert [c for c in codes if c.startswith("FXA")] == [f"FXA10{i}" for i in range(1, 10)]


def test_views_say_which_rule_failed_to_run():
    from training_profiler.fx_audit.table import summary_lines

    report = make_report(findings=[STEM])
    report.rule_errors = [{"code": "FXA101", "error": "KeyError: 'fc'"}]
    md = audit_to_markdown(report).splitlines()
    assert "**Rules that failed to run** (their findings are missing): FXA101: KeyError: 'fc'" in md
    run = json.loads(audit_to_sarif(report))["runs"][0]
    assert run["properties"]["rule_errors"] == [{"code": "FXA101", "error": "KeyError: 'fc'"}]
    assert summary_lines(report)[-1] == "Rule FXA101 failed to run (its findings are missing): KeyError: 'fc'"
    data = json.loads(report.to_json())
    jsonschema.validate(data, SCHEMA)
    assert AuditReport.from_dict(data).rule_errors == report.rule_errors


def test_peak_has_one_source_the_memory_report():
    report = make_report(peak=3 * 2**30)
    report.memory.peak_bytes = 2**30  # the totals follow: nothing to reconcile
    assert report.totals["peak_bytes"] == 2**30 and report.to_dict()["totals"]["peak_bytes"] == 2**30
    assert "| Peak memory (training step) | 1.00 GiB (backward at `fc`; cpu, adam) |" in audit_to_markdown(report)
    report.memory = None
    assert report.totals["peak_bytes"] is None
    assert "| Peak memory (training step) | not simulated |" in audit_to_markdown(report)
