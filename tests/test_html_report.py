"""The HTML reports (formats/html.py, runtime/report.py): structure, chart data, no external
references, size. Pages are parsed with the standard library's HTMLParser; each chart's numbers
are read from its ``data-series`` and its tooltips from the SVG ``<title>`` of each mark."""

from __future__ import annotations

import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from training_profiler.findings import Location  # noqa: E402
from training_profiler.formats.html import (  # noqa: E402
    audit_to_html, compare_to_html, diff_to_html, monitor_to_html, plan_to_html,
)
from training_profiler.fx_audit.records import AuditReport, CaptureInfo, LayerRecord, MemoryReport, TensorInfo  # noqa: E402
from training_profiler.fx_audit.rules import FXA101  # noqa: E402
from training_profiler.runtime.report import read_history  # noqa: E402

MiB = 2**20
HERE = Path(__file__).resolve()
MARKER = "class Block:  # the hand-made finding points at this line"
SOURCE_LINE = HERE.read_text().splitlines().index(MARKER) + 1


class Page(HTMLParser):
    """Charts (id -> data-series), tooltips (svg group id -> title), tables (id -> rows of cell
    text), every src/href value, and the tag names used."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.charts: dict[str, dict] = {}
        self.titles: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str | None]] = {}
        self.links: list[str] = []
        self.tags: set[str] = set()
        self._group: list[str | None] = []
        self._title: str | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.links += [v for k, v in attrs if k in ("src", "href", "xlink:href") and v]
        if tag == "figure" and "data-series" in a:
            self.charts[a["id"]] = json.loads(a["data-series"])
        elif tag == "g":
            self._group.append(a.get("id"))
        elif tag == "title" and self._group:
            self._title = ""
        elif tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
            self.row_classes[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
            self.row_classes[self._table].append(a.get("class"))
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag == "g" and self._group:
            self._group.pop()
        elif tag == "title" and self._title is not None:
            self.titles[self._group[-1]] = self._title
            self._title = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._title is not None:
            self._title += data
        if self._cell is not None:
            self._cell.append(data)


def assert_self_contained(text: str) -> None:
    page = Page(text)
    assert not [link for link in page.links if not link.startswith(("#", "data:"))], "a src/href loads something"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not {"script", "link", "iframe", "object", "embed"} & page.tags
    assert "@import" not in text and not re.search(r"url\(\s*['\"]?(https?:)?//", text)
    assert '<meta name="viewport"' in text  # narrow windows get the responsive layout


# ---------------------------------------------------------------------------------------------
# hand-made records


def layer(name, params=0, flops=0, saved=0, op="Linear"):
    return LayerRecord(name=name, node=name.replace(".", "_"), op=op, kind="module", params=params,
                       trainable_params=params, flops_forward=flops, flops_backward=2 * flops, saved_bytes=saved)


def hand_report(model="Net", fc_params=2_000_000, grads=8 * MiB, findings=()):
    """Two identical blocks (merged into ``blocks.{0,1}.fc ×2`` by the views) and a head."""
    layers = [layer("blocks.0.fc", 1000, 10_000, 4096), layer("blocks.1.fc", 1000, 10_000, 4096),
              layer("head", fc_params, 5_000, 0), layer("relu", 0, 100, 16384, op="ReLU")]
    breakdown = {"params": 8 * MiB, "grads": grads, "optimizer_state": 16 * MiB, "activations": 3 * MiB,
                 "temporaries": 1 * MiB}
    peak = sum(breakdown.values())
    timeline = [{"phase": "forward", "module": "blocks.0.fc", "live_bytes": 24 * MiB},
                {"phase": "forward", "module": "head", "live_bytes": 27 * MiB},
                {"phase": "backward", "module": "head", "live_bytes": 28 * MiB},
                {"phase": "backward", "module": "head", "live_bytes": 30 * MiB},
                {"phase": "backward", "module": "blocks.0.fc", "live_bytes": 33 * MiB},
                {"phase": "optimizer", "module": None, "live_bytes": 32 * MiB}]
    memory = MemoryReport(peak_bytes=peak, peak_phase="backward", peak_module="head", breakdown=breakdown,
                          optimizer="adam", timeline=timeline,
                          top_tensors=[TensorInfo("grad of head.weight", [1000, 2000], "float32", 8 * MiB, "grads", "head")])
    totals = {"params": 2000 + fc_params, "trainable_params": 2000 + fc_params, "macs": 12_550,
              "flops_forward": 25_100, "flops_backward": 50_200, "peak_bytes": peak, "peak_phase": "backward"}
    return AuditReport(model=model, inputs=[{"shape": [8, 16], "dtype": "float32"}],
                       capture=CaptureInfo(path="leaf_tracer", attempts=[{"path": "symbolic_trace", "error": "data-dependent if"}],
                                           notes=["assumed x.size(0) == 8"]),
                       layers=layers, totals=totals, memory=memory, findings=list(findings),
                       source={"file": str(HERE), "line": SOURCE_LINE})


def hand_finding():
    return FXA101.finding(Location(path=str(HERE), line=SOURCE_LINE, module="head", node="head"),
                          {"params": 2_000_000, "share": 0.999}, module="head", params="2,000,000", share="100%",
                          fed_by="", remedy="add a bottleneck or shrink it")


class Block:  # the hand-made finding points at this line
    pass


# ---------------------------------------------------------------------------------------------
# audit


def test_audit_charts_hold_the_hand_computed_values():
    report = hand_report(findings=[hand_finding()])
    text = audit_to_html(report)
    assert_self_contained(text)
    page = Page(text)
    bar = page.charts["chart-breakdown"]
    assert bar["categories"] == ["params", "grads", "optimizer_state", "activations", "temporaries"]
    assert bar["series"] == {"params": [8 * MiB], "grads": [8 * MiB], "optimizer_state": [16 * MiB],
                             "activations": [3 * MiB], "temporaries": [1 * MiB]}
    assert bar["totals"] == [36 * MiB] == [report.totals["peak_bytes"]]
    assert page.titles["breakdown-seg-optimizer_state-0"] == "Net: optimizer state 16.00 MiB"
    timeline = page.charts["chart-timeline"]["Net"]
    assert timeline["live_bytes"][3] == 30 * MiB and timeline["peak_index"] == 3  # highest event at (backward, head)
    assert page.titles["timeline-peak-0"] == "Net: peak 36.00 MiB (backward at head)"
    params = page.charts["chart-top-params"]
    assert params["labels"] == ["head", "blocks.{0,1}.fc ×2"] and params["series"] == {"params": [2_000_000, 2000]}
    flops = page.charts["chart-top-flops"]  # forward + backward, the two blocks summed
    assert flops["labels"] == ["blocks.{0,1}.fc ×2", "head", "relu"] and flops["series"]["flops"] == [60_000, 15_000, 300]
    saved = page.charts["chart-top-saved-bytes"]
    assert saved["labels"] == ["relu", "blocks.{0,1}.fc ×2"] and saved["series"]["saved_bytes"] == [16384, 8192]
    assert page.tables["peak-tensors"][1] == ["grad of head.weight", "1000×2000", "float32", "grads", "8.00 MiB"]
    severity, code, message, where = page.tables["findings"][1]
    assert (severity, code) == (FXA101.severity.value, "FXA101") and message.startswith(FXA101.message.split("{")[0].strip())
    assert where.startswith(f"{HERE}:{SOURCE_LINE} head")
    assert f"<pre>{html.escape(MARKER)}</pre>" in text  # the source line itself is shown
    assert "assumed x.size(0) == 8" in text and "capture path symbolic_trace failed: data-dependent if" in text


def test_audit_of_a_small_model_matches_the_engine_totals(one_thread):
    """A 4-8-2 MLP (ReLU), batch 2, SGD, fp32: params 58 (4*8+8 + 8*2+2) = 232 bytes, gradients
    the same at the backward peak, no optimizer state; the bar adds up to the engine's peak."""
    import torch
    from torch import nn

    from training_profiler.fx_audit import audit

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    report = audit(model, torch.empty(2, 4, device="meta"), optimizer="sgd")
    page = Page(audit_to_html(report))
    bar = page.charts["chart-breakdown"]
    assert bar["series"]["params"] == [232] and bar["series"]["grads"] == [232]
    assert "optimizer_state" not in bar["categories"]  # SGD without momentum keeps none
    assert bar["totals"] == [report.totals["peak_bytes"]] == [sum(report.memory.breakdown.values())]
    assert page.charts["chart-top-params"]["series"]["params"] == [40, 18]  # 4*8+8, 8*2+2
    assert page.charts["chart-top-flops"]["labels"] == ["0", "2"]
    timeline = page.charts["chart-timeline"][report.model]
    assert timeline["live_bytes"][timeline["peak_index"]] == max(timeline["live_bytes"])


def test_audit_without_memory_says_so():
    report = hand_report()
    report.memory = None  # the typed totals read the peak from report.memory
    assert report.totals.get("peak_bytes") is None
    text = audit_to_html(report)
    assert "Not simulated" in text and "chart-breakdown" not in text and "chart-top-params" in text


def test_llama_7b_audit_report_stays_under_2_mb():
    import torch

    from training_profiler.fx_audit import audit
    from training_profiler.fx_audit.capture import build_model
    from training_profiler.fx_audit.zoo import llama_7b_like

    report = audit(build_model(llama_7b_like), torch.zeros(1, 512, dtype=torch.long, device="meta"))
    text = audit_to_html(report)
    assert len(text.encode()) < 2 * 10**6
    assert_self_contained(text)
    page = Page(text)
    labels = page.charts["chart-top-params"]["labels"]
    assert len(labels) <= 12 and any(label.endswith("×32") for label in labels)  # 32 blocks merged
    assert page.charts["chart-breakdown"]["totals"] == [report.totals["peak_bytes"]]


# ---------------------------------------------------------------------------------------------
# compare, diff, plan


def test_compare_puts_models_side_by_side_and_marks_the_change():
    small, big = hand_report("small"), hand_report("big", fc_params=4_000_000, grads=16 * MiB)
    text = compare_to_html([small, big])
    assert_self_contained(text)
    page = Page(text)
    bar = page.charts["chart-breakdown"]
    assert bar["labels"] == ["small", "big"] and bar["totals"] == [36 * MiB, 44 * MiB]
    assert bar["series"]["grads"] == [8 * MiB, 16 * MiB]
    assert set(page.charts["chart-timeline"]) == {"small", "big"}
    rows = page.tables["compare"]
    assert rows[1][:2] == ["small", "2,002,000"]
    assert rows[2][1] == "4,002,000 +2,000,000 (+99.9%)" and rows[2][4] == "44.00 MiB +8.00 MiB (+22.2%)"
    assert '<span class="up">+8.00 MiB (+22.2%)</span>' in text
    assert "chart-top-flops-0" in page.charts and "chart-top-params-1" in page.charts
    with pytest.raises(ValueError, match="at least one"):
        compare_to_html([])


def test_diff_shows_before_and_after_and_highlights_changes():
    from training_profiler.fx_audit.review import diff_reports

    base = hand_report("Net", findings=[hand_finding()])
    head = hand_report("Net", fc_params=500_000, grads=2 * MiB)
    text = diff_to_html(diff_reports(base, head))
    assert_self_contained(text)
    page = Page(text)
    bar = page.charts["chart-breakdown"]
    assert bar["labels"] == ["base", "head"] and bar["totals"] == [36 * MiB, 30 * MiB]
    assert ["grads", "8.00 MiB", "2.00 MiB", "-6.00 MiB (-75.0%)"] in page.tables["breakdown-change"]
    assert ["Params", "2,002,000", "502,000", "-1,500,000 (-74.9%)"] in page.tables["metrics"]
    changed = page.charts["chart-changed-params"]
    assert changed["labels"] == ["head"] and changed["series"] == {"base": [2_000_000], "head": [500_000]}
    assert "chart-changed-flops" not in page.charts  # FLOPs did not change
    assert page.row_classes["findings"][1:] == ["fixed"] and page.tables["findings"][1][1] == "FXA101"
    assert set(page.charts["chart-timeline"]) == {"base", "head"}


def test_plan_bars_per_rank_against_the_budget():
    ddp = [{"params": 4 * 2**30, "grads": 4 * 2**30, "optimizer_state": 8 * 2**30, "communication": 2**30}] * 2
    zero = [{"params": 4 * 2**30, "grads": 2 * 2**30, "optimizer_state": 4 * 2**30, "communication": 2**30},
            {"params": 4 * 2**30, "grads": 2 * 2**30, "optimizer_state": 4 * 2**30, "communication": 2**29}]
    text = plan_to_html("plan", {"ddp": ddp, "zero2": zero}, budget=16 * 2**30, max_micro_batch={"ddp": None, "zero2": 6})
    assert_self_contained(text)
    page = Page(text)
    chart = page.charts["chart-plan-1"]
    assert chart["labels"] == ["rank 0", "rank 1"] and chart["budget"] == 16 * 2**30
    assert chart["totals"] == [11 * 2**30, 10.5 * 2**30]
    assert chart["categories"][-1] == "communication"
    assert page.titles["plan-0-budget"] == "budget 16.00 GiB"
    assert page.tables["plan"][1:] == [["ddp", "17.00 GiB", "-"], ["zero2", "11.00 GiB", "6"]]


# ---------------------------------------------------------------------------------------------
# monitor report


def write_history(path: Path, steps: int = 160, spike: int = 140, meta: bool = True, alerts: bool = False) -> Path:
    """A loss that alternates 1.0/1.1 and a gradient norm 0.5/0.55, both 100x at ``spike``; the
    second of three layers blows up first; at the last step the gradient norm is Inf (the second
    layer's too) and the first layer's gradient is exactly 0."""
    lines = []
    if meta:
        lines.append({"meta": {"layers": ["embed", "block", "head"], "warmup_steps": 100, "alert_window": 50}})
    for step in range(1, steps + 1):
        wiggle = 1.0 + 0.1 * (step % 2)
        factor = 100.0 if step == spike else 1.0
        grad = 0.5 * wiggle * factor if step < steps else math.inf
        layers = [0.1, 0.4 * factor, 0.2] if step < steps else [0.0, math.inf, 0.2]
        row = {"step": step, "loss": wiggle * factor, "grad_norm": grad, "layer_grad_norms": layers}
        if step % 50 == 1:
            row.update(activation_overflow=[0.0, 0.02 if step > 100 else 0.0], activation_underflow=[0.001, 0.0])
        lines.append(row)
    if alerts:
        lines.append({"alert": {"step": 140, "metric": "grad_norm", "kind": "spike", "value": 55.0, "baseline": 0.5,
                                "spread": 0.03, "deviation": 40.0, "layer": "block", "message": "[ALERT] Step 140 | boom",
                                "advice": "lower the learning rate"}})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_monitor_report_replays_the_baseline_and_marks_alerts(tmp_path):
    run = read_history(write_history(tmp_path / "run.jsonl"))
    assert [(a["step"], a["metric"], a["kind"]) for a in run.alerts] == [
        (140, "loss", "spike"), (140, "grad_norm", "spike"), (160, "grad_norm", "nonfinite")]
    assert run.layers == ["embed", "block", "head"]
    band = run.bands["loss"]
    assert band["steps"][0] == 100  # ready after 100 warm-up values
    # the median of 50 values of 1.0 and 50 of 1.1 (log space) is their geometric mean
    assert band["center"][0] == pytest.approx(math.sqrt(1.1))
    text = monitor_to_html(run)
    assert_self_contained(text)
    page = Page(text)
    series = page.charts["chart-series"]
    assert series["loss"]["steps"] == list(range(1, 161)) and series["loss"]["values"][139] == 100.0
    assert series["grad_norm"]["values"][-1] == "inf"
    assert len(series["loss"]["band"]["center"]) == 61
    assert series["alerts"] == [{"n": 1, "step": 140, "metric": "loss", "kind": "spike"},
                                {"n": 2, "step": 140, "metric": "grad_norm", "kind": "spike"},
                                {"n": 3, "step": 160, "metric": "grad_norm", "kind": "nonfinite"}]
    assert page.titles["series-alert-1"].startswith("#1 step 140: loss: 100")
    heat = page.charts["chart-heatmap"]
    assert heat["layers"] == ["embed", "block", "head"] and heat["steps"] == [1, 160] and heat["columns"] == 160
    assert (heat["inf_cells"], heat["zero_cells"]) == (1, 1)  # drawn red and black, not as missing
    precision = page.charts["chart-precision"]["activation overflow (worst layer)"]
    assert precision == {"steps": [1, 51, 101, 151], "values": [0.0, 0.0, 0.02, 0.02]}
    assert page.tables["alerts"][1][:4] == ["1", "140", "loss", "spike"]
    assert "recomputed" in text


def test_monitor_report_uses_the_alerts_and_layers_the_history_holds(tmp_path):
    run = read_history(write_history(tmp_path / "run.jsonl", alerts=True))
    assert [a["message"] for a in run.alerts] == ["[ALERT] Step 140 | boom"]
    assert not any("recomputed" in n for n in run.notes)
    page = Page(monitor_to_html(run))
    assert page.charts["chart-heatmap"]["first_alert_layers"] == ["block"]
    assert page.titles["heatmap-alert-1"] == "#1 step 140: layer block (spike)"
    unnamed = read_history(write_history(tmp_path / "bare.jsonl", meta=False))
    assert unnamed.layers == ["layer 0", "layer 1", "layer 2"]
    assert any("default (100 steps" in n for n in unnamed.notes)


def test_monitor_report_of_a_live_monitor(tmp_path, one_thread):
    import torch
    from torch import nn

    from training_profiler.runtime import watch_training

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with watch_training(model=model, optimizer=optimizer, warmup_steps=10, transfer_every=5) as monitor:
        for _ in range(20):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss)
    path = monitor.report(tmp_path / "run.html")
    page = Page(path.read_text())
    assert page.charts["chart-series"]["loss"]["steps"] == list(range(1, 21))
    assert page.charts["chart-heatmap"]["layers"] == ["0", "2"]
    assert len(page.charts["chart-series"]["loss"]["band"]["center"]) == 11  # ready from step 10


@pytest.mark.parametrize("content, match", [
    ("not json\n", r"run\.jsonl:1 is not JSON"),
    ('{"loss": 1.0}\n', r"run\.jsonl:1 has no integer 'step'"),
    ('{"meta": {"layers": []}}\n', "holds no steps"),
])
def test_monitor_report_rejects_bad_history(tmp_path, content, match):
    path = tmp_path / "run.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_history(path)
    with pytest.raises(ValueError, match="no history file"):
        read_history(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------
# command line


MODELS = """
from torch import nn


def small():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def wide():
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
"""


def test_cli_writes_each_report_kind(tmp_path, capsys, one_thread):
    from training_profiler.cli import main

    models = tmp_path / "models.py"
    models.write_text(MODELS)
    out = tmp_path / "audit.html"
    assert main(["audit", f"{models}:small", "--input", "2,4", "--optimizer", "sgd", "--format", "html", "-o", str(out),
                 "--target", "cpu"]) == 0
    assert capsys.readouterr().err.strip().endswith(f"wrote {out}")
    assert Page(out.read_text()).charts["chart-breakdown"]["series"]["params"] == [232]

    assert main(["compare", f"{models}:small", f"{models}:wide", "--input", "2,4", "--format", "html"]) == 0
    page = Page(capsys.readouterr().out)  # no -o: stdout
    assert page.charts["chart-breakdown"]["labels"] == [f"{models}:small", f"{models}:wide"]

    base, head = tmp_path / "base.json", tmp_path / "head.json"
    base.write_text(hand_report().to_json())
    head.write_text(hand_report(fc_params=500_000).to_json())
    out = tmp_path / "diff.html"
    assert main(["diff", str(base), str(head), "--format", "html", "-o", str(out)]) == 0
    assert Page(out.read_text()).charts["chart-changed-params"]["series"] == {"base": [2_000_000], "head": [500_000]}

    out = tmp_path / "run.html"
    assert main(["report", str(write_history(tmp_path / "run.jsonl")), "-o", str(out)]) == 0
    assert Page(out.read_text()).charts["chart-heatmap"]["layers"] == ["embed", "block", "head"]
    capsys.readouterr()
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "error: no history file" in capsys.readouterr().err


def test_demo_writes_an_audit_and_a_monitor_report(tmp_path, monkeypatch, capsys, one_thread):
    import tempfile

    from training_profiler import demo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert demo._html_reports(demo.MUSEUM) == 0
    folder = tmp_path / "training-profiler-demo"
    audit_page, monitor_page = folder / "audit-conv_into_huge_linear.html", folder / "monitor-lr_too_high.html"
    assert capsys.readouterr().out == f"audit report:   {audit_page}\nmonitor report: {monitor_page}\n"
    assert Page(audit_page.read_text()).tables["findings"][1][1] == "FXA101"
    alerts = Page(monitor_page.read_text()).charts["chart-series"]["alerts"]
    assert [(a["metric"], a["kind"]) for a in alerts][:2] == [("grad_norm", "rising"), ("loss", "spike")]
