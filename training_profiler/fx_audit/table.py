"""The terminal view of an AuditReport: a per-layer table and the totals, drawn with ``rich``.

A view only: it reads the records (torch-free, so a JSON report renders without torch) and
computes nothing that the report does not hold, apart from grouping rows by module depth.
"""

from __future__ import annotations

import io

from ..units import human_bytes
from ..units import human_quantity as human_count
from .records import AuditReport, LayerRecord

__all__ = ["render_table", "summary_lines"]


def _shown(layer: LayerRecord) -> bool:
    """Rows worth a line: modules, anything with parameters or FLOPs, and ops without a formula."""
    return layer.kind == "module" or bool(layer.params or layer.buffers or layer.macs or layer.uncounted_ops)


def _group(layers: list[LayerRecord], depth: int) -> list[LayerRecord]:
    """Sum the records of each module path cut to ``depth`` components, in first-seen order."""
    groups: dict[str, LayerRecord] = {}
    for layer in layers:
        path = layer.module if layer.module is not None else layer.name
        key = ".".join(path.split(".")[:depth]) if path else "(top level)"
        row = groups.get(key)
        if row is None:
            row = groups[key] = LayerRecord(name=key, node=layer.node, op="", kind="group", module=key)
            row.extra["types"] = []
        row.extra["types"].append(layer.op if layer.kind == "module" else layer.module_type or "")
        for attr in ("params", "buffers", "macs", "flops_forward", "flops_backward", "output_bytes", "saved_bytes"):
            setattr(row, attr, getattr(row, attr) + getattr(layer, attr))
        row.output_shape, row.output_dtype = layer.output_shape, layer.output_dtype
        row.uncounted_ops = sorted(set(row.uncounted_ops) | set(layer.uncounted_ops))
    for row in groups.values():
        types = row.extra.pop("types")
        row.op = types[0] if len(types) == 1 else f"{len(types)} nodes"
    return list(groups.values())


def render_table(report: AuditReport, *, depth: int | None = None, all_nodes: bool = False, width: int = 120,
                 color: bool = False) -> str:
    """The per-layer table (params, FLOPs, output shape, forward memory) and the totals, as text.

    ``depth`` groups rows by module path (``depth=2``: ``layers.0``, ``layers.1``, ...);
    ``all_nodes`` also lists the zero-cost functional nodes (views, elementwise ops).
    """
    from rich.console import Console
    from rich.table import Table

    layers = _group(report.layers, depth) if depth else [layer for layer in report.layers
                                                         if all_nodes or _shown(layer)]
    hidden = len(report.layers) - len(layers) if not depth else 0
    table = Table(title=report.model, title_justify="left", show_lines=False, header_style="bold")
    table.add_column("Layer", overflow="fold")
    table.add_column("Type")
    table.add_column("Output shape")
    table.add_column("Params", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("FLOPs fwd", justify="right")
    table.add_column("FLOPs bwd", justify="right")
    table.add_column("Fwd memory", justify="right")
    table.add_column("Saved", justify="right")
    for layer in layers:
        shape = "x".join(map(str, layer.output_shape)) if layer.output_shape is not None else "-"
        op = layer.op + (" (!)" if layer.uncounted_ops else "")
        table.add_row(layer.name, op, shape, human_count(layer.params) if layer.params else "",
                      human_count(layer.macs) if layer.macs else "", human_count(layer.flops_forward),
                      human_count(layer.flops_backward), human_bytes(layer.output_bytes), human_bytes(layer.saved_bytes))

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, color_system="standard" if color else None,
                      highlight=False)
    console.print(table)
    if hidden:
        console.print(f"({hidden} zero-cost nodes hidden: views and elementwise ops; --all shows them)")
    for line in summary_lines(report):
        console.print(line, soft_wrap=True)
    return buffer.getvalue()


def summary_lines(report: AuditReport) -> list[str]:
    t = report.totals
    lines = [
        f"Graph: {len(report.layers)} records, captured by {report.capture.path}",
        f"Params: {t['params']:,} ({t['trainable_params']:,} trainable, {t['frozen_params']:,} frozen), "
        f"buffers: {t['buffers']:,}" + (f", unused: {t['unused_params']:,}" if t.get("unused_params") else ""),
        f"MACs: {human_count(t['macs'])}   FLOPs forward: {human_count(t['flops_forward'])}   "
        f"backward: {human_count(t['flops_backward'])}   (FLOPs = 2 x MACs; elementwise ops count 0)",
        f"Activations saved for backward: {human_bytes(t.get('saved_bytes'))}",
    ]
    memory = report.memory
    if memory is not None:
        where = f" at {memory.peak_module}" if memory.peak_module else ""
        parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in memory.breakdown.items())
        lines.append(f"Training-step peak on {memory.target} ({memory.optimizer or 'no optimizer'}, {memory.amp or 'fp32'}): "
                     f"{human_bytes(memory.peak_bytes)} in {memory.peak_phase}{where}")
        if memory.reserved_bytes is not None:
            lines.append(f"  reserved by the CUDA caching allocator: {human_bytes(memory.reserved_bytes)} "
                         f"(of which cached but unused: {human_bytes(memory.fragmentation_bytes)})")
        lines.append(f"  at the peak: {parts}" + (f"   [confidence: {memory.confidence}]"
                                                   if memory.confidence != "high" else ""))
        lines.extend(f"  note: {note}" for note in memory.notes)
    if "max_batch_size" in t:
        lines.append(f"Largest batch size within the memory budget: {t['max_batch_size']}")
    if report.uncounted:
        ops = ", ".join(f"{op} ({share:.1%} of ops)" for op, share in report.uncounted.items())
        lines.append(f"Ops without a cost formula (not in the FLOPs, marked (!)): {ops}")
    capture = report.capture
    for attempt in capture.attempts:
        lines.append(f"Capture: {attempt['path']} failed: {attempt['error']}")
    if capture.leaf_modules:
        lines.append(f"Capture: kept as opaque leaves: {', '.join(capture.leaf_modules)}")
    lines.extend(f"Capture: {note}" for note in capture.notes)
    lines.extend(f"Rule {e['code']} failed to run (its findings are missing): {e['error']}" for e in report.rule_errors)
    return lines
