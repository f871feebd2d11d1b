"""Plain data records of an audit (torch-free, JSON round-trippable).

The engine (capture + costs + memory simulation) fills these; the architecture rules, the
table / Markdown / JSON / SARIF views and ``training-profiler diff`` only read them. Keep data,
statistics and presentation apart (torchinfo's lesson): nothing here formats text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..findings import Finding, Location, Severity

SCHEMA_VERSION = 1


@dataclass
class LayerRecord:
    """One graph node that does work: a leaf module call, a function or a method call.

    ``params`` count only the parameters this record owns directly (a leaf module's own, or a
    functional parameter read by a ``get_attr`` node), deduplicated across the model so tied
    weights are counted once, at their first use.
    """

    name: str  # qualified module path ("features.0"), or the node name for functional ops
    node: str  # fx node name (unique)
    op: str  # module type ("Conv2d"), function ("add", "scaled_dot_product_attention") or aten op
    kind: str  # "module" | "function" | "method" | "get_attr"
    module_type: str | None = None  # class name of the owning module, for functional nodes too
    inputs: list[str] = field(default_factory=list)  # fx node names feeding this node (graph edges)
    output_shape: list[int] | None = None  # first tensor output; None for non-tensor outputs
    output_shapes: list[list[int]] = field(default_factory=list)  # every tensor output
    output_dtype: str | None = None  # "float32", ...
    params: int = 0
    trainable_params: int = 0
    frozen_params: int = 0
    buffers: int = 0  # elements of buffers owned by this record
    macs: int = 0
    flops_forward: int = 0
    flops_backward: int = 0
    output_bytes: int = 0
    saved_bytes: int = 0  # bytes this node saves for backward
    uncounted_ops: list[str] = field(default_factory=list)  # ops inside with no cost formula
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. kernel_size, in/out features
    module: str | None = None  # qualified path of the module that owns this node ("" = the model itself)

    @property
    def has_params(self) -> bool:
        return self.params > 0


@dataclass
class CaptureInfo:
    """Which capture path produced the graph, and why the earlier ones failed."""

    path: str  # "symbolic_trace" | "leaf_tracer" | "export" | "hooks"
    attempts: list[dict[str, str]] = field(default_factory=list)  # [{"path": ..., "error": ...}]
    leaf_modules: list[str] = field(default_factory=list)  # modules kept opaque by the leaf tracer
    notes: list[str] = field(default_factory=list)  # assumptions made while running, e.g. data-dependent values


@dataclass
class TensorInfo:
    """A tensor alive at the memory peak."""

    description: str  # "grad of encoder.0.weight", "activation saved by features.3", ...
    shape: list[int]
    dtype: str
    bytes: int
    category: str  # "params" | "grads" | "optimizer_state" | "activations" | "temporaries"
    module: str | None = None


@dataclass
class MemoryReport:
    """Result of simulating steady-state training steps under FakeTensorMode."""

    peak_bytes: int
    peak_phase: str  # "forward" | "loss" | "backward" | "optimizer"
    peak_module: str | None  # module being executed at the peak, if known
    breakdown: dict[str, int]  # at the peak: params, grads, optimizer_state, activations, temporaries
    top_tensors: list[TensorInfo] = field(default_factory=list)
    optimizer: str | None = None
    amp: str | None = None
    batch_size: int | None = None
    confidence: str = "high"  # "low" where fake kernels under-report workspaces (corrected)
    notes: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)  # [{phase, module, live_bytes}], subsampled
    params_without_grad: tuple[str, ...] = ()  # trainable params that got no .grad: no optimizer state either
    target: str = "cpu"  # the device simulated: "cpu" or "cuda" (fx_audit/targets)
    reserved_bytes: int | None = None  # CUDA: predicted max_memory_reserved (caching allocator segments)
    fragmentation_bytes: int | None = None  # CUDA: reserved minus allocated at their peaks (cached, unused)
    # distributed plans (fx_audit.parallel); defaults describe a single process
    parallel: str | None = None  # None | "ddp" | "zero1" | "fsdp" | "zero2" | "zero3"
    world_size: int = 1
    ranks: list[int] = field(default_factory=list)  # the ranks this record describes (per-rank records)
    comm_bytes: dict[str, int] = field(default_factory=dict)  # per step and rank: all_reduce, all_gather, ...
    per_rank: list["MemoryReport"] = field(default_factory=list)  # one per distinct rank; peak = the largest

    @property
    def oom_bytes(self) -> int:
        """What an out-of-memory is decided on: the reserved bytes where the target has a caching
        allocator (CUDA: a new segment must fit), else the peak."""
        return self.reserved_bytes if self.reserved_bytes is not None else self.peak_bytes


def _memory_from_dict(data: dict[str, Any]) -> MemoryReport:
    data = dict(data)
    data["top_tensors"] = [TensorInfo(**t) for t in data.get("top_tensors", [])]
    data["per_rank"] = [_memory_from_dict(r) for r in data.get("per_rank", [])]
    return MemoryReport(**data)


@dataclass(eq=False)
class AuditTotals(Mapping):
    """Model totals of one audit, typed. Also a read-only mapping of the JSON keys
    (``totals["params"]``, ``totals.get("peak_bytes")``) for code written against the dict.

    The peak is not stored here: ``peak_bytes`` / ``peak_phase`` read the report's
    :class:`MemoryReport` (``None`` when no training step was simulated), so the two cannot
    disagree. ``max_batch_size`` is a key only when a memory budget was solved for.
    """

    params: int = 0
    trainable_params: int = 0
    frozen_params: int = 0
    buffers: int = 0
    unused_params: int = 0  # parameter elements that no graph node reads (frozen ones included)
    macs: int = 0
    flops_forward: int = 0
    flops_backward: int = 0
    saved_bytes: int = 0
    uncounted_op_calls: int = 0
    op_calls: int = 0
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        self._memory: MemoryReport | None = None  # bound by the owning AuditReport

    @property
    def peak_bytes(self) -> int | None:
        return self._memory.peak_bytes if self._memory is not None else None

    @property
    def peak_phase(self) -> str | None:
        return self._memory.peak_phase if self._memory is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``totals`` object (docs/audit-report.schema.json), keys in their historical order."""
        return {key: getattr(self, key) for key in _TOTALS_KEYS
                if not (key == "max_batch_size" and self.max_batch_size is None)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AuditTotals":
        """From the JSON object or a hand-written dict; missing counts are 0. ``peak_bytes`` and
        ``peak_phase`` are ignored: they come from the report's ``memory``."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __getitem__(self, key: str) -> Any:
        if key not in _TOTALS_KEYS or (key == "max_batch_size" and self.max_batch_size is None):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dict it replaces


_TOTALS_KEYS = ("params", "trainable_params", "frozen_params", "buffers", "unused_params", "macs", "flops_forward",
                "flops_backward", "saved_bytes", "peak_bytes", "peak_phase", "uncounted_op_calls", "op_calls",
                "max_batch_size")


@dataclass
class AuditReport:
    """Everything one audit found. ``totals`` is an :class:`AuditTotals` (a dict given here is
    converted); its peak always agrees with ``memory``.

    ``params_without_grad``: trainable parameters (qualified name -> elements, tied ones once)
    that received no gradient from the audit's backward pass over every floating output, the
    ones DDP would wait for; ``None`` when no backward ran. FXA108 reports them.
    ``rule_errors``: rules that raised instead of finishing (``[{"code": ..., "error": ...}]``);
    the other rules still ran.
    """

    model: str  # class name or factory spec
    inputs: list[dict[str, Any]]  # [{"shape": [...], "dtype": "float32"}]
    capture: CaptureInfo
    layers: list[LayerRecord]
    totals: AuditTotals
    memory: MemoryReport | None = None
    findings: list[Finding] = field(default_factory=list)
    uncounted: dict[str, float] = field(default_factory=dict)  # op -> share of graph nodes without a formula
    source: dict[str, Any] = field(default_factory=dict)  # {"file": ..., "line": ...} where the model class is defined
    params_without_grad: dict[str, int] | None = None
    rule_errors: list[dict[str, str]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "totals" and not isinstance(value, AuditTotals):
            value = AuditTotals.from_dict(value)
        object.__setattr__(self, name, value)
        if name in ("totals", "memory") and "totals" in self.__dict__:
            self.totals._memory = self.__dict__.get("memory")  # one source of truth for the peak

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["totals"] = self.totals.to_dict()
        out["findings"] = [f.to_dict() for f in self.findings]
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AuditReport":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"audit report has schema_version {data.get('schema_version')!r}, this version reads "
                f"{SCHEMA_VERSION}: re-run `training-profiler audit --format json` to regenerate it"
            )
        memory = data.get("memory")
        if memory is not None:
            memory = _memory_from_dict(memory)
        findings = []
        for f in data.get("findings", []):
            loc = Location(**{k: f.get(k) for k in ("path", "line", "col", "module", "node")})
            findings.append(
                Finding(
                    code=f["code"], severity=Severity.parse(f["severity"]), message=f["message"], location=loc,
                    why=f.get("why", ""), fix=f.get("fix", ""), references=tuple(f.get("references", ())),
                    data=f.get("data", {}),
                )
            )
        known = {f.name for f in fields(LayerRecord)}
        return cls(
            model=data["model"],
            inputs=data.get("inputs", []),
            capture=CaptureInfo(**data["capture"]),
            layers=[LayerRecord(**{k: v for k, v in layer.items() if k in known}) for layer in data.get("layers", [])],
            totals=AuditTotals.from_dict(data.get("totals", {})),
            memory=memory,
            findings=findings,
            uncounted=data.get("uncounted", {}),
            source=data.get("source", {}),
            params_without_grad=data.get("params_without_grad"),
            rule_errors=data.get("rule_errors", []),
        )
