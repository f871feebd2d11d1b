"""The monitor's device side: one row of statistics per training step in a small device buffer,
written with device ops only (no host sync), and the host mirrors the rows are copied into.

A row holds the loss and each parameter's gradient norm (an ordinary step writes only these: on a
device the norms in one ``torch.stack`` of the ``_foreach_norm`` results, then the loss; on CPU both
read as Python floats, see :attr:`StatsBuffer.host_scalars`), the GradScaler's scale, then on precision
steps per layer the update-to-weight ratio, per leaf module the fp16/bf16 overflow and underflow
fractions of its output, and for the same two fractions over fp16/bf16 gradients their four
counts (:func:`low_precision_counts`), divided on the host. The host derives the per-layer and
global gradient norms of a whole batch of rows at once (:meth:`StatsBuffer.grad_norms`), and
:meth:`StatsBuffer.record` turns a row that has reached the host into the plain dict of
``TrainingMonitor.history``.

Sharded gradients (FSDP2's DTensor shards): a rank sees only its shard, so the row holds each
parameter's local sum of squares, weighted so that the mean over ranks of the periodic all-reduce is
the global sum of squares (as ``clip_grad_norm_`` reduces DTensor norms over the mesh, without a
collective of its own); the host sums them per layer and takes the square roots. NaN/Inf on
any rank's shard makes the global value NaN/Inf. The gradients' overflow and underflow counts
add up over the ranks' shards in the same all-reduce, so their fractions are those of the whole
gradient, not the mean of the ranks' fractions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FIXED", "LOW_PRECISION", "HostMirror", "StatsBuffer", "low_precision_counts", "low_precision_fractions"]

FIXED = ("loss", "grad_norm", "loss_scale")  # first columns of a row; then per-layer columns
LOW_PRECISION = {torch.float16: 65504.0, torch.bfloat16: 3.3895e38}
_SMALLEST_NORMAL = {torch.float16: 6.1035e-05, torch.bfloat16: 1.1755e-38}
_SAMPLE = 65536  # activation elements inspected per module on a precision step


def low_precision_counts(t: torch.Tensor) -> torch.Tensor:
    """[near max, inspected, subnormal, non-zero] of an fp16/bf16 tensor, on the device, as
    float32 counts that add up over tensors and ranks: the values at or beyond half the format's
    maximum (or Inf), the values inspected, the non-zero values below its smallest normal, and
    the non-zero values."""
    flat = t.detach().reshape(-1)
    if flat.numel() > _SAMPLE:  # strided sample: cheap, and spread over the whole tensor
        flat = flat[:: flat.numel() // _SAMPLE]
    a = flat.abs().float()
    near_max = ((a >= 0.5 * LOW_PRECISION[t.dtype]) | ~torch.isfinite(a)).sum()
    nonzero = a > 0
    subnormal = (nonzero & (a < _SMALLEST_NORMAL[t.dtype])).sum()
    inspected = torch.full_like(near_max, flat.numel())  # a fill kernel: no host-to-device copy
    return torch.stack([near_max, inspected, subnormal, nonzero.sum()]).float()


def low_precision_fractions(t: torch.Tensor) -> torch.Tensor:
    """[overflow, underflow] of an fp16/bf16 tensor, on the device: the fraction of values at or
    beyond half the format's maximum (or Inf), and of non-zero values below its smallest normal."""
    near_max, inspected, subnormal, nonzero = low_precision_counts(t)
    return torch.stack([near_max / inspected, subnormal / nonzero.clamp(min=1)])


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a build without torch.distributed
        return None
    return DTensor


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def _shard_weight(p: torch.Tensor, world: int) -> float:
    """The weight of a parameter's local sum of squares such that the mean over the ``world`` ranks
    is its global sum of squares: ``world`` for a shard, ``world / copies`` for a replicated tensor."""
    placements = getattr(p, "placements", None)
    if placements is None:
        return 1.0  # a plain tensor: the same on every rank
    copies = math.prod(p.device_mesh.size(i) for i, pl in enumerate(placements) if pl.is_replicate())
    return world / copies


def _norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's 2-norm, in one fused op, in fp32 (fp16 norms overflow at 65504; for fp32
    tensors the same values as without a dtype); float64 tensors keep their precision."""
    try:
        return torch._foreach_norm(tensors, 2, dtype=torch.float32)
    except RuntimeError:  # float64: no narrowing to fp32
        return torch._foreach_norm(tensors)


def _layer_name(param_name: str) -> str:
    parts = [p for p in param_name.split(".")[:-1] if p not in ("module", "_orig_mod")]
    return ".".join(parts) or "<root>"


class HostMirror:
    """A device buffer's host mirror: pinned memory + a CUDA event per copy on GPU, the buffer
    itself elsewhere (a CPU "copy" is already done). Host reads go through a numpy view, so they
    never dispatch a torch op."""

    def __init__(self, device_buf: torch.Tensor) -> None:
        self.cuda = device_buf.is_cuda
        if self.cuda:
            self.host = torch.empty(device_buf.shape, dtype=device_buf.dtype, pin_memory=True)
        else:
            self.host = device_buf
        self.view = self.host.numpy()
        self.events: dict[int, Any] = {}

    def copy(self, key: int, src: torch.Tensor, dst_index) -> None:
        if not self.cuda:
            return
        self.host[dst_index].copy_(src, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[key] = event

    def ready(self, key: int) -> bool:
        event = self.events.get(key)
        return event is None or event.query()

    def wait(self, key: int) -> None:
        event = self.events.pop(key, None)
        if event is not None:
            event.synchronize()


class StatsBuffer:
    """The statistics buffer of one model: ``rows`` rows (one per step until the next transfer),
    its column layout, the device-side writers of each statistic, and the host-side reading of the
    rows.

    Columns: the loss, then one per parameter (its gradient norm; sharded, its weighted local sum
    of squares), the GradScaler's scale, then the cadenced statistics: per layer the update ratio,
    per leaf module the activations' overflow and underflow fractions, the gradients' four
    low-precision counts. An ordinary step writes only the loss and the parameters' norms (on a
    device one ``torch.stack`` of the ``_foreach_norm`` results); the per-layer and global norms are derived on
    the host, for a whole batch of rows at once. A column that a step does not write keeps an older
    value: the step's metadata (what it measured) decides what :meth:`record` reads, and a
    precision step clears its cadenced columns first (a value it could not measure stays NaN).

    On a buffer in host memory (CPU) a step's loss and norms are read at once as Python floats
    into ``host_rows`` instead (:attr:`host_scalars`), and written into the buffer when the batch
    is shipped (:meth:`store_host_rows`).

    ``transfer`` mirrors the whole buffer (sent every ``rows`` steps), ``fast`` each row as soon as
    it is written (sent every step, so NaN/Inf is seen at its own step). Row
    ``control`` (after the step rows) holds one 0/1 flag per name of ``flags``: what this rank has
    switched off.
    """

    # CPU: read each step's loss and norms as Python floats (a scalar read there is a memory read:
    # 28 of them cost about half of one 28-tensor ``stack`` and the numpy stores after it, with the
    # caches cold after the backward; bench/monitor_overhead.py --duty-steps); False runs the
    # device path (no scalar read) on CPU too, as the tests of that path do
    host_scalars = True

    def __init__(self, model: nn.Module, rows: int, flags: tuple[str, ...] = ()) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"watch_training: {type(model).__name__} has no trainable parameters to watch")
        self.params = [p for _, p in named]
        self.param_ids = {id(p) for p in self.params}
        self.layers: list[str] = []
        index: list[int] = []
        for name, _ in named:
            layer = _layer_name(name)
            if not self.layers or self.layers[-1] != layer:
                if layer in self.layers:
                    index.append(self.layers.index(layer))
                    continue
                self.layers.append(layer)
            index.append(len(self.layers) - 1)
        # a torch.compile'd model recompiles whenever forward hooks come and go: no activation stats there
        compiled = hasattr(model, "_orig_mod")
        self.act_modules = [] if compiled else [
            (n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
        self.act_layers = [".".join(p for p in n.split(".") if p not in ("module", "_orig_mod")) or "<root>"
                           for n, _ in self.act_modules]
        device = self.params[0].device
        self.device = device
        self._param_layer_list = index
        self._param_layer = torch.tensor(index, device=device)
        # the host derives the per-layer norms: the parameters' columns grouped by layer, in
        # parameter order within each layer; each layer a span of that order
        order = sorted(range(len(index)), key=index.__getitem__)
        self._by_layer = None if order == list(range(len(index))) else order
        grouped = [index[i] for i in order]
        self._layer_spans = [(grouped.index(k), len(grouped) - grouped[::-1].index(k))
                             for k in range(len(self.layers))]
        n_params, n_layers, n_act = len(self.params), len(self.layers), len(self.act_layers)
        self._c_scale = 1 + n_params  # after the loss and the parameters' norms
        self._c_update = self._c_scale + 1  # from here on: the cadenced columns
        self._c_over = self._c_update + n_layers
        self._c_under = self._c_over + n_act
        self._c_grad_precision = self._c_under + n_act  # the gradients' four low_precision_counts
        # one extra row at the end: the control row, in which each rank flags what it switched
        # off (one column per name of ``flags``); it travels with the periodic all-reduce
        width = max(self._c_grad_precision + 4, len(flags))
        self.buf = torch.full((rows + 1, width), math.nan, dtype=torch.float32, device=device)
        self.rows = list(self.buf[:rows].unbind(0))  # views made once: indexing costs a dispatch per step
        self._loss_cells = [row[0] for row in self.rows]
        self._norm_columns = [row[1 : self._c_scale] for row in self.rows]
        self.control = rows
        self.flags = list(flags)
        dtensor = _dtensor_type()
        self.sharded = dtensor is not None and any(isinstance(p, dtensor) for p in self.params)
        if self.sharded:  # FSDP2: rows hold weighted local sums of squares (see the module docstring)
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            self._weight_list = [_shard_weight(p, world) for p in self.params]
            self._weights = torch.tensor(self._weight_list, device=device)
        self.buf[self.control].zero_()
        self.transfer = HostMirror(self.buf)
        # a buffer in host memory (CPU): each step's loss and norms as Python floats, per row
        # [loss, norm per parameter]; they join the buffer when the batch is shipped (store_host_rows)
        self.host_rows = None if self.transfer.cuda or not self.host_scalars else [
            [math.nan] * self._c_scale for _ in range(rows)]
        self.fast = HostMirror(torch.empty((rows, width), device=device))
        self._idx_cache: tuple[tuple[int, ...], Any] | None = None
        self._act_idx: tuple[tuple[int, ...], torch.Tensor] | None = None

    # -- device side: writers (no host sync) -------------------------------------------------------
    def write_loss(self, r: int, out: Any) -> bool:
        """The loss of a step's return value ``out`` (a tensor, a number, a dict's "loss", or the
        first tensor/float of a tuple) into row ``r``; False when there is none. A device copy, no
        sync; on CPU a Python float in ``host_rows`` (a memory read: at the end of a step, the
        caches cold after the optimizer, a fraction of a copy op)."""
        loss = out
        if isinstance(out, dict):
            loss = out.get("loss")
        elif isinstance(out, (tuple, list)):
            loss = next((v for v in out if isinstance(v, (torch.Tensor, float))), None)
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                return False
            if self.host_rows is not None and loss.is_cpu:
                self.host_rows[r][0] = loss.item()
            else:
                loss = loss.detach()
                self._loss_cells[r].copy_(loss.reshape(()) if loss.dim() else loss)
        elif isinstance(loss, (float, int)) and not isinstance(loss, bool):
            if self.host_rows is not None:
                self.host_rows[r][0] = loss
            else:
                self._loss_cells[r].fill_(float(loss))
        else:
            return False
        return True

    def write_scale(self, row: torch.Tensor, scale: torch.Tensor) -> None:
        row[self._c_scale].copy_(scale.reshape(()))

    def clear_cadenced(self, row: torch.Tensor) -> None:
        """A precision step: its cadenced columns read NaN unless it measures them."""
        row[self._c_update :].fill_(math.nan)

    def _subset(self, params: list[torch.Tensor]) -> tuple[torch.Tensor, list[int], tuple[int, ...]]:
        """Positions of the parameters that have a gradient (as a device index and a list), and the
        layers without any."""
        key = tuple(id(p) for p in params)
        if self._idx_cache is None or self._idx_cache[0] != key:
            position = {id(p): i for i, p in enumerate(self.params)}  # by identity: tensors' == is elementwise
            pos = [position[id(p)] for p in params]
            covered = {self._param_layer_list[i] for i in pos}
            missing = tuple(i for i in range(len(self.layers)) if i not in covered)
            self._idx_cache = (key, (torch.tensor(pos, device=self.device), pos, missing))
        return self._idx_cache[1]

    def write_grads(self, r: int, precision: bool) -> tuple[int, ...] | None:
        """The parameters' gradient norms (one fused ``_foreach_norm``) into row ``r``: on CPU read
        as Python floats into ``host_rows``, on a device stacked into the row at once (about half
        the cost of the same stack after the optimizer step, when the caches are colder still); on
        a precision step also the fp16/bf16 counts of low-precision gradients. Returns the layers
        without any gradient, None when no parameter has a gradient."""
        grads = [g for p in self.params if (g := p.grad) is not None]
        params = None
        if len(grads) < len(self.params):  # some parameters without a gradient in this step
            if not grads:
                return None
            params = [p for p in self.params if p.grad is not None]
        if grads[0].requires_grad:  # a backward with create_graph=True: stay out of the graph
            grads = [g.detach() for g in grads]
        if self.sharded:
            grads = [_local(g) for g in grads]
        norms = _norms(grads)
        if precision:
            self._write_grad_precision(self.rows[r], grads)
        if self.host_rows is not None:
            values, missing = [n.item() for n in norms], ()
            if params is not None or self.sharded:
                values, missing = self._placed(values, params)
            self.host_rows[r][1:] = values
            return missing
        if params is None and not self.sharded:  # the common case: stacked straight into the row
            torch.stack(norms, out=self._norm_columns[r])
            return ()
        values = torch.stack(norms)
        if self.sharded:  # weighted sums of squares: the square roots are taken on the host, after the all-reduce
            values.square_().mul_(self._weights if params is None else self._weights[self._subset(params)[0]])
        if params is None:
            self._norm_columns[r].copy_(values)
            return ()
        index, _, missing = self._subset(params)
        # a parameter without a gradient adds nothing; a layer without any is "not measured"
        self._norm_columns[r].zero_().index_copy_(0, index, values)
        return missing

    def _placed(self, values: list[float], params: list[torch.Tensor] | None) -> tuple[list[float], tuple[int, ...]]:
        """``write_grads`` on CPU when some parameters have no gradient (``params``: those with one)
        or the norms are sharded: the row's values in parameter order (0.0 for a parameter without
        a gradient; sharded, weighted sums of squares), and the layers without any gradient."""
        positions, missing = range(len(self.params)), ()
        if params is not None:
            _, positions, missing = self._subset(params)
        if self.sharded:  # weighted sums of squares, as on a device
            values = [v * v * self._weight_list[i] for v, i in zip(values, positions)]
        if params is None:
            return values, ()
        row = [0.0] * len(self.params)  # a parameter without a gradient adds nothing
        for i, v in zip(positions, values):
            row[i] = v
        return row, missing

    def _write_grad_precision(self, row: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """Pure fp16/bf16 training: the four low_precision_counts summed over the low-precision
        gradients (this rank's shards). Counts, not fractions: the periodic all-reduce adds them up
        over the ranks, and :meth:`record` divides them, so sharded fractions are global."""
        low = [g for g in grads if g.dtype in LOW_PRECISION]
        if low:
            c = self._c_grad_precision
            row[c : c + 4].copy_(torch.stack([low_precision_counts(g) for g in low]).sum(0))

    def write_act_stats(self, row: torch.Tensor, act_stats: dict[int, torch.Tensor]) -> None:
        """Per leaf module [overflow, underflow] of its fp16/bf16 output (``act_stats``: module index -> pair)."""
        key = tuple(act_stats)
        if self._act_idx is None or self._act_idx[0] != key:  # a host->device copy: only when it changes
            self._act_idx = (key, torch.tensor(key, device=self.device))
        idx = self._act_idx[1]
        stats = torch.stack(list(act_stats.values()))
        row[self._c_over : self._c_under].index_copy_(0, idx, stats[:, 0])
        row[self._c_under : self._c_grad_precision].index_copy_(0, idx, stats[:, 1])

    def _plain_params(self) -> list[torch.Tensor]:
        """The parameters as plain tensors (sharded: this rank's shards); read them under no_grad."""
        return [_local(p) for p in self.params] if self.sharded else self.params

    def snapshot(self) -> list[torch.Tensor]:
        """The parameters before the optimizer step (for the update ratio)."""
        with torch.no_grad():
            return [p.clone() for p in self._plain_params()]

    def write_update_ratio(self, row: torch.Tensor, before: list[torch.Tensor]) -> None:
        """Per layer |w_after - w_before| / |w_after| (sharded: per shard, averaged over ranks)."""
        with torch.no_grad():
            params = self._plain_params()
            torch._foreach_sub_(before, params)  # in place: the snapshot is not needed after this
            squares = torch.stack(_norms([*before, *params])).square_().view(2, -1)  # [delta, weight] x parameter
            sums = torch.zeros((2, len(self.layers)), dtype=squares.dtype, device=self.device)
            sums.index_add_(1, self._param_layer, squares)
            torch.div(sums[0], sums[1], out=row[self._c_update : self._c_over]).sqrt_()

    def raise_flag(self, name: str) -> None:
        """Mark ``name`` as switched off on this rank (a device write, no sync)."""
        self.buf[self.control, self.flags.index(name)].fill_(1.0)

    # -- host side ---------------------------------------------------------------------------------
    def store_host_rows(self, n: int) -> None:
        """CPU: the first ``n`` rows' loss and norms from ``host_rows`` into the buffer (before a
        batch is shipped)."""
        if self.host_rows is not None:
            self.transfer.view[:n, : self._c_scale] = self.host_rows[:n]

    def move_row(self, n: int) -> None:
        """A step in progress moves from row ``n`` to row 0 (a batch was shipped inside the step)."""
        self.buf[0].copy_(self.buf[n])
        if self.host_rows is not None:
            self.host_rows[0], self.host_rows[n] = self.host_rows[n], self.host_rows[0]

    def raised_flags(self, control: np.ndarray) -> set[str]:
        """The names flagged in a control row that has reached the host (after the all-reduce:
        flagged on at least one rank)."""
        return {name for name, v in zip(self.flags, control) if v > 0}

    def grad_norms(self, block: np.ndarray) -> list[list[float]]:
        """[global norm, per-layer norms] of each row of ``block`` (rows that reached the host), from
        the parameters' columns, in float64: the squares of float32 norms cannot overflow there, so
        a norm is NaN/Inf only when a gradient's is. In plain Python: for a batch of ten rows that
        costs less than numpy's calls, which run with the caches cold at the end of a step. Each
        layer adds its parameters' squares in parameter order."""
        c, order, out = self._c_scale, self._by_layer, []
        for row in block[:, :c].tolist():
            # sharded rows hold the (all-reduced) sums of squares already
            squares = row[1:c] if self.sharded else [v * v for v in row[1:c]]
            if order is not None:
                squares = [squares[i] for i in order]
            layers = [sum(squares[a:b]) for a, b in self._layer_spans]
            out.append([math.sqrt(sum(layers)), *map(math.sqrt, layers)])
        return out

    def nonfinite_norm(self, values: list[float]) -> float | None:
        """The global gradient norm of a row (as Python floats) when it is NaN/Inf, else None: one
        sum in the common case (float32 norms add up to a finite float64 unless one is NaN/Inf)."""
        if math.isfinite(sum(values[1 : self._c_scale])):
            return None
        return self.grad_norms(np.array([values[: self._c_scale]], dtype=np.float32))[0][0]

    def layer_rows(self, norms: list[list[float]], meta: list[tuple]) -> list[list[float]]:
        """The per-layer gradient norms of a batch's :meth:`grad_norms` (the records' values), NaN
        for a layer without gradients in its step (``meta[i][2]``)."""
        layers = [row[1:] for row in norms]
        for row, (_, _, missing, *_) in zip(layers, meta):
            for i in missing or ():  # a layer without gradients is "not measured", not "vanished"
                row[i] = math.nan
        return layers

    def record(self, step: int, has_loss: bool, missing: tuple[int, ...] | None, has_scale: bool,
               precision: bool, values: np.ndarray, global_norm: float, layers: list[float]) -> dict[str, Any]:
        """One row that has reached the host, as a history record (only what was measured):
        ``missing``, the layers without gradients (None: no gradient at all); ``global_norm`` and
        ``layers``, the row's norms (:meth:`grad_norms`, :meth:`layer_rows`)."""
        rec: dict[str, Any] = {"step": step}
        if has_loss:
            rec["loss"] = float(values[0])
        if missing is not None:
            rec["grad_norm"] = global_norm
            rec["layer_grad_norms"] = list(layers)  # the detectors keep ``layers``
        if has_scale:
            rec["loss_scale"] = float(values[self._c_scale])
        if not precision:
            return rec
        update = values[self._c_update : self._c_over]
        if not np.isnan(update).all():
            rec["update_ratio"] = update.tolist()
        over = values[self._c_over : self._c_under]
        under = values[self._c_under : self._c_grad_precision]
        c = self._c_grad_precision
        near_max, inspected, subnormal, nonzero = (float(v) for v in values[c : c + 4])
        if not math.isnan(inspected):  # the mean of the ranks' counts after an all-reduce: same ratios as the sums
            rec["grad_overflow"] = near_max / inspected if inspected else 0.0
            rec["grad_underflow"] = subnormal / nonzero if nonzero else 0.0
        if not np.isnan(over).all():
            rec["activation_overflow"] = over.tolist()
            rec["activation_underflow"] = under.tolist()
        return rec
