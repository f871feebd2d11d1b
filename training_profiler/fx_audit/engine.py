"""``audit()``: capture the model, run the graph on fake tensors, fill one LayerRecord per node.

How the numbers are measured (nothing is allocated, nothing is a fixed factor):

- The captured graph runs node by node (``torch.fx.Interpreter``) on a fake copy of the model
  inside ``FakeTensorMode`` on CPU, whatever device the model sits on, so meta, fake and real
  CPU models give identical results. A dispatch mode (``_CostMode``) sees every aten op and
  charges its FLOPs (``costs.op_flops``) to the node being executed.
- Backward FLOPs: after the forward, backward runs on the fake outputs. Each node claims the
  autograd nodes (``grad_fn``) it created; a pre-hook on each sets the node being charged, so the
  backward kernels (``convolution_backward``, the two ``mm`` of a Linear, ...) are counted per node.
- Saved-for-backward bytes come from ``saved_tensors_hooks``: each storage autograd keeps is
  charged once, to the node that saved it first; parameters are not activations and are skipped.
- Parameters: a leaf module's parameters (or a ``get_attr`` node's functional parameter) go to the
  first node that uses them; tied weights and parameters sharing a storage are counted once.
- Repeated blocks (``layers.2``, ``layers.3``, ... of a ModuleList/Sequential with the same
  parameter shapes, graph segment and input shapes as ``layers.1``) are costed once and copied:
  LLaMA-7B runs 3 of its 32 blocks. ``audit(..., dedup_blocks=False)`` runs them all (a test checks
  that both agree record for record).
- Data-dependent Python control flow (``if x.sum() > 0``) cannot run on fake tensors: the value is
  assumed to be 0 / False and the assumption is noted in ``report.capture.notes``.

This module imports torch: import it only from torch-using code paths.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable

import torch
import torch.fx
from torch.fx._pytree import tree_flatten_spec
from torch import nn
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from ..inputs import spec_to_tensor, split_inputs
from ..inputs import tensors as _tensors
from .capture import PATHS, capture, data_dependent_output, fake_copy, is_data_dependent, quiet_fake_tensor_logs
from .costs import op_flops
from .records import AuditReport, AuditTotals, LayerRecord

__all__ = ["audit"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast
_PURE_DTYPES = {"pure-bf16": torch.bfloat16, "pure-fp16": torch.float16}  # weights and inputs cast
_BOOKKEEPING = frozenset({"detach", "copy_", "new_empty_strided", "empty_strided", "empty", "alias", "lift_fresh"})
Progress = Callable[[int, int, str], None]  # (done, total, what)


def _storage_key(t: torch.Tensor) -> int:
    return StorageWeakRef(t.untyped_storage()).cdata


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _CostMode(TorchDispatchMode):
    """Charges every aten op to ``self.current`` (a record index) in the current phase."""

    def __init__(self) -> None:
        super().__init__()
        self.current: int | None = None
        self.backward = False
        self.flops = defaultdict(lambda: [0, 0])  # record -> [forward, backward]
        self.uncounted: dict[int | None, Counter] = defaultdict(Counter)
        self.op_calls = 0
        self.calls: Counter = Counter()  # record -> op calls
        self.assumptions: list[str] = []
        self.describe: Callable[[int | None], str] = str

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            # A Python branch on a tensor value: fake tensors have none. Assume 0 and say so.
            self.assumptions.append(f"assumed a data-dependent value is 0 in {self.describe(self.current)}")
            dtype = args[0].dtype
            return False if dtype == torch.bool else (0.0 if dtype.is_floating_point else 0)
        try:
            out = func(*args, **kwargs)
        except DynamicOutputShapeException:
            out = data_dependent_output(func, args, kwargs)
            if out is None:
                raise
            self.assumptions.append(
                f"assumed the largest output of {func.overloadpacket.__name__} in {self.describe(self.current)} "
                "(its size depends on the data: every element kept, every value distinct): the sizes after it are "
                "upper bounds")
        if func.namespace == "aten":
            # views and allocation bookkeeping do not count as ops of the graph (AccumulateGrad's
            # first call in a process copies a gradient, later ones alias it)
            if not (func.is_view or func.overloadpacket.__name__ in _BOOKKEEPING):
                self.op_calls += 1
                self.calls[self.current] += 1
            flops = op_flops(func, args, kwargs, out)
            if flops is None:
                self.uncounted[self.current][str(func.overloadpacket.__name__)] += 1
            elif flops:
                self.flops[self.current][self.backward] += flops
        return out


class _Auditor:
    """One audit: owns the fake copy, the records and the bookkeeping of a run."""

    def __init__(self, model: nn.Module, fake_mode: FakeTensorMode, float_dtype: torch.dtype | None,
                 progress: Progress | None) -> None:
        self.fake_mode = fake_mode
        self.copy, fakes = fake_copy(model, fake_mode, float_dtype)
        self.param_storages = {_storage_key(t) for t in fakes.values()}
        self.progress = progress
        self.records: list[LayerRecord] = []
        self.mode = _CostMode()
        self.mode.describe = self._describe
        self.grad_fn_owner: dict[Any, int] = {}
        self.saved_seen: set[int] = set()
        self.params_seen: set[tuple] = set()  # (storage, offset, shape) of owned parameters/buffers
        self.modules = dict(self.copy.named_modules())
        self.dedup_blocks = True
        self.mirrored: list[tuple[int, int]] = []  # (record of a repeated block, record it copies)
        self.block_copies: dict[str, str] = {}  # path of a repeated block that did not run -> block it copies
        self.backward_ran = False
        self.notes: list[str] = []

    # ---------------------------------------------------------------- bookkeeping helpers
    def _describe(self, index: int | None) -> str:
        if index is None:
            return "the model's top level"
        return _where(self.records[index])

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.param_storages and key not in self.saved_seen and self.mode.current is not None:
            self.saved_seen.add(key)
            self.records[self.mode.current].saved_bytes += t.untyped_storage().nbytes()
        return t

    def _claim(self, outputs: Any, index: int) -> None:
        """Mark the autograd nodes created since the last claim as this record's backward."""

        def enter(*_: Any, index: int = index) -> None:
            self.mode.current = index

        stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
        while stack:
            fn = stack.pop()
            if fn is None or fn in self.grad_fn_owner or type(fn).__name__ == "AccumulateGrad":
                continue
            self.grad_fn_owner[fn] = index
            fn.register_prehook(enter)
            stack.extend(next_fn for next_fn, _ in fn.next_functions)

    def _own_params(self, rec: LayerRecord, tensors: Iterable[tuple[torch.Tensor, bool]]) -> None:
        """Charge parameters/buffers to ``rec`` unless an earlier record already owns their storage."""
        for t, is_param in tensors:
            key = (_storage_key(t), t.storage_offset(), tuple(t.shape))
            if key in self.params_seen:
                continue
            self.params_seen.add(key)
            n = t.numel()
            if is_param:
                rec.params += n
                if t.requires_grad:
                    rec.trainable_params += n
                else:
                    rec.frozen_params += n
            else:
                rec.buffers += n

    def _module_tensors(self, module: nn.Module, recurse: bool) -> list[tuple[torch.Tensor, bool]]:
        return [(p, True) for p in module.parameters(recurse=recurse)] + [
            (b, False) for b in module.buffers(recurse=recurse)]

    def _fill_outputs(self, rec: LayerRecord, out: Any) -> None:
        tensors = _tensors(out)
        rec.output_shapes = [list(t.shape) for t in tensors]
        if tensors:
            rec.output_shape = list(tensors[0].shape)
            rec.output_dtype = _dtype_name(tensors[0].dtype)
        rec.output_bytes = sum(t.numel() * t.element_size() for t in tensors)

    def _fit_error(self, rec: LayerRecord, args: Any, exc: BaseException) -> ValueError:
        if is_data_dependent(exc):
            return _data_dependent_error(_where(rec), exc)
        shapes = [list(t.shape) for t in _tensors(args)]
        first = (str(exc).strip().splitlines() or [""])[0][:240].rstrip(".")
        return ValueError(
            f"example inputs do not fit the model: layer '{rec.name}' ({rec.op}) failed on input shapes "
            f"{shapes}: {type(exc).__name__}: {first}. Pass example inputs with the shapes this layer expects."
        )

    # ---------------------------------------------------------------------- graph runs
    def run_graph(self, gm: torch.fx.GraphModule, args: tuple, kwargs: dict) -> Any:
        auditor = self
        failure: ValueError | None = None
        nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
        # export graphs are aten-level: a parameter belongs to the op that reads it (the Linear's linear)
        aten_graph = any(isinstance(n.target, torch._ops.OpOverload) for n in nodes)
        index_of: dict[torch.fx.Node, int] = {}
        for node in nodes:
            if node.op == "get_attr" or _is_bookkeeping(node):
                continue
            index_of[node] = len(self.records)
            self.records.append(_record_for(node, self.modules, gm))
        mirror, blocks, first_blocks = _repeated_blocks(nodes, self.modules) if self.dedup_blocks else ({}, {}, {})
        values: dict[torch.fx.Node, Any] = {}  # outputs of the last nodes of blocks 0 and 1
        keep = set(first_blocks) | set(first_blocks.values())

        class Runner(torch.fx.Interpreter):
            done = 0

            def run_node(self, node: torch.fx.Node) -> Any:
                nonlocal failure
                if node.op == "get_attr":
                    value = super().run_node(node)
                    if isinstance(value, torch.Tensor) and node.users:
                        consumer = next((index_of[u] for u in node.users if u in index_of), None)
                        if aten_graph and consumer is not None:
                            auditor._own_params(auditor.records[consumer], [(value, isinstance(value, nn.Parameter))])
                        else:
                            auditor._get_attr(node, value)
                    return value
                index = index_of.get(node)
                if node in mirror:  # a repeated block: account its parameters, reuse block 1's output
                    ref = mirror[node]
                    if index is not None:
                        auditor.mirrored.append((index, index_of[ref]))
                        if node.op == "call_module":
                            auditor._own_params(auditor.records[index],
                                                auditor._module_tensors(gm.get_submodule(str(node.target)), True))
                    return values.get(ref)
                previous = auditor.mode.current
                if index is not None:
                    auditor.mode.current = index
                try:
                    out = super().run_node(node)
                except Exception as exc:
                    if failure is None:  # raised after ``run`` returns: fx would append its graph dump
                        rec = auditor.records[index] if index is not None else _record_for(node, auditor.modules, gm)
                        failure = auditor._fit_error(rec, self.fetch_args_kwargs_from_env(node), exc)
                    raise
                if index is None:
                    auditor.mode.current = previous
                    return out
                if node in keep:
                    values[node] = out
                    block0 = first_blocks.get(node)
                    if block0 is not None and _tensor_meta(out) != _tensor_meta(values[block0]):
                        mirror.clear()  # block 1 changes the shape: later blocks see other inputs, run them all
                rec = auditor.records[index]
                auditor._fill_outputs(rec, out)
                auditor._claim(out, index)
                if node.op == "call_module":
                    auditor._own_params(rec, auditor._module_tensors(gm.get_submodule(str(node.target)), True))
                Runner.done += 1
                if auditor.progress is not None:
                    auditor.progress(Runner.done, len(index_of), rec.name)
                return out

        in_spec = getattr(gm, "_in_spec", None)  # export graphs take their inputs flattened
        flat = tree_flatten_spec((args, kwargs), in_spec) if in_spec is not None else list(args)
        try:
            out = Runner(gm).run(*flat)
        except Exception as exc:
            if failure is not None:
                raise failure from exc
            raise
        if self.mirrored:
            self.block_copies = blocks
            first, last = list(blocks)[0], list(blocks)[-1]
            self.notes.append(f"costed {len(blocks)} repeated blocks ({first} to {last}) once each, as "
                              "the block before them: same modules, graph and input shapes")
        return out

    def _get_attr(self, node: torch.fx.Node, value: torch.Tensor) -> None:
        """A functional parameter or buffer read by the graph: its own record, owning its elements."""
        target = str(node.target)
        owner, _, _ = target.rpartition(".")
        module = self.modules.get(owner) if owner else self.copy
        rec = LayerRecord(name=target, node=node.name, op="get_attr", kind="get_attr", module=owner,
                          module_type=type(module).__name__ if module is not None else None)
        is_param = isinstance(value, nn.Parameter)
        self._own_params(rec, [(value, is_param)])
        if rec.params or rec.buffers:
            self._fill_outputs(rec, value)
            self.records.append(rec)

    def run_hooks(self, args: tuple, kwargs: dict) -> Any:
        """No graph: run the fake copy eagerly; ops are charged to the innermost running module."""
        index_of: dict[str, int] = {}
        stack: list[int | None] = []
        handles = []
        inputs_of: dict[int, Any] = {}  # record -> inputs of its latest call, for error messages

        def record_for(path: str, module: nn.Module) -> int:
            if path not in index_of:
                leaf = not any(True for _ in module.children())
                index_of[path] = len(self.records)
                self.records.append(LayerRecord(
                    name=path or "(root)", node=path.replace(".", "_") or "root", op=type(module).__name__,
                    kind="module", module=path, module_type=type(module).__name__))
                self._own_params(self.records[-1], self._module_tensors(module, recurse=leaf))
            return index_of[path]

        def pre(path: str, module: nn.Module) -> Callable:
            def hook(mod: nn.Module, inputs: Any) -> None:
                if self.mode.current is not None:
                    self._claim(inputs, self.mode.current)
                stack.append(self.mode.current)
                self.mode.current = record_for(path, module)
                inputs_of[self.mode.current] = inputs
            return hook

        def post(path: str) -> Callable:
            def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
                index = index_of[path]
                self._fill_outputs(self.records[index], output)
                self._claim(output, index)
                self.mode.current = stack.pop()
            return hook

        for path, module in self.modules.items():
            handles.append(module.register_forward_pre_hook(pre(path, module)))
            handles.append(module.register_forward_hook(post(path)))
        try:
            return self.copy(*args, **kwargs)
        except ValueError:
            raise
        except Exception as exc:
            index = self.mode.current if self.mode.current is not None else record_for("", self.copy)
            raise self._fit_error(self.records[index], inputs_of.get(index, args), exc) from exc
        finally:
            for h in handles:
                h.remove()

    def backward(self, outputs: Any) -> None:
        grads = [t for t in _tensors(outputs) if t.requires_grad and t.is_floating_point()]
        if not grads:
            return
        self.mode.current = None
        self.mode.backward = True
        try:
            torch.autograd.backward(grads, [torch.ones_like(t) for t in grads])
        except Exception as exc:
            if is_data_dependent(exc):
                raise _data_dependent_error(f"the backward of {self._describe(self.mode.current)}", exc) from exc
            raise
        self.backward_ran = True

    def params_without_grad(self) -> dict[str, int] | None:
        """Trainable parameters (name -> elements, tied ones once) that the backward over every
        floating output left without ``.grad``: the parameters DDP would wait for. A parameter
        of a repeated block that was costed as a copy has the verdict of its twin in the block it
        copies (same graph, same relative name). ``None`` when no backward ran."""
        if not self.backward_ran:
            return None
        out = {}
        for name, param in self.copy.named_parameters():
            if not param.requires_grad or param.grad is not None:
                continue
            block = next((b for b in self.block_copies if name.startswith(b + ".")), None)
            if block is not None and self.copy.get_parameter(self.block_copies[block] + name[len(block):]).grad is not None:
                continue
            out[name] = param.numel()
        return out


def _where(rec: LayerRecord) -> str:
    """``layer 'gate' (_Gate)``; a function node also names the module that runs it."""
    where = f"layer '{rec.name}' ({rec.op})"
    if rec.kind != "module":
        where += f" of module '{rec.module or '(root)'}' ({rec.module_type})"
    return where


def _data_dependent_error(where: str, exc: BaseException, also: str = "") -> ValueError:
    """Why the fake run stopped, when an op needs real values: which op, where, what to do."""
    first = (str(exc).strip().splitlines() or [""])[0]
    op = next((w.rstrip(".:,") for w in first.split() if w.startswith("aten.")), type(exc).__name__)
    op = op.rsplit(".", 1)[0] if op.count(".") > 1 else op  # aten.repeat_interleave.Tensor -> aten.repeat_interleave
    what = "a Python value that depends" if "_local_scalar_dense" in op else "a tensor whose size depends"
    return ValueError(
        f"cannot audit on fake tensors: {op} in {where} returns {what} on the input values, which a "
        "fake-tensor audit does not have. The inputs fit the model; leave out the inputs that lead to it (for "
        f"example audit without labels){also}, or audit the submodule that does not use it")


def _tensor_meta(value: Any) -> list[tuple]:
    return [(tuple(t.shape), t.dtype, t.requires_grad) for t in _tensors(value)]


def _node_path(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "get_attr":
        return str(node.target).rpartition(".")[0]
    return _owner(node)[0]


def _param_signature(module: nn.Module) -> list[tuple]:
    return [(name, tuple(t.shape), t.dtype, t.requires_grad)
            for name, t in (*module.named_parameters(), *module.named_buffers())]


def _block_signature(segment: list[torch.fx.Node], prefix: str, previous: torch.fx.Node) -> list[str]:
    """The segment's graph with its own path prefix and node names abstracted away."""
    position = {n: i for i, n in enumerate(segment)}

    def arg(a: torch.fx.Node) -> str:
        if a in position:
            return f"%{position[a]}"
        if a is previous:
            return "%previous_block_output"
        return f"%{a.name}"  # shared input (rotary tables, masks): must be the very same node

    signature = []
    for n in segment:
        target = str(n.target)
        if n.op in ("call_module", "get_attr"):
            target = target[len(prefix):] if target.startswith(prefix) else "?" + target
        args = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: arg(a))
        signature.append(f"{n.op}|{target}|{args}|{_node_path(n)[len(prefix):]}")
    return signature


def _repeated_blocks(nodes: list[torch.fx.Node], modules: dict[str, nn.Module]) -> tuple[dict, dict[str, str], dict]:
    """Blocks 2, 3, ... of a ModuleList/Sequential that repeat block 1 exactly.

    Returns ``{node of a repeated block: node of block 1}``, ``{repeated block path: block 1 path}`` and
    ``{last node of block 1: last node of block 0}`` for the caller's shape check. A block
    qualifies when its modules have the same parameter shapes, its graph segment is the same
    (same ops and targets, fed by the previous block's output and the same shared nodes) and only
    its last node is used outside it. Block 0 and block 1 always run; the caller also checks that
    block 1 maps its input shape to itself, so the whole chain sees the same shapes.
    """
    order = {n: i for i, n in enumerate(nodes)}
    paths = {n: _node_path(n) for n in nodes}
    mirror: dict[torch.fx.Node, torch.fx.Node] = {}
    repeated: dict[str, str] = {}
    first_blocks: dict[torch.fx.Node, torch.fx.Node] = {}  # last node of block 1 -> last node of block 0
    for cpath, container in modules.items():
        children = list(container.named_children()) if isinstance(container, (nn.ModuleList, nn.Sequential)) else []
        if len(children) < 3 or len({type(m) for _, m in children}) != 1:
            continue
        prefixes = [f"{cpath}.{name}" if cpath else name for name, _ in children]
        segments = [[n for n in nodes if paths[n] == p or paths[n].startswith(p + ".")] for p in prefixes]
        if any(not seg for seg in segments) or any(
                order[segments[k][-1]] >= order[segments[k + 1][0]] for k in range(len(segments) - 1)):
            continue  # blocks must be non-empty, contiguous and in order
        contiguous = all(order[seg[-1]] - order[seg[0]] + 1 == len(seg) for seg in segments)
        if not contiguous:
            continue
        ref_sig = _block_signature(segments[1], prefixes[1] + ".", segments[0][-1])
        for k in range(2, len(segments)):
            seg = segments[k]
            inside = set(seg)
            if (_param_signature(children[k][1]) != _param_signature(children[1][1])
                    or _block_signature(seg, prefixes[k] + ".", segments[k - 1][-1]) != ref_sig
                    or any(u not in inside for n in seg[:-1] for u in n.users)):
                break  # stop at the first block that differs: later ones would see other inputs
            mirror.update(zip(seg, segments[1]))
            repeated[prefixes[k]] = prefixes[1]
            first_blocks[segments[1][-1]] = segments[0][-1]
    return mirror, repeated, first_blocks


def _is_bookkeeping(node: torch.fx.Node) -> bool:
    """Nodes that only read metadata (``x.size(1)``, ``getattr(t, 'shape')``) or check export's
    guards: no record."""
    if node.op == "call_method" and node.target in ("size", "dim", "numel", "stride"):
        return True
    if node.op == "call_module" and str(node.target) == "_guards_fn":
        return True
    return node.op == "call_function" and node.target is getattr


def _owner(node: torch.fx.Node) -> tuple[str, str | None]:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "", None
    path, cls = list(stack.values())[-1]
    name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].rstrip("'>")
    return path, name


def _record_for(node: torch.fx.Node, modules: dict[str, nn.Module], gm: torch.fx.GraphModule) -> LayerRecord:
    inputs = [n.name for n in node.all_input_nodes]
    if node.op == "call_module":
        path = str(node.target)
        module = gm.get_submodule(path)
        return LayerRecord(name=path, node=node.name, op=type(module).__name__, kind="module", inputs=inputs,
                           module=path, module_type=type(module).__name__, extra=_module_extra(module))
    path, cls = _owner(node)
    if not path:
        cls = type(modules[""]).__name__  # top-level code of the model itself
    target = node.target
    if node.op == "call_method":
        op = str(target)
    elif isinstance(target, torch._ops.OpOverload):
        op = target.overloadpacket.__name__
    else:
        op = getattr(target, "__name__", str(target))
    return LayerRecord(name=node.name, node=node.name, op=op,
                       kind="method" if node.op == "call_method" else "function",
                       inputs=inputs, module=path, module_type=cls)


def _module_extra(module: nn.Module) -> dict[str, Any]:
    """A few constructor arguments that the rules and the table show (kernel size, features, ...)."""
    keys = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding",
            "groups", "num_embeddings", "embedding_dim", "input_size", "hidden_size", "num_layers", "embed_dim",
            "num_heads", "normalized_shape", "num_features")
    extra = {}
    for key in keys:
        value = getattr(module, key, None)
        if isinstance(value, (int, float, bool, str)) or (isinstance(value, tuple) and all(
                isinstance(v, int) for v in value)):
            extra[key] = list(value) if isinstance(value, tuple) else value
    if "bias" in module._parameters:
        extra["bias"] = module._parameters["bias"] is not None
    return extra


# --------------------------------------------------------------------------------- inputs
def _normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """Split the inputs; shapes and {"shape", "dtype"} specs become meta tensors, other values stay."""
    args, kwargs = split_inputs(example_inputs)

    def spec(value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str)):
            return value
        return spec_to_tensor(value, "meta", where=where)

    return (tuple(spec(v, f"#{i}") for i, v in enumerate(args)),
            {k: spec(v, repr(k)) for k, v in kwargs.items()})


def _with_batch(value: Any, batch_size: int | None) -> Any:
    if batch_size is None or not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return value.new_empty((batch_size, *value.shape[1:]), device="meta")


def _fake_input(value: Any, fake_mode: FakeTensorMode, float_dtype: torch.dtype | None) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    dtype = float_dtype if float_dtype is not None and value.is_floating_point() else value.dtype
    with fake_mode:
        return torch.empty_strided(value.shape, value.stride(), dtype=dtype, device="cpu",
                                   requires_grad=value.requires_grad)


def _source(model: nn.Module) -> dict[str, Any]:
    try:
        cls = type(model)
        return {"file": inspect.getsourcefile(cls), "line": inspect.getsourcelines(cls)[1], "class": cls.__qualname__}
    except (TypeError, OSError):
        return {}


# ---------------------------------------------------------------------------------- audit
def audit(model: nn.Module, example_inputs: Any, optimizer: str = "adam", amp: str | None = None,
          batch_size: int | None = None, memory: bool = True, *, memory_budget: int | None = None,
          capture_paths: tuple[str, ...] = PATHS, dedup_blocks: bool = True,
          progress: Progress | None = None, rules: bool = True, target: str | None = None,
          parallel: str | None = None, world_size: int = 1,
          reshard_after_forward: bool = True, fsdp_units: Any = None, checkpoint: Any = None,
          mixed_precision: str | None = None, offload: str | None = None) -> AuditReport:
    """Audit ``model`` on ``example_inputs`` without allocating: per-layer records and totals.

    ``example_inputs``: a tensor, a tuple of tensors (meta tensors cost nothing) or shapes (float32),
    or a dict of keyword inputs. ``batch_size`` replaces the leading dimension of every input.
    ``amp`` (``"bf16"``/``"fp16"``) runs the forward under CPU autocast. ``memory`` simulates a
    training step with ``optimizer`` (see ``memory.py``); ``memory_budget`` (bytes) also solves
    for the largest batch size that fits. ``progress(done, total, layer)`` is called per node.
    ``dedup_blocks`` costs identical repeated blocks (``layers.2`` ... of a ModuleList) once.
    ``rules`` runs the architecture rules (FXA1xx, default thresholds) into ``report.findings``.
    ``target`` ("cpu"/"cuda") is the device the memory simulation predicts; default: a real
    model's own device, "cuda" for a meta or fake model (``report.memory.target`` says which).
    The model is never modified, moved or hooked.

    Distributed plans (``example_inputs`` is then ONE rank's micro-batch): ``parallel`` None,
    "ddp", "zero1", "fsdp", "zero2" or "zero3" on ``world_size`` ranks; ``reshard_after_forward``,
    ``fsdp_units`` (module names/classes; default the repeated blocks) and ``mixed_precision``
    ("bf16"/"fp16" param dtype, fp32 reduce) for FSDP2; ``checkpoint`` None, "blocks" or module
    names/classes; ``offload`` None, "optimizer" or "params". ``report.memory`` is then the largest
    rank's, with ``per_rank`` and ``comm_bytes``; see ``fx_audit.parallel`` and docs/distributed.md.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    if amp not in (None, *_AMP_DTYPES, *_PURE_DTYPES):
        raise ValueError(f"amp={amp!r} is not supported: use None, 'bf16', 'fp16', 'pure-bf16' or 'pure-fp16'")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    plan = dict(parallel=parallel, world_size=world_size, reshard_after_forward=reshard_after_forward,
                fsdp_units=fsdp_units, checkpoint=checkpoint, mixed_precision=mixed_precision, offload=offload)
    if plan != _SINGLE_PROCESS:
        from .parallel.simulate import check_parallel_options

        check_parallel_options(model, **plan)
    args, kwargs = _normalize_inputs(example_inputs)
    args = tuple(_with_batch(a, batch_size) for a in args)
    kwargs = {k: _with_batch(v, batch_size) for k, v in kwargs.items()}

    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    pure = _PURE_DTYPES.get(amp)
    auditor = _Auditor(model, fake_mode, pure, progress)
    auditor.dedup_blocks = dedup_blocks
    fake_args = tuple(_fake_input(a, fake_mode, pure) for a in args)
    fake_kwargs = {k: _fake_input(v, fake_mode, pure) for k, v in kwargs.items()}
    with fake_mode:
        captured = capture(auditor.copy, fake_args, fake_kwargs, paths=capture_paths)
    autocast = torch.autocast("cpu", dtype=_AMP_DTYPES[amp]) if amp in _AMP_DTYPES else contextlib.nullcontext()
    with fake_mode, auditor.mode, quiet_fake_tensor_logs():
        with torch.autograd.graph.saved_tensors_hooks(auditor._pack, lambda t: t), autocast:
            if captured.graph_module is not None:
                outputs = auditor.run_graph(captured.graph_module, fake_args, captured.kwargs)
            else:
                outputs = auditor.run_hooks(fake_args, captured.kwargs)
        auditor.backward(outputs)
    captured.info.notes = sorted(set(auditor.mode.assumptions)) + auditor.notes

    records = auditor.records
    mode = auditor.mode
    for index, ref in auditor.mirrored:  # repeated blocks: the same costs as the block they repeat
        mode.flops[index] = list(mode.flops[ref]) if ref in mode.flops else [0, 0]
        if ref in mode.uncounted:
            mode.uncounted[index] = Counter(mode.uncounted[ref])
        mode.op_calls += mode.calls[ref]
        rec, src = records[index], records[ref]
        rec.output_shape, rec.output_shapes, rec.output_dtype = src.output_shape, list(src.output_shapes), src.output_dtype
        rec.output_bytes, rec.saved_bytes = src.output_bytes, src.saved_bytes
    for index, (fwd, bwd) in auditor.mode.flops.items():
        if index is not None:
            records[index].flops_forward += fwd
            records[index].macs += fwd // 2
            records[index].flops_backward += bwd
    uncounted_total: Counter = Counter()
    for index, counter in auditor.mode.uncounted.items():
        uncounted_total.update(counter)
        if index is not None:
            records[index].uncounted_ops = sorted(counter)
    if captured.graph_module is not None:  # graph order; parameter reads were appended as they ran
        position = {node.name: i for i, node in enumerate(captured.graph_module.graph.nodes)}
        records.sort(key=lambda rec: position[rec.node])

    report = AuditReport(
        model=type(model).__name__,
        inputs=[{"shape": list(a.shape), "dtype": _dtype_name(a.dtype)} for a in (*args, *kwargs.values())
                if isinstance(a, torch.Tensor)],
        capture=captured.info,
        layers=records,
        totals=_totals(model, records, auditor),
        uncounted={op: n / max(auditor.mode.op_calls, 1) for op, n in uncounted_total.most_common()},
        source=_source(model),
        params_without_grad=auditor.params_without_grad(),
    )
    if memory:
        _add_memory(report, model, args, kwargs, optimizer, amp, memory_budget, target, plan)
    if rules:
        from .rules import AuditConfig, check_report

        config = AuditConfig(memory_budget=memory_budget) if memory_budget is not None else None
        report.findings = check_report(report, model, config)
    return report


def _totals(model: nn.Module, records: list[LayerRecord], auditor: _Auditor) -> AuditTotals:
    params = trainable = buffers = 0
    seen: set[tuple] = set()
    for t, is_param in auditor._module_tensors(auditor.copy, recurse=True):
        key = (_storage_key(t), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        if is_param:
            params += t.numel()
            trainable += t.numel() if t.requires_grad else 0
        else:
            buffers += t.numel()
    return AuditTotals(
        params=params,
        trainable_params=trainable,
        frozen_params=params - trainable,
        buffers=buffers,
        unused_params=params - sum(r.params for r in records),
        macs=sum(r.macs for r in records),
        flops_forward=sum(r.flops_forward for r in records),
        flops_backward=sum(r.flops_backward for r in records),
        saved_bytes=sum(r.saved_bytes for r in records),
        uncounted_op_calls=sum(sum(c.values()) for c in auditor.mode.uncounted.values()),
        op_calls=auditor.mode.op_calls,
    )


_SINGLE_PROCESS = dict(parallel=None, world_size=1, reshard_after_forward=True, fsdp_units=None, checkpoint=None,
                       mixed_precision=None, offload=None)


def _add_memory(report: AuditReport, model: nn.Module, args: tuple, kwargs: dict, optimizer: str,
                amp: str | None, memory_budget: int | None, target: str | None = None,
                plan: dict | None = None) -> None:
    try:
        from .batch_solver import batch_of, max_batch_size
        from .memory import simulate_training_step
    except ImportError:
        report.capture.notes.append("memory simulation is not available in this installation")
        return
    if not any(p.requires_grad for p in model.parameters()):
        report.capture.notes.append("no trainable parameters: no training step to simulate")
        return
    inputs = kwargs if kwargs else args
    try:
        if plan and plan != _SINGLE_PROCESS:
            from .parallel.simulate import simulate_parallel_step

            memory = simulate_parallel_step(model, inputs, optimizer=optimizer, amp=amp, target=target, **plan)
        else:
            memory = simulate_training_step(model, inputs, optimizer=optimizer, amp=amp, target=target)
    except ValueError as exc:
        if exc.__cause__ is not None and is_data_dependent(exc.__cause__):
            raise _data_dependent_error("the training-step memory simulation", exc.__cause__,
                                        also=", skip the simulation (memory=False, --no-memory)") from exc
        raise
    report.memory = memory  # also the totals' peak_bytes / peak_phase
    if memory_budget is not None:
        def make_inputs(batch: int) -> tuple:
            return tuple(_with_batch(a, batch) for a in args)

        def rank_peak(inputs: tuple) -> int:
            return simulate_parallel_step(model, inputs, optimizer=optimizer, amp=amp, target=target,
                                          **plan).oom_bytes

        peak_of = rank_peak if plan and plan != _SINGLE_PROCESS else None

        batch = None if kwargs else batch_of(args)  # the step simulated above is that batch's
        report.totals.max_batch_size = max_batch_size(model, make_inputs, memory_budget, optimizer=optimizer,
                                                         amp=amp, target=memory.target, peak_of=peak_of,
                                                         known=None if batch is None else {batch: memory.oom_bytes})
