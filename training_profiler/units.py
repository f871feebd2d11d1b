"""Numbers for people: byte sizes and counts, both ways. The bottom layer: imports nothing of the package."""

from __future__ import annotations

import re

__all__ = ["human_bytes", "human_count", "human_quantity", "parse_bytes"]


def human_count(n: float | None) -> str:
    """12_345_678 -> "12.35M"; None -> "-"."""
    if n is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"


def human_quantity(n: float | None, unit: str = "") -> str:
    """11689512 -> "11.69 M": decimal prefixes after a space, as the audit table's columns print them."""
    if n is None:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{int(n)} {unit}".rstrip()


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_bytes(text: str | int | float) -> int:
    """``"24GiB"`` -> 25769803776. KiB/MiB/GiB/TiB and the bare K/M/G/T are powers of 1024,
    KB/MB/GB/TB powers of 1000; a plain number is bytes."""
    if isinstance(text, bool):
        raise TypeError(f"memory size must be a string like '24GiB' or a number of bytes, got {text!r}")
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ValueError(f"memory size must be positive, got {text!r}")
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read memory size {text!r}: write a number with a unit, e.g. '24GiB', '512MiB' or '16GB'"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value)
