"""`training-profiler` command line: one entry point, a subcommand per job.

Each product module listed in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its subcommands and sets ``run=<function(args) -> exit code>`` on them. Those modules must import
torch lazily (inside ``run``) so ``training-profiler lint`` works without torch.
Exit codes: 0 clean, 1 findings at or above the fail level / budget exceeded, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__

_COMMAND_MODULES = (
    "training_profiler.linter.cli",
    "training_profiler.runtime.cli",
    "training_profiler.fx_audit.cli",
    "training_profiler.demo",
    "training_profiler.fx_audit.review",
)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


# Helpers shared by the subcommands that load a user's model (audit, compare, precision).



def parse_shape(text: str) -> tuple[int, ...]:
    """``"8,3,224,224"`` (or ``8x3x224x224``) -> ``(8, 3, 224, 224)``."""
    parts = text.replace("x", ",").replace(" ", "").strip(",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input {text!r} is not a shape: write comma-separated sizes, e.g. 8,3,224,224") from None
    if not shape or any(d < 0 for d in shape):
        raise UsageError(f"--input {text!r} is not a shape: sizes must be non-negative integers")
    return shape


def load_factory(spec: str) -> Callable[..., Any]:
    """``pkg.module:factory`` or ``path/to/file.py:factory`` -> the callable."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"model {spec!r} must look like pkg.module:factory or path/to/file.py:factory")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"model file {module_name} does not exist")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module  # so inspect and pickle find the model's classes
            sys.path.insert(0, str(path.resolve().parent))  # the file's sibling modules import
            try:
                module_spec.loader.exec_module(module)
            finally:
                sys.path.pop(0)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # like `python -m`: models of the current project
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no callable {attr!r}: name a function or nn.Module class that builds the model")
    return factory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training-profiler",
        description="Catch the mistakes that silently ruin PyTorch training runs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"training-profiler {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
