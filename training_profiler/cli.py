"""`training-profiler` command line: one entry point, a subcommand per job.

Each product module listed in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its subcommands and sets ``run=<function(args) -> exit code>`` on them. Those modules must import
torch lazily (inside ``run``) so ``training-profiler lint`` works without torch.
Exit codes: :data:`EXIT_CODES` (0 clean, 1 findings at or above the fail level, 2 usage error,
3 an error in the user's own code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from . import __version__
from .inputs import UsageError, UserCodeError

__all__ = ["EXIT_CODES", "UsageError", "UserCodeError", "build_parser", "main"]

EXIT_CODES = {
    0: "clean: no finding at or above the fail level, every budget met",
    1: "findings at or above --fail-level, a budget exceeded, or a layer over the precision tolerance",
    2: "usage error: a bad option, input, file or model name (one line on stderr)",
    3: "the user's own code raised: a model file or factory (one line on stderr; --debug prints the traceback)",
}

_COMMAND_MODULES = (
    "training_profiler.linter.cli",
    "training_profiler.runtime.cli",
    "training_profiler.runtime.report",
    "training_profiler.fx_audit.cli",
    "training_profiler.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training-profiler",
        description="Catch the mistakes that silently ruin PyTorch training runs.",
        epilog="exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error in the model's code")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command in sub.choices.values():  # `training-profiler audit ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"training-profiler {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except UserCodeError as exc:
        if args.debug:
            traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
        print(f"training-profiler {args.command}: error in your code: {exc}"
              + ("" if args.debug else " (--debug prints the traceback)"), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
