"""What the user hands us: example inputs and model factories, read the same way by every CLI and API.

One input token for every subcommand and the config file: ``SHAPE[:KIND]``::

    8,3,224,224            float32 (or 8x3x224x224)
    8,1024:int64           a dtype: any of DTYPES (bf16, fp16, fp32 are accepted for the floats)
    8,1024:int1000         int64 token ids drawn from [0, 1000): intN where N is not a dtype width
    batch.pt               a tensor (or tuple/dict of tensors) saved with torch.save

The API's ``example_inputs`` (``audit``, ``simulate_training_step``, ``compare_precision``) is a
tensor, a shape, ``{"shape": [...], "dtype": "int64"}``, a tuple/list of those, or a dict of keyword
inputs (:func:`split_inputs`, :func:`spec_to_tensor`).

Errors: :class:`UsageError` for bad input (exit code 2), :class:`UserCodeError` when the user's own
code raises (exit code 3). torch is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "DTYPES", "InputSpec", "UsageError", "UserCodeError", "guard_user_code", "import_user_module", "load_factory", "load_input",
    "parse_input_spec", "parse_shape", "require_torch", "spec_to_tensor", "split_inputs", "tensors",
]


class UsageError(ValueError):
    """Bad command-line or config input: printed as one line, exit code 2."""


class UserCodeError(RuntimeError):
    """The user's own code (a model file, a factory) raised: printed as one line, exit code 3."""


# --------------------------------------------------------------------------------------------
# input tokens

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}
_SYNTAX = "write SHAPE[:DTYPE] such as 8,3,224,224 or 8,1024:int64, or 8,1024:int1000 for token ids in [0, 1000)"


@dataclass(frozen=True)
class InputSpec:
    """One example input: its shape, dtype and, for integer inputs, the range of its values; or a
    ``.pt`` file saved with ``torch.save``."""

    shape: tuple[int, ...] = ()
    dtype: str = "float32"
    high: int | None = None  # integer values are drawn from [0, high); None: zeros (a valid index)
    path: str | None = None

    def make(self, device: Any = "meta", seed: int = 0) -> Any:
        """A tensor of this spec: empty on ``meta``, else seeded normal floats or integers in range.
        A ``.pt`` file is loaded as saved (the auditor fakes real tensors itself)."""
        import torch

        if self.path is not None:
            return torch.load(self.path, weights_only=True)
        dtype = getattr(torch, self.dtype)
        if str(device) == "meta":
            return torch.empty(self.shape, dtype=dtype, device="meta")
        generator = torch.Generator().manual_seed(seed)
        if dtype.is_floating_point:
            return torch.randn(self.shape, generator=generator, dtype=dtype).to(device)
        if self.high is not None:
            return torch.randint(0, self.high, self.shape, generator=generator, dtype=dtype).to(device)
        return torch.zeros(self.shape, dtype=dtype, device=device)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8,3,224,224"`` (or ``8x3x224x224``) -> ``(8, 3, 224, 224)``; UsageError (a ValueError) otherwise."""
    parts = text.replace("x", ",").replace(" ", "").strip(",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input {text!r} is not a shape: write comma-separated sizes, e.g. 8,3,224,224") from None
    if not shape or any(d < 0 for d in shape):
        raise UsageError(f"--input {text!r} is not a shape: sizes must be non-negative integers")
    return shape


def parse_input_spec(token: str, default_dtype: str = "float32") -> InputSpec:
    """``"8,1024:int1000"`` -> ``InputSpec((8, 1024), "int64", high=1000)``; see the module docstring.
    ``default_dtype`` is the dtype of a token that names none."""
    token = str(token)
    if token.endswith(".pt"):
        if not os.path.isfile(token):
            raise UsageError(f"no input file {token!r}: pass a file written by torch.save, or {_SYNTAX}")
        return InputSpec(path=token)
    shape_text, sep, kind = token.partition(":")
    shape = parse_shape(shape_text)
    kind = (kind if sep else default_dtype).strip().lower()
    kind = _DTYPE_ALIASES.get(kind, kind)
    if kind in DTYPES:
        return InputSpec(shape, kind)
    if kind.startswith("int") and kind[3:].isdigit() and int(kind[3:]) > 0:
        return InputSpec(shape, "int64", high=int(kind[3:]))
    raise UsageError(f"--input {token!r}: the part after ':' must be a dtype ({', '.join(DTYPES)}) or intN: {_SYNTAX}")


def load_input(token: str, device: Any = "meta", default_dtype: str = "float32", seed: int = 0) -> Any:
    """One ``--input`` token as a tensor on ``device`` (a ``.pt`` file as saved)."""
    return parse_input_spec(token, default_dtype).make(device, seed)


# --------------------------------------------------------------------------------------------
# the API's example_inputs


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """Positional inputs (one item or a tuple/list of items) or keyword inputs (a dict name -> item)."""
    import torch

    if isinstance(example_inputs, Mapping) and "shape" not in example_inputs:
        return (), dict(example_inputs)
    if isinstance(example_inputs, (torch.Tensor, Mapping, InputSpec)):
        return (example_inputs,), {}  # a tensor or one {"shape": ..., "dtype": ...}
    if isinstance(example_inputs, (tuple, list, torch.Size)):
        if example_inputs and all(isinstance(d, int) for d in example_inputs):
            return (example_inputs,), {}  # one shape
        return tuple(example_inputs), {}
    raise TypeError(
        f"example_inputs must be a tensor, a shape, a tuple/list of those, or a dict of keyword inputs; "
        f"got {type(example_inputs).__name__}"
    )


def spec_to_tensor(spec: Any, device: Any, dtype_override: Any = None, where: str = "") -> Any:
    """A tensor, a shape (tuple/list of ints, torch.Size), ``{"shape": [...], "dtype": "float32"}`` or
    an :class:`InputSpec` -> an empty tensor of that layout on ``device`` (under FakeTensorMode: a
    fake one). ``dtype_override`` replaces floating dtypes (pure low-precision training)."""
    import torch

    if isinstance(spec, torch.Tensor):
        shape, stride, dtype = tuple(spec.shape), tuple(spec.stride()), spec.dtype
    elif isinstance(spec, InputSpec):
        shape, stride, dtype = spec.shape, None, getattr(torch, spec.dtype)
    elif isinstance(spec, dict) and "shape" in spec:
        shape, stride = tuple(spec["shape"]), None
        dtype = spec.get("dtype", torch.float32)
        dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if not isinstance(dtype, torch.dtype):
            raise ValueError(
                f"input spec {spec!r} has an unknown dtype: use a torch dtype name like 'float32' or 'int64'"
            )
    elif isinstance(spec, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in spec):
        shape, stride, dtype = tuple(spec), None, torch.float32
    else:
        what = f"example input {where} is a {type(spec).__name__}" if where else \
            f"cannot make an example input from {type(spec).__name__} {spec!r}"
        raise TypeError(f"{what}: pass tensors (real, meta or fake), shapes like (8, 3, 224, 224), "
                        "or {'shape': [...], 'dtype': 'int64'}")
    if any(d < 0 for d in shape):
        raise ValueError(f"input shape {list(shape)} has a negative dimension")
    if dtype_override is not None and dtype.is_floating_point:
        dtype, stride = dtype_override, None
    if stride is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty_strided(shape, stride, dtype=dtype, device=device)


def tensors(value: Any) -> list:
    """Every tensor inside nested tuples/lists/dicts (model inputs and outputs), in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in tensors(v)]
    return []


def require_torch(command: str) -> None:
    """UsageError (one line, exit 2) when torch is missing, instead of an ImportError traceback."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(f"{command} needs torch: pip install 'training-profiler[audit]'") from None


# --------------------------------------------------------------------------------------------
# model factories


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the user's module imports, then ``sys.path`` as it was."""
    saved = list(sys.path)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path[:] = saved


def _module_name_for(path: Path) -> str:
    """A name no real module has, so a user's ``copy.py`` or ``torch.py`` shadows nothing."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"_training_profiler_user_{path.stem}_{digest}"


def import_user_module(module_name: str, base_dir: str | os.PathLike | None = None) -> Any:
    """``pkg.module`` or ``path/to/file.py`` (relative to ``base_dir``, default the working
    directory), imported with ``base_dir`` (or the file's folder) on ``sys.path`` only meanwhile."""
    base = Path(base_dir or os.getcwd()).resolve()
    if module_name.endswith(".py"):
        path = Path(module_name)
        path = (path if path.is_absolute() else base / path).resolve()
        if not path.is_file():
            raise UsageError(f"model file {module_name} does not exist")
        name = _module_name_for(path)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # inspect and pickle find the model's classes through sys.modules
        with _on_sys_path(path.parent):  # the file's sibling modules import
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return module
    with _on_sys_path(base):  # like `python -m`: the models of the current project import
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise UsageError(f"cannot import {module_name}: no module named {exc.name!r}; "
                                 f"run from the project's folder or install it") from None
            raise


def load_factory(spec: str, base_dir: str | os.PathLike | None = None) -> Callable[..., Any]:
    """``"pkg.module:factory"`` or ``"path/to/file.py:factory"`` -> the callable.

    Relative paths and modules resolve from ``base_dir`` (default: the working directory; a config
    file's folder for ``audit --config``), which is on ``sys.path`` only while the module imports.
    A module that raises while it imports is a :class:`UserCodeError`.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"model {spec!r} must look like pkg.module:factory or path/to/file.py:factory")
    try:
        module = import_user_module(module_name, base_dir)
    except UsageError:
        raise
    except Exception as exc:
        raise UserCodeError(f"importing {module_name} (for {spec}) raised {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no callable {attr!r}: name a function or nn.Module class that builds the model")
    return guard_user_code(factory, spec)


def guard_user_code(factory: Callable[..., Any], spec: str) -> Callable[..., Any]:
    """``factory`` whose exceptions become one :class:`UserCodeError` naming ``spec`` (the original
    is ``__wrapped__``, which ``inspect.unwrap`` returns)."""

    @functools.wraps(factory)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except (UsageError, UserCodeError):
            raise
        except Exception as exc:
            raise UserCodeError(f"the model factory {spec} raised {type(exc).__name__}: {exc}") from exc

    return call
