"""Read ``[tool.training-profiler.<section>]`` from a pyproject.toml (shared by every product)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def find_pyproject(start: str | os.PathLike = ".") -> Path | None:
    """The nearest pyproject.toml in ``start`` or its parents."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_tool_config(section: str, path: str | os.PathLike | None = None) -> tuple[dict[str, Any], Path | None]:
    """The ``[tool.training-profiler.<section>]`` table and the file it came from.

    ``path`` given: that file must exist and parse (ValueError otherwise). Not given: the nearest
    pyproject.toml is used if any; no file or no table gives an empty dict.
    """
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"config file {str(file)!r} does not exist: pass the path of a pyproject.toml")
    else:
        file = find_pyproject()
        if file is None:
            return {}, None
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {str(file)!r} is not valid TOML ({exc}): fix the syntax") from None
    table = data.get("tool", {}).get("training-profiler", {}).get(section, {})
    if not isinstance(table, dict):
        raise ValueError(f"{file}: [tool.training-profiler.{section}] must be a table")
    return table, file
