"""`training-profiler` command line: one entry point, a subcommand per job.

Each product module listed in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its subcommands and sets ``run=<function(args) -> exit code>`` on them. Those modules must import
torch lazily (inside ``run``) so ``training-profiler lint`` works without torch.
Exit codes: 0 clean, 1 findings at or above the fail level / budget exceeded, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

_COMMAND_MODULES = (
    "training_profiler.linter.cli",
    "training_profiler.fx_audit.cli",
    "training_profiler.demo",
)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


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
