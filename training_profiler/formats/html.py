"""Self-contained HTML reports: one file per audit, comparison, diff, plan or monitor run.

Reviewers open it from a CI artifact or a pull request: it loads nothing from outside (no
script, no font, no stylesheet, no ``http(s)://`` in any ``src`` or ``href``), the charts are
matplotlib's SVG inlined into the page, scaled by CSS to the window (``docs/html-report.md``
says why matplotlib). Each chart is a ``<figure class="chart" id="chart-NAME">`` whose
``data-series`` attribute holds the plotted numbers as JSON, and whose marks carry ``<title>``
tooltips. Every function here is a pure view of records; matplotlib is imported lazily (the
``plot`` extra).
"""

from __future__ import annotations

import html
import io
import json
import linecache
import math
import re
from collections.abc import Mapping, Sequence
from functools import wraps
from typing import Any

from ..units import human_bytes, human_count

__all__ = ["audit_to_html", "compare_to_html", "diff_to_html", "monitor_to_html", "plan_to_html"]

TOP_N = 12  # bars per "top layers" chart
_CATEGORIES = ("params", "grads", "optimizer_state", "activations", "temporaries", "communication")
_PALETTE = ("#4e79a7", "#f28e2b", "#76b7b2", "#e15759", "#59a14f", "#edc948", "#b07aa1", "#9c755f")
_PHASE_COLORS = {"zero_grad": "#eeeeee", "forward": "#e3eef9", "loss": "#fdf1d8", "backward": "#fbe3e1",
                 "optimizer": "#e5f3e3"}
_INCREASE = "#c0392b"
# text sizes for figures about 5 inches wide that CSS scales to the window
_RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
       "ytick.labelsize": 8, "svg.fonttype": "none", "axes.spines.top": False, "axes.spines.right": False}
_WIDTH = 5.2  # inches: about 1:1 in a 400 px window, up to 2x on a desktop

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d232a;background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:1rem}
header h1{font-size:1.45rem;margin:.2rem 0;overflow-wrap:anywhere}
.sub{color:#5a6570;margin:0 0 .5rem}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:.8rem 1rem;margin:1rem 0}
h2{font-size:1.15rem;margin:.1rem 0 .6rem}
h3{font-size:1rem;margin:.6rem 0 .3rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.5rem;margin:0}
.cards div{background:#f7f9fb;border:1px solid #e4e8ec;border-radius:6px;padding:.4rem .6rem;min-width:0}
.cards dt{font-size:.78rem;color:#5a6570;text-transform:uppercase;letter-spacing:.03em}
.cards dd{margin:0;font-weight:600;overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1rem}
figure{margin:0;min-width:0}
figure svg{display:block;width:100%;max-width:780px;height:auto;margin:0 auto}
figcaption{font-size:.85rem;color:#5a6570}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.88rem}
th,td{border-bottom:1px solid #e4e8ec;padding:.3rem .45rem;text-align:left;vertical-align:top}
th{background:#f7f9fb;font-weight:600}
td.num,th.num{text-align:right;white-space:nowrap}
code{font:.85em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
pre{font:.82em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f7f9fb;padding:.3rem .5rem;margin:.2rem 0;white-space:pre-wrap;overflow-wrap:anywhere}
.sev{display:inline-block;border-radius:4px;padding:0 .35rem;font-size:.78rem;font-weight:700;color:#fff}
.sev-error{background:#c0392b}.sev-warning{background:#d68910}.sev-info{background:#5d6d7e}
.up{color:#c0392b;font-weight:600}.down{color:#1e8449;font-weight:600}
tr.new td{background:#fdecea}tr.fixed td{background:#e9f7ef}
ul.notes{margin:.2rem 0;padding-left:1.2rem}
footer{color:#5a6570;font-size:.8rem;text-align:center;margin:1rem 0}
@media (max-width:600px){main{padding:.4rem}section{padding:.6rem}.grid{grid-template-columns:1fr}body{font-size:14px}}
"""


# ---------------------------------------------------------------------------------------------
# Page and chart plumbing


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    from .. import __version__

    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{_e(title)}</h1><p class=\"sub\">{_e(subtitle)}</p></header>\n"
        + "\n".join(s for s in sections if s)
        + f"\n<footer>training-profiler {_e(__version__)}: a self-contained report (no network needed)</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def _section(section_id: str, title: str, *body: str) -> str:
    return f"<section id=\"{section_id}\">\n<h2>{_e(title)}</h2>\n" + "\n".join(b for b in body if b) + "\n</section>"


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return "<dl class=\"cards\">" + "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in items) + "</dl>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (),
           row_classes: Sequence[str] | None = None, raw: bool = False, table_id: str = "") -> str:
    """A table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    def cell(tag: str, i: int, value: str) -> str:
        cls = " class=\"num\"" if i in numeric else ""
        return f"<{tag}{cls}>{value if raw and tag == 'td' else _e(value)}</{tag}>"

    head = "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers)) + "</tr>"
    body = []
    for r, row in enumerate(rows):
        cls = f" class=\"{row_classes[r]}\"" if row_classes and row_classes[r] else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    ident = f" id=\"{table_id}\"" if table_id else ""
    return f"<div class=\"scroll\"><table{ident}><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the HTML report draws its charts with matplotlib: pip install 'training-profiler[plot]'") from None
    return matplotlib


def _styled(draw):
    """Run a chart function with the report's matplotlib style (text sizes are read at creation)."""
    @wraps(draw)
    def wrapper(*args, **kwargs):
        with _matplotlib().rc_context(_RC):
            return draw(*args, **kwargs)
    return wrapper


def _figure(height: float, width: float = _WIDTH):
    from matplotlib.figure import Figure  # no pyplot: the user's backend stays untouched

    return Figure(figsize=(width, height), layout="constrained")


_SVG_HEAD = re.compile(r"\A.*?(?=<svg)", re.S)
_SVG_META = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_SVG_SIZE = re.compile(r'(<svg[^>]*?) width="[^"]*" height="[^"]*"')


def _chart(fig, name: str, caption: str, data: Any, titles: Mapping[str, str] | None = None) -> str:
    """``fig`` as an inline SVG figure ``#chart-NAME``: ids prefixed with NAME (several charts
    share one page), ``<title>`` tooltips for the artists whose gid is a key of ``titles``,
    the plotted numbers in ``data-series``."""
    with _matplotlib().rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = _SVG_META.sub("", _SVG_HEAD.sub("", buf.getvalue(), count=1), count=1)
    svg = _SVG_SIZE.sub(r'\1 role="img" preserveAspectRatio="xMidYMid meet"', svg, count=1)
    svg = svg.replace(' id="', f' id="{name}-').replace('url(#', f'url(#{name}-').replace('href="#', f'href="#{name}-')
    for gid, text in (titles or {}).items():
        svg = svg.replace(f'<g id="{name}-{gid}">', f'<g id="{name}-{gid}"><title>{_e(text)}</title>', 1)
    series = _e(json.dumps(data, separators=(",", ":"), allow_nan=False, default=str))
    return (f"<figure class=\"chart\" id=\"chart-{name}\" data-series=\"{series}\">\n{svg.strip()}\n"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _categories(breakdowns: Sequence[Mapping[str, int]]) -> list[str]:
    """Breakdown keys in the usual order, then any others (e.g. a plan's communication buffers)."""
    keys = {k for b in breakdowns for k, v in b.items() if v}
    return [c for c in _CATEGORIES if c in keys] + sorted(keys - set(_CATEGORIES))


@_styled
def _stacked_chart(name: str, title: str, labels: Sequence[str], breakdowns: Sequence[Mapping[str, int]],
                   caption: str, budget: int | None = None) -> str:
    """Horizontal stacked bars of memory by category, one bar per label; ``budget``: a red line."""
    categories = _categories(breakdowns)
    order = list(_CATEGORIES) + [c for c in categories if c not in _CATEGORIES]  # a category keeps its color
    n = len(labels)
    fig = _figure(1.5 + 0.4 * n)
    ax = fig.subplots()
    y = list(range(n))[::-1]  # the first label on top
    left = [0.0] * n
    titles = {}
    for c in categories:
        values = [b.get(c, 0) / 2**30 for b in breakdowns]
        bars = ax.barh(y, values, left=left, height=0.62, color=_PALETTE[order.index(c) % len(_PALETTE)],
                       label=c.replace("_", " "))
        for i, bar in enumerate(bars):
            bar.set_gid(f"seg-{c}-{i}")
            titles[f"seg-{c}-{i}"] = f"{labels[i]}: {c.replace('_', ' ')} {human_bytes(breakdowns[i].get(c, 0))}"
        left = [a + b for a, b in zip(left, values)]
    totals = [sum(b.get(c, 0) for c in categories) for b in breakdowns]
    for i, total in enumerate(totals):
        ax.text(left[i], y[i], f" {human_bytes(total)}", va="center", ha="left")
    if budget is not None:
        line = ax.axvline(budget / 2**30, color=_INCREASE, ls="--", lw=1.4, label=f"budget {human_bytes(budget)}")
        line.set_gid("budget")
        titles["budget"] = f"budget {human_bytes(budget)}"
    ax.set_yticks(y, [_short(label, 22) for label in labels])
    ax.set_xlabel("GiB")
    ax.set_xlim(0, max([*left, (budget or 0) / 2**30, 1e-9]) * 1.22)
    ax.set_title(title, loc="left")
    # four columns: six or more entries (long names such as "unsharded grads") overflow the figure's width
    fig.legend(loc="outside lower center", ncol=min(len(categories) + (budget is not None), 4), frameon=False,
               fontsize=7, handlelength=1, columnspacing=1)
    data = {"labels": list(labels), "categories": categories, "totals": totals, "budget": budget,
            "series": {c: [b.get(c, 0) for b in breakdowns] for c in categories}}
    return _chart(fig, name, caption, data, titles)


@_styled
def _bar_chart(name: str, title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]],
               unit: str, caption: str) -> str:
    """Horizontal bars, one group per label (one bar per series: e.g. base and head)."""
    fmt = human_bytes if unit == "bytes" else human_count
    n, k = len(labels), len(series)
    fig = _figure(1.0 + 0.28 * n * max(k, 1) ** 0.7)
    ax = fig.subplots()
    height = 0.8 / k
    titles = {}
    for j, (sname, values) in enumerate(series.items()):
        ys = [n - 1 - i + (k - 1 - 2 * j) * height / 2 for i in range(n)]
        bars = ax.barh(ys, values, height=height, color=_PALETTE[j], label=sname if k > 1 else None)
        for i, bar in enumerate(bars):
            bar.set_gid(f"bar-{j}-{i}")
            titles[f"bar-{j}-{i}"] = f"{labels[i]}{' (' + sname + ')' if k > 1 else ''}: {fmt(values[i])}"
    ax.set_yticks(range(n - 1, -1, -1), [_short(label, 30) for label in labels])
    ax.xaxis.set_major_formatter(_axis_formatter(fmt))
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)  # the figure's width: long labels leave the axes narrow
    if k > 1:
        ax.legend(loc="lower right")
    data = {"labels": list(labels), "unit": unit, "series": {s: list(v) for s, v in series.items()}}
    return _chart(fig, name, caption, data, titles)


def _axis_formatter(fmt):
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: fmt(v) if v else "0")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


# ---------------------------------------------------------------------------------------------
# Audit pieces


def _peak_index(memory) -> int:
    """Timeline index of the peak: the highest event at the peak's phase and module (the timeline
    is subsampled and leaves out kernel workspaces), else the highest event."""
    timeline = memory.timeline
    at_peak = [i for i, t in enumerate(timeline)
               if t.get("phase") == memory.peak_phase and t.get("module") == memory.peak_module]
    return max(at_peak or range(len(timeline)), key=lambda i: timeline[i]["live_bytes"])


@_styled
def _timeline_chart(name: str, runs: Sequence[tuple[str, Any]], caption: str) -> str:
    """Live bytes over one training step (x: position in the step, in %), peak marked."""
    fig = _figure(2.8)
    ax = fig.subplots()
    titles, data = {}, {}
    first = runs[0][1].timeline
    start = 0
    for i in range(1, len(first) + 1):  # shade the phases of the first run
        if i == len(first) or first[i]["phase"] != first[start]["phase"]:
            phase = first[start]["phase"]
            x0, x1 = 100 * start / max(len(first) - 1, 1), 100 * (i - 1) / max(len(first) - 1, 1)
            ax.axvspan(x0, x1, color=_PHASE_COLORS.get(phase, "#f0f0f0"), lw=0)
            if x1 - x0 > 8:  # room for the name
                ax.text((x0 + x1) / 2, 0.03, phase.replace("_", " "), transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=8, color="#5a6570")
            start = i
    for j, (label, memory) in enumerate(runs):
        timeline = memory.timeline
        xs = [100 * i / max(len(timeline) - 1, 1) for i in range(len(timeline))]
        ys = [t["live_bytes"] / 2**30 for t in timeline]
        color = _PALETTE[j] if len(runs) > 1 else _PALETTE[0]
        line, = ax.plot(xs, ys, color=color, lw=1.6, label=f"{label}: live bytes" if len(runs) > 1 else "live bytes")
        line.set_gid(f"live-{j}")
        p = _peak_index(memory)
        mark, = ax.plot([xs[p]], [ys[p]], marker="*", ms=13, color=color, mec="#1d232a", ls="none")
        mark.set_gid(f"peak-{j}")
        where = memory.peak_phase + (f" at {memory.peak_module}" if memory.peak_module else "")
        titles[f"peak-{j}"] = f"{label}: peak {human_bytes(memory.peak_bytes)} ({where})"
        ax.annotate(f"peak {human_bytes(memory.peak_bytes)}", (xs[p], ys[p]), textcoords="offset points",
                    xytext=(6, 4), color=color)
        data[label] = {"live_bytes": [t["live_bytes"] for t in timeline], "peak_index": p,
                       "peak_bytes": memory.peak_bytes, "phases": [t["phase"] for t in timeline]}
    ax.set_xlim(0, 100)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("position in the training step (%)")
    ax.set_ylabel("live GiB")
    if len(runs) > 1:
        ax.legend(loc="lower right")
    return _chart(fig, name, caption, data, titles)


def _layer_groups(layers) -> list[dict[str, Any]]:
    """Repeated layers merged: the same op with the same costs at paths that differ only in their
    numbers (32 identical transformer blocks), costs summed, ``count`` the number merged, named
    ``layers.*.mlp.up`` (or ``features.{4,5}.conv`` for up to three different numbers)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in layers:
        parts = r.name.split(".")
        pattern = tuple("*" if part.isdigit() else part for part in parts)
        costs = (r.params, r.flops_forward + r.flops_backward, r.saved_bytes)
        g = groups.setdefault((pattern, r.op, costs),
                              {"names": [], "op": r.op, "count": 0, "params": 0, "flops": 0, "saved_bytes": 0})
        g["names"].append(parts)
        g["count"] += 1
        g["params"] += costs[0]
        g["flops"] += costs[1]
        g["saved_bytes"] += costs[2]
    for g in groups.values():
        names = g.pop("names")
        merged = []
        for column in zip(*names):
            values = list(dict.fromkeys(column))
            merged.append(values[0] if len(values) == 1 else "{" + ",".join(values) + "}" if len(values) <= 3 else "*")
        g["name"] = ".".join(merged)
    return list(groups.values())


def _label(group: Mapping[str, Any]) -> str:
    return group["name"] + (f" ×{group['count']}" if group["count"] > 1 else "")


_LAYER_METRICS = (("params", "parameters", "count"), ("flops", "training FLOPs (forward + backward)", "count"),
                  ("saved_bytes", "activations saved for backward", "bytes"))


def _top_layer_charts(report, top: int) -> list[str]:
    groups = _layer_groups(report.layers)
    charts = []
    for key, title, unit in _LAYER_METRICS:
        best = sorted((g for g in groups if g[key] > 0), key=lambda g: -g[key])[:top]
        if best:
            charts.append(_bar_chart(f"top-{key.replace('_', '-')}", f"Top {len(best)} layers by {title}",
                                     [_label(g) for g in best], {key: [g[key] for g in best]}, unit,
                                     "×N: N repeated layers merged, their values summed"))
    return charts


def _source_line(path: str | None, line: int | None) -> str:
    if not path or not line:
        return ""
    return linecache.getline(path, line).strip()


def _findings_table(findings, row_classes: Sequence[str] | None = None) -> str:
    if not findings:
        return "<p>No findings.</p>"
    rows = []
    for f in findings:
        loc = f.location
        where = f"{loc.path}:{loc.line}" if loc.path and loc.line else (loc.path or "")
        src = _source_line(loc.path, loc.line)
        rows.append([
            f"<span class=\"sev sev-{_e(f.severity.value)}\">{_e(f.severity.value)}</span>",
            f"<code>{_e(f.code)}</code>",
            _e(f.message) + (f"<br><small>Fix: {_e(f.fix)}</small>" if f.fix else ""),
            (f"<code>{_e(where)}</code>" if where else "") + (f"<br><code>{_e(loc.module)}</code>" if loc.module else "")
            + (f"<pre>{_e(src)}</pre>" if src else ""),
        ])
    return _table(["Severity", "Code", "Finding", "Where"], rows, raw=True, row_classes=row_classes, table_id="findings")


def _totals_cards(report) -> str:
    t, memory = report.totals, report.memory
    inputs = ", ".join(f"{tuple(i.get('shape', []))} {i.get('dtype', '')}".strip() for i in report.inputs) or "-"
    items = [("Inputs", inputs), ("Params", f"{t.get('params', 0):,}"), ("Trainable", f"{t.get('trainable_params', 0):,}"),
             ("MACs (forward)", human_count(t.get("macs"))),
             ("FLOPs fwd / bwd", f"{human_count(t.get('flops_forward'))} / {human_count(t.get('flops_backward'))}")]
    if t.get("peak_bytes") is not None:
        where = t.get("peak_phase") or ""
        if memory is not None and memory.peak_module:
            where += f" at {memory.peak_module}"
        items.append(("Peak memory", f"{human_bytes(t['peak_bytes'])} ({where})"))
    if memory is not None:
        items.append(("Optimizer / AMP", f"{memory.optimizer or '-'} / {memory.amp or 'fp32'}"))
    if t.get("max_batch_size") is not None:
        items.append(("Largest batch that fits", str(t["max_batch_size"])))
    items.append(("Capture path", report.capture.path))
    return _cards(items)


def _notes(report) -> str:
    notes = list(report.capture.notes)
    notes += [f"capture path {a.get('path')} failed: {a.get('error')}" for a in report.capture.attempts]
    if report.capture.leaf_modules:
        notes.append("kept opaque by the leaf tracer: " + ", ".join(report.capture.leaf_modules))
    if report.memory is not None:
        notes += report.memory.notes
        if report.memory.confidence != "high":
            notes.append(f"memory confidence: {report.memory.confidence}")
    if report.uncounted:
        notes.append("ops without a cost formula: " + ", ".join(f"{op} ({share:.0%})" for op, share in report.uncounted.items()))
    if report.source.get("file"):
        notes.append(f"model defined at {report.source['file']}:{report.source.get('line', '')}")
    return _notes_list(notes) or "<p>None.</p>"


def _tensors_table(memory) -> str:
    rows = [[t.description, "×".join(map(str, t.shape)), t.dtype, t.category.replace("_", " "), human_bytes(t.bytes)]
            for t in memory.top_tensors]
    return _table(["Tensor", "Shape", "Dtype", "Category", "Bytes"], rows, numeric=(4,), table_id="peak-tensors")


def _memory_section(report) -> str:
    memory = report.memory
    if memory is None:
        return _section("memory", "Memory", "<p>Not simulated (<code>--no-memory</code>).</p>")
    peak = report.totals.get("peak_bytes", memory.peak_bytes)
    charts = [_stacked_chart("breakdown", "Memory at the peak", [report.model], [memory.breakdown],
                             f"peak {human_bytes(peak)} in {memory.peak_phase}")]
    if memory.timeline:
        note = next((n for n in memory.notes if "timeline" in n), "")
        charts.append(_timeline_chart("timeline", [(report.model, memory)],
                                      "live bytes over forward, backward and optimizer step; the star marks the peak, "
                                      "which includes kernel workspaces" + (f" ({note})" if note else "")))
    return _section("memory", "Memory", *charts, "<h3>Tensors alive at the peak</h3>", _tensors_table(memory))


# ---------------------------------------------------------------------------------------------
# Public views


def audit_to_html(report, top: int = TOP_N) -> str:
    """One audit: totals, memory at the peak, the live-bytes timeline, top layers, findings, notes."""
    return _page(
        f"training-profiler audit: {report.model}",
        f"{len(report.layers)} graph nodes, {len(report.findings)} finding(s)",
        [
            _section("totals", "Totals", _totals_cards(report)),
            _memory_section(report),
            _section("layers", "Top layers", "<div class=\"grid\">" + "".join(_top_layer_charts(report, top)) + "</div>"),
            _section("findings-section", "Findings", _findings_table(report.findings)),
            _section("notes", "Capture and notes", _notes(report)),
        ],
    )


def _change_html(a: float | None, b: float | None, fmt) -> str:
    """``+1.2 MiB (+3.0%)`` in red for an increase, green for a decrease; empty when equal."""
    if a is None or b is None or a == b:
        return ""
    delta = b - a
    pct = f" ({delta / a:+.1%})" if a else ""
    cls = "up" if delta > 0 else "down"
    return f"<span class=\"{cls}\">{'+' if delta > 0 else '-'}{_e(fmt(abs(delta)))}{_e(pct)}</span>"


def _metric_fmt(key: str):
    if key == "peak_bytes":
        return human_bytes
    return (lambda v: f"{v:,}") if "params" in key else human_count


def compare_to_html(reports: Sequence[Any], top: int = TOP_N) -> str:
    """Several architectures side by side; the change against the first one in red (more) or green (less)."""
    if not reports:
        raise ValueError("compare_to_html needs at least one audit report")
    names = [r.model for r in reports]
    keys = (("params", "Params"), ("macs", "MACs"), ("flops", "FLOPs/step"), ("peak_bytes", "Peak memory"),
            ("max_batch_size", "Max batch"))

    def value(report, key):
        t = report.totals
        return (t.get("flops_forward") or 0) + (t.get("flops_backward") or 0) if key == "flops" else t.get(key)

    rows = []
    for r in reports:
        row = [f"<code>{_e(r.model)}</code>"]
        for key, _ in keys:
            v, fmt = value(r, key), _metric_fmt(key) if key != "max_batch_size" else str
            cell = "-" if v is None else _e(fmt(v))
            if r is not reports[0] and key != "max_batch_size":
                change = _change_html(value(reports[0], key), v, fmt)
                cell += f"<br>{change}" if change else ""
            row.append(cell)
        codes = sorted({f.code for f in r.findings})
        row.append(", ".join(f"<code>{_e(c)}</code>" for c in codes) or "-")
        rows.append(row)
    table = _table(["Model", *(label for _, label in keys), "Findings"], rows, numeric=(1, 2, 3, 4, 5), raw=True,
                   table_id="compare")
    with_memory = [r for r in reports if r.memory is not None]
    charts = []
    if with_memory:
        charts.append(_stacked_chart("breakdown", "Memory at the peak", [r.model for r in with_memory],
                                     [r.memory.breakdown for r in with_memory], "one bar per model, same scale"))
        timelines = [(r.model, r.memory) for r in with_memory if r.memory.timeline]
        if timelines:
            charts.append(_timeline_chart("timeline", timelines, "live bytes over one training step of each model"))
    groups = {r.model: _layer_groups(r.layers) for r in reports}
    layer_charts = []
    for (key, _, unit), short in zip(_LAYER_METRICS[:2], ("parameters", "training FLOPs")):
        for i, r in enumerate(reports):
            best = sorted((g for g in groups[r.model] if g[key] > 0), key=lambda g: -g[key])[:top]
            if best:
                layer_charts.append(_bar_chart(f"top-{key}-{i}", f"{_short(r.model, 30)}: by {short}",
                                               [_label(g) for g in best], {key: [g[key] for g in best]}, unit, ""))
    return _page(
        "training-profiler compare: " + ", ".join(names), f"{len(reports)} models; changes are against {names[0]}",
        [
            _section("totals", "Side by side", table),
            _section("memory", "Memory", *charts),
            _section("layers", "Top layers", "<div class=\"grid\">" + "".join(layer_charts) + "</div>"),
        ],
    )


def diff_to_html(diff) -> str:
    """Before and after (a ``ReportDiff``): totals with their change, memory, layers that changed, findings."""
    base, head = diff.base, diff.head
    rows = [[_e(label), _e(_fmt_metric(key, a)), _e(_fmt_metric(key, b)), _change_html(a, b, _metric_fmt(key)) or "0"]
            for key, label, a, b in diff.metrics]
    table = _table(["", "base", "head", "change"], rows, numeric=(1, 2, 3), raw=True, table_id="metrics")
    sections = [_section("totals", "Totals", table)]
    if diff.new_violations:
        sections.append(_section("budget", "Budget newly exceeded", _notes_list(diff.new_violations)))
    if base.memory is not None and head.memory is not None:
        before, after = base.memory.breakdown, head.memory.breakdown
        change_rows = [[_e(c.replace("_", " ")), _e(human_bytes(before.get(c, 0))), _e(human_bytes(after.get(c, 0))),
                        _change_html(before.get(c, 0), after.get(c, 0), human_bytes) or "0"]
                       for c in _categories([before, after])]
        charts = [_stacked_chart("breakdown", "Memory at the peak: base and head", ["base", "head"], [before, after],
                                 "before (base) and after (head)"),
                  _table(["category", "base", "head", "change"], change_rows, numeric=(1, 2, 3), raw=True,
                         table_id="breakdown-change")]
        if base.memory.timeline and head.memory.timeline:
            charts.append(_timeline_chart("timeline", [("base", base.memory), ("head", head.memory)],
                                          "live bytes over one training step, before and after"))
        sections.append(_section("memory", "Memory", *charts))
    sections.append(_section("layers", "Layers that changed", *_changed_layers(base, head)))
    finding_rows = list(diff.new_findings) + list(diff.fixed_findings)
    classes = ["new"] * len(diff.new_findings) + ["fixed"] * len(diff.fixed_findings)
    sections.append(_section("findings-section", f"Findings: {len(diff.new_findings)} new (red), "
                             f"{len(diff.fixed_findings)} fixed (green)", _findings_table(finding_rows, classes)))
    return _page(f"training-profiler diff: {base.model} → {head.model}", "base → head", sections)


def _fmt_metric(key: str, value: Any) -> str:
    return "-" if value is None else _metric_fmt(key)(value)


def _changed_layers(base, head, top: int = TOP_N) -> list[str]:
    before = {g["name"]: g for g in _layer_groups(base.layers)}
    after = {g["name"]: g for g in _layer_groups(head.layers)}
    empty = {"count": 0, "params": 0, "flops": 0, "saved_bytes": 0}
    out, rows = [], []
    for key, title, unit in _LAYER_METRICS:
        changed = [n for n in {*before, *after} if before.get(n, empty)[key] != after.get(n, empty)[key]]
        changed.sort(key=lambda n: (-abs(after.get(n, empty)[key] - before.get(n, empty)[key]), n))
        changed = changed[:top]
        if not changed:
            continue
        fmt = human_bytes if unit == "bytes" else human_count
        out.append(_bar_chart(f"changed-{key.replace('_', '-')}", f"{title}: largest changes", changed,
                              {"base": [before.get(n, empty)[key] for n in changed],
                               "head": [after.get(n, empty)[key] for n in changed]}, unit, ""))
        rows += [[_e(n), _e(title), _e(fmt(before.get(n, empty)[key])), _e(fmt(after.get(n, empty)[key])),
                  _change_html(before.get(n, empty)[key], after.get(n, empty)[key], fmt)] for n in changed]
    if not out:
        return ["<p>No layer changed its parameters, FLOPs or saved activations.</p>"]
    return ["<div class=\"grid\">" + "".join(out) + "</div>",
            _table(["Layer", "Metric", "base", "head", "change"], rows, numeric=(2, 3, 4), raw=True, table_id="layer-changes")]


def plan_to_html(title: str, strategies: Mapping[str, Sequence[Mapping[str, int]]], budget: int | None = None,
                 max_micro_batch: Mapping[str, int | None] | None = None) -> str:
    """Per-rank memory of each parallel strategy against the GPU budget, and the largest
    micro-batch each allows. ``strategies``: name -> one breakdown (category -> bytes) per rank."""
    if not strategies:
        raise ValueError("plan_to_html needs at least one strategy with per-rank breakdowns")
    charts = [_stacked_chart(f"plan-{i}", f"{name}: memory per rank", [f"rank {r}" for r in range(len(ranks))], ranks,
                             f"{name}, {len(ranks)} rank(s)", budget=budget)
              for i, (name, ranks) in enumerate(strategies.items())]
    rows = [[name, human_bytes(max(sum(b.values()) for b in ranks)),
             "-" if (max_micro_batch or {}).get(name) is None else str(max_micro_batch[name])]
            for name, ranks in strategies.items()]
    return _page(title, f"{len(strategies)} strategies" + (f", budget {human_bytes(budget)} per GPU" if budget else ""), [
        _section("strategies", "Strategies", _table(["Strategy", "Largest rank peak", "Largest micro-batch"], rows,
                                                    numeric=(1, 2), table_id="plan")),
        _section("ranks", "Memory per rank", "<div class=\"grid\">" + "".join(charts) + "</div>"),
    ])


# ---------------------------------------------------------------------------------------------
# Monitor report


def monitor_to_html(run) -> str:
    """A monitor run (:class:`training_profiler.runtime.report.MonitorHistory`): loss and gradient
    norm with the baseline band and alert markers, a per-layer heat map, precision, the alerts."""
    steps = [r["step"] for r in run.rows]
    alerts = run.alerts
    items = [("Steps", f"{steps[0]}–{steps[-1]}" if steps else "none"), ("Alerts", str(len(alerts))),
             ("Layers watched", str(len(run.layers)))]
    last_loss = next((r["loss"] for r in reversed(run.rows) if "loss" in r), None)
    if last_loss is not None:
        items.append(("Last loss", f"{last_loss:.4g}"))
    sections = [_section("totals", "Run", _cards(items), _notes_list(run.notes))]
    if steps:
        sections.append(_section("series", "Loss and gradient norm", _series_chart(run)))
        heat = _heatmap_chart(run)
        if heat:
            sections.append(_section("layers", "Gradient norm per layer", heat))
        sections.append(_section("precision", "fp16/bf16 overflow and underflow", _precision_chart(run)))
    rows = [[str(i + 1), str(a["step"]), a["metric"], a["kind"], _num(a.get("value")), a.get("layer") or "",
             a.get("message", "")] for i, a in enumerate(alerts)]
    sections.append(_section("alerts", f"Alerts ({len(alerts)})",
                             _table(["#", "Step", "Metric", "Kind", "Value", "Layer", "Message"], rows, numeric=(0, 1, 4),
                                    table_id="alerts") if alerts else "<p>No alerts.</p>"))
    return _page(f"training-profiler monitor: {run.source}", f"{len(run.rows)} recorded steps", sections)


def _notes_list(notes: Sequence[str]) -> str:
    return "<ul class=\"notes\">" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else ""


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _finite(values: Sequence[float]) -> list[float]:
    """NaN where a value is not finite or not positive (no point on a log scale)."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else math.nan for v in values]


_ALERT_COLORS = {"nonfinite": "#8e44ad", "spike": "#c0392b", "rising": "#e67e22", "divergence": "#d35400",
                 "vanishing": "#2471a3", "overflow": "#b03a2e", "underflow": "#1f618d", "skipped_steps": "#7d6608"}


@_styled
def _series_chart(run) -> str:
    fig = _figure(4.6, 5.6)
    axes = fig.subplots(2, 1, sharex=True)
    titles, data = {}, {}
    for ax, metric, color in ((axes[0], "loss", _PALETTE[0]), (axes[1], "grad_norm", _PALETTE[1])):
        rows = [r for r in run.rows if metric in r]
        steps = [r["step"] for r in rows]
        values = [r[metric] for r in rows]
        data[metric] = {"steps": steps, "values": [v if math.isfinite(v) else str(v) for v in values]}
        ax.set_yscale("log")
        band = run.bands.get(metric)
        if band and band["steps"]:
            fill = ax.fill_between(band["steps"], _finite(band["low"]), _finite(band["high"]), color=color, alpha=0.18,
                                   lw=0, label=f"baseline ±{band['sigmas']:g}σ")
            fill.set_gid(f"band-{metric}")
            ax.plot(band["steps"], _finite(band["center"]), color=color, lw=0.8, ls="--", label="baseline")
            data[metric]["band"] = {k: [v if math.isfinite(v) else None for v in band[k]] for k in ("center", "low", "high")}
        if steps:
            line, = ax.plot(steps, _finite(values), color=color, lw=1.1, label=metric.replace("_", " "))
            line.set_gid(f"line-{metric}")
            bad = [s for s, v in zip(steps, values) if not math.isfinite(v)]
            if bad:
                ax.plot(bad, [1.0] * len(bad), transform=ax.get_xaxis_transform(), marker="X", ls="none",
                        color=_ALERT_COLORS["nonfinite"], ms=8, clip_on=False, label="NaN/Inf")
        ax.set_ylabel(metric.replace("_", " ") + " (log)")
        ax.grid(True, which="major", alpha=0.3)
    values_at = {m: {r["step"]: r[m] for r in run.rows if m in r} for m in ("loss", "grad_norm")}
    seen_kinds = set()
    for i, a in enumerate(run.alerts):
        metric = "loss" if a["metric"] == "loss" else "grad_norm"
        ax = axes[0] if metric == "loss" else axes[1]
        y = values_at[metric].get(a["step"])
        color = _ALERT_COLORS.get(a["kind"], "#34495e")
        label = None if a["kind"] in seen_kinds else f"alert: {a['kind']}"
        seen_kinds.add(a["kind"])
        if y is not None and math.isfinite(y) and y > 0:
            mark, = ax.plot([a["step"]], [y], marker="o", ms=9, mfc="none", mec=color, mew=2, ls="none", label=label)
        else:  # no plottable value at this step: mark it on the top edge
            mark, = ax.plot([a["step"]], [1.0], transform=ax.get_xaxis_transform(), marker="v", ms=9, color=color,
                            ls="none", clip_on=False, label=label)
        mark.set_gid(f"alert-{i + 1}")
        titles[f"alert-{i + 1}"] = f"#{i + 1} step {a['step']}: {a.get('message') or a['kind']}"
        ax.annotate(str(i + 1), (a["step"], y if y is not None and math.isfinite(y) and y > 0 else 1.0),
                    xycoords=("data", "data" if y is not None and math.isfinite(y) and y > 0 else "axes fraction"),
                    textcoords="offset points", xytext=(5, 5), color=color)
    data["alerts"] = [{"n": i + 1, "step": a["step"], "metric": a["metric"], "kind": a["kind"]} for i, a in enumerate(run.alerts)]
    for ax in axes:
        ax.legend(fontsize=7, loc="upper left", ncol=3, framealpha=0.7)
    axes[1].set_xlabel("step")
    return _chart(fig, "series", "log scale; the band is the detector's learned baseline; numbered markers are the "
                  "alerts of the table below (hover for the message)", data, titles)


@_styled
def _heatmap_chart(run) -> str:
    import numpy as np

    rows = [r for r in run.rows if r.get("layer_grad_norms")]
    if not rows or not run.layers:
        return ""
    norms = np.array([[v if v is not None else np.nan for v in r["layer_grad_norms"]] for r in rows], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logn = np.log10(np.abs(norms))  # 0 -> -inf (vanished), Inf -> inf, NaN (no gradient) stays
    steps = [r["step"] for r in rows]
    columns = min(len(rows), 400)  # the largest norm of each bin of steps: a short blow-up stays visible
    edges = np.linspace(0, len(rows), columns + 1).astype(int)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            binned = np.stack([np.nanmax(logn[a:b], axis=0) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    finite = binned[np.isfinite(binned)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    vmax = max(vmax, vmin + 1e-6)
    n_layers = len(run.layers)
    fig = _figure(min(2.2 + 0.1 * n_layers, 7.0), 5.6)
    ax = fig.subplots()
    cmap = _matplotlib().colormaps["viridis"].with_extremes(bad="#d5d8dc", over="#e74c3c", under="#000000")
    shown = np.ma.masked_invalid(np.where(np.isposinf(binned), vmax + 1.0, np.where(np.isneginf(binned), vmin - 1.0, binned)))
    image = ax.imshow(shown, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                      extent=(steps[0] - 0.5, steps[-1] + 0.5, n_layers - 0.5, -0.5), interpolation="nearest")
    extend = {(True, True): "both", (True, False): "max", (False, True): "min"}.get(
        (bool(np.isposinf(binned).any()), bool(np.isneginf(binned).any())), "neither")
    fig.colorbar(image, ax=ax, label="log10 gradient norm", shrink=0.9, extend=extend)
    every = max(1, math.ceil(n_layers / 30))
    ticks = list(range(0, n_layers, every))
    ax.set_yticks(ticks, [_short(run.layers[i], 22) for i in ticks], fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("layer (input at the top)")
    titles = {}
    index = {name: i for i, name in enumerate(run.layers)}
    for i, a in enumerate(run.alerts):
        if a.get("layer") in index:
            mark, = ax.plot([a["step"]], [index[a["layer"]]], marker="o", ms=10, mfc="none", mec="#e74c3c", mew=2, ls="none")
            mark.set_gid(f"alert-{i + 1}")
            titles[f"alert-{i + 1}"] = f"#{i + 1} step {a['step']}: layer {a['layer']} ({a['kind']})"
    data = {"layers": list(run.layers), "steps": [steps[0], steps[-1]], "columns": columns,
            "inf_cells": int(np.isposinf(binned).sum()), "zero_cells": int(np.isneginf(binned).sum()),
            "first_alert_layers": [a["layer"] for a in run.alerts if a.get("layer")]}
    return _chart(fig, "heatmap", "each column: the largest norm over its steps; red: Inf; black: exactly 0; grey: no gradient; circles: the layer "
                  "an alert names (the first layer off its baseline)", data, titles)


@_styled
def _precision_chart(run) -> str:
    series: dict[str, tuple[list[int], list[float]]] = {}
    for key, label in (("activation_overflow", "activation overflow (worst layer)"),
                       ("activation_underflow", "activation underflow (worst layer)"),
                       ("grad_overflow", "gradient overflow"), ("grad_underflow", "gradient underflow")):
        points = [(r["step"], max((v for v in _listify(r[key]) if v is not None and math.isfinite(v)), default=math.nan))
                  for r in run.rows if key in r]
        points = [(s, v) for s, v in points if math.isfinite(v)]
        if points:
            series[label] = ([s for s, _ in points], [v for _, v in points])
    if not series:
        return "<p>No fp16/bf16 statistics in this run (the model ran in fp32, or no precision step was recorded).</p>"
    fig = _figure(2.6, 5.6)
    ax = fig.subplots()
    for j, (label, (steps, values)) in enumerate(series.items()):
        line, = ax.plot(steps, [100 * v for v in values], marker="o", ms=3, lw=1, color=_PALETTE[j], label=label)
        line.set_gid(f"precision-{j}")
    ax.set_xlabel("step")
    ax.set_ylabel("% of values")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    data = {label: {"steps": s, "values": v} for label, (s, v) in series.items()}
    return _chart(fig, "precision", "overflow: at or beyond half the format's maximum, or Inf; underflow: non-zero "
                  "values below the smallest normal", data)


def _listify(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
