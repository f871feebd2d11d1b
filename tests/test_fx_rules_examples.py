"""Every audit rule's own bad/good example models, audited end to end (engine + memory + rules)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from training_profiler.fx_audit.review import audit_model  # noqa: E402
from training_profiler.fx_audit.rules import all_rules  # noqa: E402

RULES = all_rules()
BAD = [pytest.param(r, src, id=f"{r.code}-bad{i}") for r in RULES for i, src in enumerate(r.bad)]
GOOD = [pytest.param(r, src, id=f"{r.code}-good{i}") for r in RULES for i, src in enumerate(r.good)]


def run_example(rule, source: str):
    namespace = {"torch": torch, "nn": nn}
    exec(compile(source, "<example>", "exec"), namespace)
    # the training-step memory simulation is the slow part and only FXA106 reads it
    return audit_model(namespace["model"], namespace["inputs"], memory=rule.code == "FXA106")


@pytest.mark.parametrize("rule,source", BAD)
def test_bad_example_triggers_its_rule(rule, source):
    report = run_example(rule, source)
    assert rule.code in {f.code for f in report.findings}, [f.message for f in report.findings]


@pytest.mark.parametrize("rule,source", GOOD)
def test_good_example_is_clean_of_its_rule(rule, source):
    report = run_example(rule, source)
    assert rule.code not in {f.code for f in report.findings}, [f.message for f in report.findings]


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def test_recurrent_weights_should_be_orthogonal():
    torch.manual_seed(0)
    model = _Recurrent()  # PyTorch's default: uniform(-1/sqrt(32), 1/sqrt(32)), far from orthogonal
    (finding,) = [f for f in audit_model(model, [torch.randn(2, 5, 16)], memory=False).findings if f.code == "FXA105"]
    assert finding.location.module == "lstm"
    assert finding.message.startswith("'lstm.weight_hh_l0' weight std ")
    assert finding.message.endswith("for w in model.lstm.weight_hh_l0.chunk(4): nn.init.orthogonal_(w)")
    assert finding.data["norm_deviation"] > 0.2
    with torch.no_grad():
        for gate in model.lstm.weight_hh_l0.chunk(4):
            nn.init.orthogonal_(gate)
    report = audit_model(model, [torch.randn(2, 5, 16)], memory=False)
    assert "FXA105" not in {f.code for f in report.findings}


def test_init_message_gives_the_nn_init_call():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))  # default init: 0.41x He
    (finding,) = audit_model(model, [torch.randn(4, 64)], memory=False).findings
    assert finding.code == "FXA105" and finding.location.module == "0"
    assert finding.message.endswith(": nn.init.kaiming_normal_(model[0].weight, nonlinearity='relu')")
    assert 0.35 < finding.data["ratio"] < 0.47  # 1/sqrt(6) = 0.408 up to sampling noise


def test_audit_api_reports_architecture_findings():
    """`from training_profiler.fx_audit import audit` gives findings without the CLI or review helpers."""
    import torch
    from torch import nn

    from training_profiler.fx_audit import audit

    with torch.device("meta"):  # no real weights: FXA105 (initialisation) is skipped with a note
        model = nn.Sequential(nn.Conv2d(3, 8, 11, padding=5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64 * 64, 100))
    report = audit(model, (torch.empty(1, 3, 64, 64, device="meta"),), memory=False)
    assert [(f.code, f.location.module) for f in report.findings] == [("FXA101", "3"), ("FXA102", "0")]
    assert audit(model, (torch.empty(1, 3, 64, 64, device="meta"),), memory=False, rules=False).findings == []


def test_a_crashing_rule_does_not_abort_the_audit(monkeypatch):
    from training_profiler.fx_audit import audit
    from training_profiler.fx_audit.rules import base

    def crash(ctx):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(base.REGISTRY, "FXA102", base.AuditRule(base.REGISTRY["FXA102"].rule, crash))
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 11, padding=5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64 * 64, 100))
    report = audit(model, (torch.empty(1, 3, 64, 64, device="meta"),), memory=False)
    assert [(f.code, f.location.module) for f in report.findings] == [("FXA101", "3")]
    assert report.rule_errors == [{"code": "FXA102", "error": "ZeroDivisionError: division by zero"}]
