"""What every audit rule shares: the registry, the thresholds, the graph view over the records,
the source locator and the context a checker reads. Imports without torch.

Graph vocabulary used by the checkers:

* a *weight layer* is a Linear / Conv / Embedding / RNN module call (or a functional ``linear``,
  ``conv*``, ``matmul`` fed by a parameter); normalisation layers are not weight layers;
* an *edge* is an entry of ``LayerRecord.inputs`` whose producer outputs a floating tensor
  (integer masks and ``size()`` results carry no gradient);
* the *gradient depth* of a weight layer is the fewest weight layers on any path from it to an
  output (itself included): residual adds and concatenations create short paths.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable

from ...findings import Finding, Location, Rule
from ...units import parse_bytes
from ..records import AuditReport, LayerRecord

__all__ = ["DOCS", "AuditConfig", "AuditRule", "Context", "Graph", "Locator", "REGISTRY", "access_path", "is_norm",
           "op_name", "register"]

DOCS = "https://pytorch.org/docs/stable"


# ---------------------------------------------------------------------------------------------
# The registry: one AuditRule per code


@dataclass(frozen=True)
class AuditRule:
    """One FXA rule: its metadata (code, severity, message, why, fix, references and the
    ``bad``/``good`` example models the generic test audits) and the checker that finds it."""

    rule: Rule
    check: Callable[["Context"], Iterable[Finding]]

    @property
    def code(self) -> str:
        return self.rule.code


REGISTRY: dict[str, AuditRule] = {}  # code -> rule, filled by the rule modules as they are imported


def register(rule: Rule) -> Callable:
    """Decorator: ``@register(FXA101)`` over the checker of FXA101, right below its metadata."""

    def decorate(check: Callable[["Context"], Iterable[Finding]]) -> Callable:
        if rule.code in REGISTRY:
            raise RuntimeError(f"audit rule {rule.code} is registered twice")
        REGISTRY[rule.code] = AuditRule(rule, check)
        return check

    return decorate


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class AuditConfig:
    """Rule thresholds; ``[tool.training-profiler.audit]`` keys are these names with dashes."""

    linear_max_params: int = 1_000_000  # FXA101: Linears above this are candidates
    linear_max_share: float = 0.5  # FXA101: reported at this share of all params (or when fed by a flatten)
    max_kernel: int = 7  # FXA102
    max_plain_depth: int = 20  # FXA103
    max_unnormalized: int = 8  # FXA104: a chain this long without a norm is reported
    init_tolerance: float = 1.5  # FXA105: std ratio outside [1/t, t] is a mismatch
    memory_budget: int | None = None  # FXA106: bytes; error when the peak exceeds it
    dominant_tensor_share: float = 0.25  # FXA106: warning when one tensor holds this share of the peak
    dominant_tensor_min_bytes: int = 64 * 2**20  # FXA106: ... and is at least this large

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "AuditConfig":
        """Build from ``[tool.training-profiler.audit]`` (dashes or underscores; sub-tables ignored)."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, dict):
                continue  # e.g. the models.<name> tables
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(
                    f"unknown audit setting {key!r} in [tool.training-profiler.audit]: use one of "
                    f"{', '.join(k.replace('_', '-') for k in known)}"
                )
            if name == "memory_budget" and isinstance(value, str):
                value = parse_bytes(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"audit setting {key!r} must be a number, got {value!r}")
            kwargs[name] = value
        return cls(**kwargs)



# ---------------------------------------------------------------------------------------------
# Graph helpers over LayerRecord.inputs


def op_name(rec: LayerRecord) -> str:
    """Normalised op name: "Conv2d" -> "conv2d", "aten._softmax.default" -> "softmax"."""
    op = rec.op.lower()
    if op.startswith("aten."):
        op = op[5:]
    op = op.split(".")[0].strip("_")
    return op


_NORM_RE = re.compile(r"norm")
_WEIGHT_MODULES = re.compile(r"^(linear|lazylinear|bilinear|conv\w*|lazyconv\w*|embedding\w*|lstm|gru|rnn|multiheadattention)$")
_WEIGHT_FUNCTIONS = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d", "matmul", "mm", "bmm", "addmm", "einsum", "embedding", "convolution"}
_RESHAPES = {"flatten", "view", "reshape"}
_PASS_THROUGH = {"flatten", "view", "reshape", "dropout", "contiguous", "identity", "squeeze", "unsqueeze",
                 "dropout1d", "dropout2d", "to", "type", "float", "clone"}


def is_norm(rec: LayerRecord) -> bool:
    return bool(_NORM_RE.search(op_name(rec)) or _NORM_RE.search((rec.module_type or "").lower())) and rec.kind != "get_attr"


class Graph:
    """Producers/consumers over gradient-carrying edges; ``layers`` in topological order (the
    engine appends parameter reads after the nodes, so the records' own order is not enough)."""

    def __init__(self, layers: list[LayerRecord]):
        self.by_node = {r.node: r for r in layers}
        self.producers: dict[str, list[str]] = {}
        self.consumers: dict[str, list[str]] = {r.node: [] for r in layers}
        for r in layers:
            prods = [i for i in dict.fromkeys(r.inputs) if i in self.by_node and _carries_grad(self.by_node[i])]
            self.producers[r.node] = prods
            for p in prods:
                self.consumers[p].append(r.node)
        self.layers = self._topological(layers)

    def _topological(self, layers: list[LayerRecord]) -> list[LayerRecord]:
        waiting = {r.node: len(self.producers[r.node]) for r in layers}
        ready = [r.node for r in reversed(layers) if not waiting[r.node]]  # a stack, first record on top
        order = []
        while ready:
            node = ready.pop()
            order.append(self.by_node[node])
            for c in reversed(self.consumers[node]):
                waiting[c] -= 1
                if not waiting[c]:
                    ready.append(c)
        if len(order) != len(layers):  # a cycle cannot come from an fx graph; keep the given order
            return list(layers)
        return order

    def is_weight_layer(self, rec: LayerRecord) -> bool:
        if rec.kind == "get_attr" or is_norm(rec):
            return False
        op = op_name(rec)
        if rec.kind == "module":
            return bool(_WEIGHT_MODULES.match(op)) or rec.params > 0
        if op in _WEIGHT_FUNCTIONS:
            return any(self.by_node[i].kind == "get_attr" for i in rec.inputs if i in self.by_node)
        return False

    def source_through_reshapes(self, rec: LayerRecord) -> tuple[LayerRecord | None, bool]:
        """The first producer of ``rec`` that is not a flatten/view/dropout-like op, and whether a
        flatten/view/reshape was crossed on the way."""
        seen, reshaped = set(), False
        current = rec
        while True:
            prods = self.producers.get(current.node, [])
            if not prods or current.node in seen:
                return None, reshaped
            seen.add(current.node)
            current = self.by_node[prods[0]]
            if op_name(current) not in _PASS_THROUGH:
                return current, reshaped
            reshaped = reshaped or op_name(current) in _RESHAPES


def _carries_grad(rec: LayerRecord) -> bool:
    if rec.output_shape is None:
        return False
    dtype = (rec.output_dtype or "float").lower()
    return dtype.startswith(("float", "bfloat", "complex", "torch.float", "torch.bfloat"))


# ---------------------------------------------------------------------------------------------
# Locations: the model's source file and the line where the module is defined


def _is_library_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("torch", "builtins", "transformers")


def _display_path(path: str) -> str:
    path = os.path.abspath(path)
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def access_path(module: str) -> str:
    """"layers.3.fc" -> "model.layers[3].fc" (what a user types to reach the module)."""
    out = "model"
    for part in module.split(".") if module else []:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


class Locator:
    """Maps a module path to (file, line) with ``inspect``: the nearest enclosing user-defined
    class, at the line where it assigns the child attribute (``self.features = ...``) when found,
    else its ``class`` line; the report's ``source`` (the factory) when no user class encloses it."""

    def __init__(self, model: Any, report: AuditReport):
        self.model = model
        file = report.source.get("file")
        library = file and f"{os.sep}site-packages{os.sep}torch{os.sep}" in file
        self.fallback = (None, None) if library else (file, report.source.get("line"))
        self.cache: dict[str, tuple[str | None, int | None]] = {}

    def __call__(self, module: str | None, node: str | None = None) -> Location:
        file, line = self._find(module or "")
        return Location(path=_display_path(file) if file else None, line=line, module=module or None, node=node)

    def _find(self, module: str) -> tuple[str | None, int | None]:
        if module in self.cache:
            return self.cache[module]
        result = self.fallback
        if self.model is not None:
            parts = module.split(".") if module else []
            for depth in range(len(parts), -1, -1):
                try:
                    owner = self.model.get_submodule(".".join(parts[:depth]))
                except (AttributeError, TypeError):
                    continue
                cls = type(owner)
                if _is_library_class(cls):
                    continue
                try:
                    file = inspect.getsourcefile(cls)
                    lines, start = inspect.getsourcelines(cls)
                except (OSError, TypeError):
                    continue
                line = start
                if depth < len(parts):
                    attr = re.compile(rf"\bself\.{re.escape(parts[depth])}\b")
                    for offset, text in enumerate(lines):
                        if attr.search(text) and ("=" in text):
                            line = start + offset
                            break
                result = (file, line)
                break
        self.cache[module] = result
        return result


# ---------------------------------------------------------------------------------------------
# Checkers: each takes a Context and yields Findings


@dataclass
class Context:
    """What a checker reads: the report, its graph, the thresholds, the model (or None) and the locator."""

    report: AuditReport
    graph: Graph
    config: AuditConfig
    model: Any
    locate: Locator

    @property
    def total_params(self) -> int:
        return self.report.totals.params or sum(r.params for r in self.report.layers)

