"""The linter engine: one pass over the ``ast`` tree, shared by flake8 and the standalone CLI.

Design (see DESIGN.md): flake8 has already parsed the file with ``ast``, so detection runs on that
tree, with one import-alias table per file and every rule in a single traversal. libcst is used
only by ``fixes.py`` for the formatting-preserving autofixes. A text pre-check skips files that
contain none of the tokens the enabled rules declare.

Scope model: a scope is the module body or one function body. Statements are visited in order;
``with autocast(...)`` blocks push an :class:`AutocastState`; assignments record a
:class:`Binding` (what was assigned, and under which autocast state) so rules can ask where a
value was produced. Rules never reason across functions.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..findings import Finding, Location, Rule, Severity

# ---------------------------------------------------------------------------------------------
# Rule base class


class LintRule:
    """A detector: metadata for one or more codes plus ``visit_<AstType>`` hooks.

    Hooks (all optional), called with ``(node, ctx)``:
      * ``visit_Call``, ``visit_With``, ... before the node's children are visited;
      * ``enter_scope`` / ``leave_scope`` around the module body and every function body.
    ``tokens``: the rule can only fire when the source text contains one of these strings.
    ``fix_transformer(positions)``: optional, returns a libcst transformer (see ``fixes.py``).
    Rule modules must not import libcst at module level (it costs ~0.25 s per flake8 run):
    import it inside ``fix_transformer``.
    """

    rules: tuple[Rule, ...] = ()
    tokens: tuple[str, ...] = ()

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.rules)


# ---------------------------------------------------------------------------------------------
# Autocast regions and bindings


_LOW = {"float16": "float16", "half": "float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class AutocastState:
    """One ``with autocast(...)`` (or ``@autocast``) region, innermost first via ``outer``."""

    node: ast.AST
    enabled: bool | None  # None: an expression we cannot evaluate (treated as enabled)
    device: str | None  # "cuda", "cpu", ... or None when unknown
    dtype: str | None  # "float16" / "bfloat16" / None (device default)
    outer: "AutocastState | None" = None

    @property
    def active(self) -> bool:
        return self.enabled is not False

    @property
    def effective_dtype(self) -> str | None:
        if self.dtype:
            return self.dtype
        if self.device == "cpu":
            return "bfloat16"
        if self.device in ("cuda", None):
            return "float16"
        return None

    def enclosing_active(self) -> "AutocastState | None":
        """The nearest enclosing region (not this one) that is enabled."""
        state = self.outer
        while state is not None and not state.active:
            state = state.outer
        return state


@dataclass
class Binding:
    """A name (``x``) or self attribute (``self.x``) bound in a scope."""

    name: str
    node: ast.AST  # the binding statement
    value: ast.AST | None  # the assigned expression (None for tuple unpacking, loop targets, ...)
    autocast: AutocastState | None  # region active at the time of binding
    import_target: str | None = None  # "torch.nn.functional" for `import torch.nn.functional as F`
    previous: "Binding | None" = None  # the binding this one replaced: `x = x / n` reads the previous x


@dataclass
class Scope:
    node: ast.AST  # ast.Module, FunctionDef, AsyncFunctionDef, ClassDef or Lambda
    parent: "Scope | None"
    bindings: dict[str, Binding] = field(default_factory=dict)
    autocast: AutocastState | None = None
    data: dict[str, Any] = field(default_factory=dict)  # per-rule scratch space

    @property
    def is_class(self) -> bool:
        return isinstance(self.node, ast.ClassDef)

    @property
    def is_function(self) -> bool:
        return isinstance(self.node, (ast.FunctionDef, ast.AsyncFunctionDef))


# ---------------------------------------------------------------------------------------------
# Context: what rules see


class Context:
    """Per-file state handed to every hook."""

    def __init__(self, path: str, source: str, lines: list[str], enabled: set[str], amp: bool | str = False):
        self.path = path
        self.source = source
        self.lines = lines
        self.enabled = enabled
        self.findings: list[Finding] = []
        self.scope: Scope = None  # type: ignore[assignment]  # set by the walker
        # file-wide facts found during the walk: "autocast", "gradscaler"
        self.facts: set[str] = set()
        self.parents: dict[int, ast.AST] = {}  # id(child) -> parent, filled for visited nodes
        # does this code run in low precision? "float16" / "bfloat16" -> the first evidence seen
        self.amp_evidence: dict[str, str] = {}
        # the package says it trains in low precision (`amp = true | "fp16" | "bf16"`): "float16" / "bfloat16" / None
        self.amp_config = amp_option(amp)
        self._amp_shown = "true" if amp is True else f'"{amp}"'
        self._tiered: list[tuple[Rule, Rule, str, ast.AST, dict, dict]] = []

    # -- names -------------------------------------------------------------------------------
    def lookup(self, name: str) -> Binding | None:
        """The binding of ``name`` (or ``self.attr``) visible in the current scope."""
        scope = self.scope
        if name.startswith("self."):
            while scope is not None and not scope.is_class:
                if name in scope.bindings:
                    return scope.bindings[name]
                scope = scope.parent
            return scope.bindings.get(name) if scope is not None else None
        first = True
        while scope is not None:
            if (first or not scope.is_class) and name in scope.bindings:
                return scope.bindings[name]
            first = False
            scope = scope.parent
        return None

    def qualname(self, node: ast.AST | None, _depth: int = 0) -> str | None:
        """Dotted name of ``node`` resolved through imports: ``F.softmax`` ->
        ``torch.nn.functional.softmax``. ``None`` when the base is not an imported name."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or _depth > 4:
            return None
        binding = self.lookup(node.id)
        if binding is None:
            return None
        if binding.import_target is not None:
            base = binding.import_target
        elif isinstance(binding.value, (ast.Name, ast.Attribute)):
            base = self.qualname(binding.value, _depth + 1)  # `ac = torch.autocast`
            if base is None:
                return None
        else:
            return None
        return ".".join([base, *reversed(parts)]) if parts else base

    def call_name(self, call: ast.Call) -> str | None:
        return self.qualname(call.func)

    def value_of(self, node: ast.AST) -> ast.AST | None:
        """The expression last assigned to a name / self attribute, if known."""
        key = target_key(node)
        binding = self.lookup(key) if key else None
        return binding.value if binding else None

    def produced_under(self, node: ast.AST) -> AutocastState | None:
        """The autocast region in which the value named by ``node`` was bound, if any."""
        key = target_key(node)
        binding = self.lookup(key) if key else None
        return binding.autocast if binding else None

    @property
    def autocast(self) -> AutocastState | None:
        """The innermost autocast region around the node being visited (None: outside)."""
        return self.scope.autocast

    def scope_data(self, rule: LintRule) -> dict[str, Any]:
        """Scratch space of ``rule`` for the current function / module scope."""
        scope = self.scope
        while scope.is_class:  # class bodies share their enclosing scope's data
            scope = scope.parent  # type: ignore[assignment]
        return scope.data.setdefault(type(rule).__name__, {})

    def parent(self, node: ast.AST) -> ast.AST | None:
        return self.parents.get(id(node))

    # -- reporting ---------------------------------------------------------------------------
    def report(self, rule: Rule, node: ast.AST, *, fixable: bool = False, data: dict | None = None, **fmt: Any) -> None:
        if rule.code not in self.enabled:
            return
        line = getattr(node, "lineno", 1)
        col = self._char_col(line, getattr(node, "col_offset", 0))
        payload = dict(data or {})
        if fixable:
            payload["autofix"] = True
        self.findings.append(rule.finding(Location(self.path, line, col + 1), data=payload, **fmt))

    def note_amp(self, dtype: str, what: str, node: ast.AST) -> None:
        """Record evidence that this file runs in ``dtype`` ("float16" / "bfloat16")."""
        if dtype not in self.amp_evidence:
            self.amp_evidence[dtype] = f"{what} on line {getattr(node, 'lineno', 1)}"

    def amp_reason(self, dtype: str | None = None) -> str | None:
        """Why this code can run in low precision (``dtype`` given: in that one), or None.
        Config wins over the file: a model file of a package that trains with AMP elsewhere."""
        if self.amp_config and dtype in (None, self.amp_config):
            return f"the package is configured with amp = {self._amp_shown}"
        dtypes = (dtype,) if dtype else ("float16", "bfloat16")
        found = [self.amp_evidence[d] for d in dtypes if d in self.amp_evidence]
        return f"this file uses {found[0]}" if found else None

    def report_tiered(self, rule: Rule, readiness: Rule, node: ast.AST, *, dtype: str | None = None,
                      fixable: bool = False, data: dict | None = None, **fmt: Any) -> None:
        """Report ``rule`` where the file (or the package, by config) runs in low precision, else
        ``readiness`` (info-level advice for code that is fp32 today). ``dtype``: only evidence of
        that dtype counts ("float16" for overflow rules: bfloat16 has float32's range). Decided
        when the walk ends, since the evidence may come later in the file; the message gets the
        reason as ``{evidence}``."""
        payload = dict(data or {})
        if fixable:
            payload["autofix"] = True
        self._tiered.append((rule, readiness, dtype or "", node, payload, fmt))

    def resolve_tiered(self) -> None:
        for rule, readiness, dtype, node, payload, fmt in self._tiered:
            reason = self.amp_reason(dtype or None)
            chosen = rule if reason else readiness
            self.report(chosen, node, fixable=bool(payload.pop("autofix", False)), data=payload, evidence=reason or "", **fmt)
        self._tiered.clear()

    def _char_col(self, line: int, byte_col: int) -> int:
        """ast columns are UTF-8 byte offsets; editors and libcst count characters."""
        try:
            text = self.lines[line - 1]
        except IndexError:
            return byte_col
        if text.isascii():
            return byte_col
        return len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


_AMP_OPTIONS = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def amp_option(value: bool | str | None) -> str | None:
    """The low-precision dtype a package trains in, from its ``amp`` option: ``true`` (fp16, CUDA
    autocast's default), ``"fp16"`` or ``"bf16"``; ``false`` / None: none declared."""
    if value is None or value is False:
        return None
    if value is True:
        return "float16"
    if isinstance(value, str) and value.strip().lower() in _AMP_OPTIONS:
        return _AMP_OPTIONS[value.strip().lower()]
    raise ValueError(f"amp = {value!r} is not a precision: use true, false, \"fp16\" or \"bf16\"")


def target_key(node: ast.AST) -> str | None:
    """``x`` for a Name, ``self.x`` for an attribute of ``self``; None otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def names_in(node: ast.AST) -> Iterator[ast.AST]:
    """Every Name and ``self.x`` attribute read inside an expression."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, ast.Name):
            yield cur
            continue
        if target_key(cur):
            yield cur
            continue
        if isinstance(cur, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(cur))


# ---------------------------------------------------------------------------------------------
# Autocast recognition

AUTOCAST_NAMES = {
    "torch.autocast": None,
    "torch.amp.autocast": None,
    "torch.amp.autocast_mode.autocast": None,
    "torch.cuda.amp.autocast": "cuda",
    "torch.cuda.amp.autocast_mode.autocast": "cuda",
    "torch.cpu.amp.autocast": "cpu",
    "torch.cpu.amp.autocast_mode.autocast": "cpu",
}
GRADSCALER_NAMES = {
    "torch.amp.GradScaler",
    "torch.cuda.amp.GradScaler",
    "torch.cpu.amp.GradScaler",
    "torch.amp.grad_scaler.GradScaler",
    "torch.cuda.amp.grad_scaler.GradScaler",
}


def _const_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def dtype_name(ctx: Context, node: ast.AST | None) -> str | None:
    """``torch.float16`` / ``torch.half`` / ``"float16"`` -> ``"float16"``; bf16 likewise."""
    if node is None:
        return None
    name = ctx.qualname(node)
    if name and name.startswith("torch."):
        return _LOW.get(name[6:], name[6:])
    return _LOW.get(_const_str(node) or "", None)


def autocast_call(ctx: Context, expr: ast.AST, outer: AutocastState | None) -> AutocastState | None:
    """An AutocastState if ``expr`` is a call to any autocast API, else None; records the
    "autocast" fact and the low-precision evidence of the file."""
    state = _autocast_state(ctx, expr, outer)
    if state is not None:
        ctx.facts.add("autocast")
        _note_autocast(ctx, state)
    return state


def _note_autocast(ctx: Context, state: AutocastState) -> None:
    if state.active:
        ctx.note_amp(state.effective_dtype or "float16", ctx.call_name(state.node) or "autocast", state.node)  # type: ignore[arg-type]


def _autocast_state(ctx: Context, expr: ast.AST, outer: AutocastState | None) -> AutocastState | None:
    if not isinstance(expr, ast.Call):
        return None
    name = ctx.call_name(expr)
    if name not in AUTOCAST_NAMES:
        return None
    device = AUTOCAST_NAMES[name]
    kwargs = {k.arg: k.value for k in expr.keywords if k.arg}
    args = list(expr.args)
    if device is None:  # torch.autocast(device_type, dtype=None, enabled=True, ...)
        dev_node = kwargs.get("device_type", args.pop(0) if args else None)
        device = _const_str(dev_node)
        dtype_node = kwargs.get("dtype", args.pop(0) if args else None)
        enabled_node = kwargs.get("enabled", args.pop(0) if args else None)
    else:  # torch.cuda.amp.autocast(enabled=True, dtype=torch.float16, cache_enabled=True)
        enabled_node = kwargs.get("enabled", args.pop(0) if args else None)
        dtype_node = kwargs.get("dtype", args.pop(0) if args else None)
    if enabled_node is None:
        enabled: bool | None = True
    elif isinstance(enabled_node, ast.Constant) and isinstance(enabled_node.value, bool):
        enabled = enabled_node.value
    else:
        enabled = None
    dtype = dtype_name(ctx, dtype_node)
    return AutocastState(node=expr, enabled=enabled, device=device, dtype=dtype, outer=outer)


# ---------------------------------------------------------------------------------------------
# Does the file run in low precision? (autocast, GradScaler, .half(), torch.float16, bfloat16)

_LOW_DTYPE_NAMES = {
    "torch.float16": "float16", "torch.half": "float16", "torch.bfloat16": "bfloat16",
    "torch.HalfTensor": "float16", "torch.cuda.HalfTensor": "float16",
    "torch.BFloat16Tensor": "bfloat16", "torch.cuda.BFloat16Tensor": "bfloat16",
}
_LOW_CAST_METHODS = {"half": "float16", "bfloat16": "bfloat16"}
# precision settings spelled as strings: Lightning's Trainer(precision=...), HF's mixed_precision=...
_LOW_STRINGS = {
    "float16": "float16", "fp16": "float16", "16-mixed": "float16", "16-true": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16", "bf16-mixed": "bfloat16", "bf16-true": "bfloat16",
}
_AMP_ATTRS = {n.rsplit(".", 1)[-1] for n in (*_LOW_DTYPE_NAMES, *AUTOCAST_NAMES, *GRADSCALER_NAMES)}


class _AmpUsage(LintRule):
    """Collects the file-wide evidence of low precision into ``ctx.amp_evidence`` (not a rule:
    it reports nothing). Names are resolved through imports, so ``half = 0.5`` does not count."""

    tokens = ("autocast", "GradScaler", "half", "Half", "float16", "fp16", "bf16", "16-")

    def visit_Attribute(self, node: ast.Attribute, ctx: Context) -> None:
        if node.attr in _AMP_ATTRS:
            self._name(ctx.qualname(node), node, ctx)

    def visit_Name(self, node: ast.Name, ctx: Context) -> None:
        if node.id in _AMP_ATTRS:
            self._name(ctx.qualname(node), node, ctx)

    def visit_ImportFrom(self, node: ast.ImportFrom, ctx: Context) -> None:
        if node.module and not node.level:
            for alias in node.names:
                if alias.name in _AMP_ATTRS:
                    self._name(f"{node.module}.{alias.name}", node, ctx)

    @staticmethod
    def _name(name: str | None, node: ast.AST, ctx: Context) -> None:
        if name in _LOW_DTYPE_NAMES:
            ctx.note_amp(_LOW_DTYPE_NAMES[name], name, node)
        elif name in AUTOCAST_NAMES:
            parent = ctx.parent(node)
            if not (isinstance(parent, ast.Call) and parent.func is node):  # calls say their dtype: visit_Call
                ctx.note_amp("bfloat16" if AUTOCAST_NAMES[name] == "cpu" else "float16", name, node)
        elif name in GRADSCALER_NAMES:  # loss scaling exists for float16
            ctx.note_amp("float16", name, node)

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _LOW_CAST_METHODS and not node.args and not node.keywords:
            if ctx.qualname(func) is None:  # x.half(), not a module-level function
                ctx.note_amp(_LOW_CAST_METHODS[func.attr], f".{func.attr}()", node)
        elif getattr(func, "attr", getattr(func, "id", None)) == "autocast":
            state = _autocast_state(ctx, node, None)
            if state is not None:
                _note_autocast(ctx, state)

    def visit_Constant(self, node: ast.Constant, ctx: Context) -> None:
        if isinstance(node.value, str) and node.value in _LOW_STRINGS:
            ctx.note_amp(_LOW_STRINGS[node.value], repr(node.value), node)


# ---------------------------------------------------------------------------------------------
# The walker


_SCOPE_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)


class _Walker:
    """Visits a module in statement order, maintaining scopes, bindings and autocast regions."""

    def __init__(self, ctx: Context, rules: list[LintRule], on_error: Callable[[LintRule, BaseException], None]):
        self.ctx = ctx
        self.on_error = on_error
        self.rules = rules
        self.dispatch: dict[type, list[tuple[LintRule, Callable]]] = {}
        self.scope_hooks: list[tuple[LintRule, Callable | None, Callable | None]] = []
        for rule in rules:
            for attr in dir(rule):
                if attr.startswith("visit_"):
                    node_type = getattr(ast, attr[6:], None)
                    if node_type is not None:
                        self.dispatch.setdefault(node_type, []).append((rule, getattr(rule, attr)))
            enter = getattr(rule, "enter_scope", None)
            leave = getattr(rule, "leave_scope", None)
            if enter or leave:
                self.scope_hooks.append((rule, enter, leave))
        self.disabled: set[int] = set()

    # -- hooks -------------------------------------------------------------------------------
    def _call(self, rule: LintRule, fn: Callable, node: ast.AST) -> None:
        if id(rule) in self.disabled:
            return
        try:
            fn(node, self.ctx)
        except Exception as exc:  # a rule bug must never stop the lint
            self.disabled.add(id(rule))
            self.on_error(rule, exc)

    def _scope_hooks(self, node: ast.AST, entering: bool) -> None:
        for rule, enter, leave in self.scope_hooks:
            fn = enter if entering else leave
            if fn is not None:
                self._call(rule, fn, node)

    # -- traversal ---------------------------------------------------------------------------
    def run(self, tree: ast.Module) -> None:
        ctx = self.ctx
        ctx.scope = Scope(tree, None)
        self._predeclare_imports(tree.body)
        self._scope_hooks(tree, True)
        self.visit_body(tree.body, tree)
        self._scope_hooks(tree, False)

    def _predeclare_imports(self, body: list[ast.stmt]) -> None:
        """Module-level imports are visible in every function, wherever they appear."""
        for stmt in body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self.bind_import(stmt)
            elif isinstance(stmt, ast.Try):
                for inner in stmt.body:
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        self.bind_import(inner)
            elif isinstance(stmt, ast.If):
                for inner in stmt.body:
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        self.bind_import(inner)

    def visit_body(self, body: list[ast.stmt], parent: ast.AST) -> None:
        for stmt in body:
            self.visit(stmt, parent)

    def visit(self, node: ast.AST, parent: ast.AST | None) -> None:
        ctx = self.ctx
        if parent is not None:
            ctx.parents[id(node)] = parent
        handlers = self.dispatch.get(type(node))
        if handlers:
            for rule, fn in handlers:
                self._call(rule, fn, node)
        special = _SPECIAL.get(type(node))
        if special is not None:
            special(self, node)
            return
        self.children(node)

    def children(self, node: ast.AST) -> None:
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item, node)
            elif isinstance(value, ast.AST):
                self.visit(value, node)

    # -- statements with scope effects --------------------------------------------------------
    def bind(self, target: ast.AST, value: ast.AST | None, stmt: ast.AST) -> None:
        ctx = self.ctx
        if isinstance(target, (ast.Tuple, ast.List)):
            # `q, k = q.float(), k.float()`: each name gets its own value when the lengths match
            values = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts) else None
            for i, elt in enumerate(target.elts):
                starred = isinstance(elt, ast.Starred) or (values is not None and isinstance(values[i], ast.Starred))
                self.bind(elt.value if isinstance(elt, ast.Starred) else elt, None if values is None or starred else values[i], stmt)
            return
        key = target_key(target)
        if key is None:
            return
        scope = ctx.scope
        if key.startswith("self."):  # self attributes live on the enclosing class
            while scope.parent is not None and not scope.is_class:
                scope = scope.parent
            if not scope.is_class:
                scope = ctx.scope
        scope.bindings[key] = Binding(key, stmt, value, ctx.scope.autocast, previous=scope.bindings.get(key))
        if value is not None and isinstance(value, ast.Call):
            name = ctx.call_name(value)
            if name in GRADSCALER_NAMES:
                ctx.facts.add("gradscaler")

    def bind_import(self, node: ast.Import | ast.ImportFrom) -> None:
        bindings = self.ctx.scope.bindings
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = Binding(alias.asname, node, None, None, alias.name)
                else:
                    top = alias.name.split(".")[0]
                    bindings[top] = Binding(top, node, None, None, top)
        elif node.module and not node.level:
            for alias in node.names:
                if alias.name == "*":
                    continue
                local = alias.asname or alias.name
                bindings[local] = Binding(local, node, None, None, f"{node.module}.{alias.name}")

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.bind_import(node)

    def _assign(self, node: ast.Assign) -> None:
        self.visit(node.value, node)
        for target in node.targets:
            self.visit(target, node)
            self.bind(target, node.value, node)

    def _annassign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value, node)
        self.visit(node.target, node)
        if node.value is not None:
            self.bind(node.target, node.value, node)

    def _augassign(self, node: ast.AugAssign) -> None:
        self.visit(node.value, node)
        self.visit(node.target, node)
        key = target_key(node.target)
        if key and self.ctx.scope.autocast is not None and self.ctx.scope.autocast.active:
            self.bind(node.target, node, node)

    def _namedexpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value, node)
        self.bind(node.target, node.value, node)

    def _for(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter, node)
        self.visit(node.target, node)
        self.bind(node.target, None, node)
        self.visit_body(node.body, node)
        self.visit_body(node.orelse, node)

    def _with(self, node: ast.With | ast.AsyncWith) -> None:
        ctx = self.ctx
        saved = ctx.scope.autocast
        for item in node.items:
            self.visit(item.context_expr, node)
            state = autocast_call(ctx, item.context_expr, ctx.scope.autocast)
            if item.optional_vars is not None:
                self.visit(item.optional_vars, node)
                self.bind(item.optional_vars, None, node)
            if state is not None:
                ctx.scope.autocast = state
        self.visit_body(node.body, node)
        ctx.scope.autocast = saved

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        ctx = self.ctx
        for deco in node.decorator_list:
            self.visit(deco, node)
        for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]:
            self.visit(default, node)
        ctx.scope.bindings[node.name] = Binding(node.name, node, None, ctx.scope.autocast)
        outer = ctx.scope
        ctx.scope = Scope(node, outer)
        for deco in node.decorator_list:  # @torch.autocast(...) covers the whole body
            state = autocast_call(ctx, deco, ctx.scope.autocast)
            if state is not None:
                ctx.scope.autocast = state
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None:
                ctx.scope.bindings[arg.arg] = Binding(arg.arg, arg, None, None)
        self._scope_hooks(node, True)
        self.visit_body(node.body, node)
        self._scope_hooks(node, False)
        ctx.scope = outer

    def _class(self, node: ast.ClassDef) -> None:
        ctx = self.ctx
        for deco in node.decorator_list:
            self.visit(deco, node)
        for base in [*node.bases, *node.keywords]:
            self.visit(base, node)
        ctx.scope.bindings[node.name] = Binding(node.name, node, None, None)
        outer = ctx.scope
        ctx.scope = Scope(node, outer)
        self.visit_body(node.body, node)
        ctx.scope = outer

    def _lambda(self, node: ast.Lambda) -> None:
        self.visit(node.body, node)


_SPECIAL: dict[type, Callable[[_Walker, Any], None]] = {
    ast.Import: _Walker._import,
    ast.ImportFrom: _Walker._import,
    ast.Assign: _Walker._assign,
    ast.AnnAssign: _Walker._annassign,
    ast.AugAssign: _Walker._augassign,
    ast.NamedExpr: _Walker._namedexpr,
    ast.For: _Walker._for,
    ast.AsyncFor: _Walker._for,
    ast.With: _Walker._with,
    ast.AsyncWith: _Walker._with,
    ast.FunctionDef: _Walker._function,
    ast.AsyncFunctionDef: _Walker._function,
    ast.ClassDef: _Walker._class,
    ast.Lambda: _Walker._lambda,
}


# ---------------------------------------------------------------------------------------------
# Entry points

AMP000 = Rule(
    code="AMP000",
    name="analysis-error",
    severity=Severity.ERROR,
    message="could not analyse this file: {detail}",
    why="The file could not be parsed or one of the rules failed on it; the other files are still linted.",
    fix="Fix the syntax error, or report the internal error with this file attached.",
)

_NOQA = re.compile(r"#\s*noqa(?::[\s]?(?P<codes>[A-Z][0-9A-Z]*(?:[,\s]+[A-Z][0-9A-Z]*)*))?", re.IGNORECASE)


def noqa_codes(line: str) -> set[str] | None:
    """Codes silenced by a ``# noqa`` comment on ``line``: None if none, {"*"} for bare noqa."""
    match = _NOQA.search(line)
    if not match:
        return None
    codes = match.group("codes")
    if not codes:
        return {"*"}
    return {c.upper() for c in re.split(r"[,\s]+", codes) if c}


def is_suppressed(finding: Finding, lines: list[str]) -> bool:
    line = finding.line
    if line is None or not (1 <= line <= len(lines)):
        return False
    codes = noqa_codes(lines[line - 1])
    return codes is not None and ("*" in codes or any(finding.code.startswith(c) for c in codes))


def analyze(
    tree: ast.Module,
    source: str,
    path: str,
    rules: Iterable[LintRule],
    enabled: set[str],
    lines: list[str] | None = None,
    amp: bool | str = False,
) -> list[Finding]:
    """Run ``rules`` over a parsed module; returns sorted, de-duplicated findings.

    ``amp``: the package trains in low precision (config ``amp = true | "fp16" | "bf16"``), so rules
    that only matter there report errors even in files that do not say so themselves.

    Rule exceptions are turned into a single AMP000 finding; the other rules still run.
    ``noqa`` comments are not applied here (flake8 applies its own; the CLI calls
    :func:`is_suppressed`).
    """
    lines = lines if lines is not None else source.splitlines()
    active = [r for r in rules if any(c in enabled for c in r.codes) and (not r.tokens or any(t in source for t in r.tokens))]
    if not active:
        return []
    ctx = Context(path, source, lines, enabled, amp)
    if any(t in source for t in _AmpUsage.tokens):
        active.append(_AmpUsage())
    errors: list[str] = []

    def on_error(rule: LintRule, exc: BaseException) -> None:
        errors.append(f"internal error in {'/'.join(rule.codes)}: {type(exc).__name__}: {exc}")

    # ast.parse accepts deeper nesting (long generated `a + b + ...` chains) than Python's default
    # recursion limit lets the walker follow; Python-to-Python calls do not grow the C stack.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))
    try:
        _Walker(ctx, active, on_error).run(tree)
    except RecursionError:
        errors.append("the file is nested too deeply to analyse")
    finally:
        sys.setrecursionlimit(limit)
    ctx.resolve_tiered()
    findings = ctx.findings
    if errors:
        findings.append(AMP000.finding(Location(path, 1, 1), detail=errors[0]))
    seen: set[tuple] = set()
    unique = []
    for f in sorted(findings, key=Finding.sort_key):
        key = (f.code, f.line, f.col)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique
