"""Sizes as the project writes and reads them: bytes in SI units (kB = 10^3), and the
binary ones (KiB = 2^10) where a user writes them."""

import re

from lm.errors import UserError

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'80GB' (10^9), '80GiB' (2^30), '1.5e10' → bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise UserError(f"--device_memory={text!r}: write e.g. 80GB, 16GiB or 1.6e10")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    """Bytes in SI units, as `parse_bytes` reads them: 1.50 GB = 1.5e9 bytes."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
