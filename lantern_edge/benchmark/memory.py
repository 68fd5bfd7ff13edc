"""Resident memory of the current process: peak (high-water mark) and current, in MiB.

Each benchmark configuration runs in a worker process of its own, so the peak read at the end
of a worker is that configuration's alone. Standard library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])           # "VmHWM:   123456 kB"
    except OSError:
        pass
    return None


def peak_rss_mib() -> float | None:
    """Peak resident set size of this process so far (Linux VmHWM, else ru_maxrss); None if the
    platform reports neither (Windows)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mib() -> float | None:
    """Resident set size now (Linux VmRSS); None elsewhere."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def flatness(low_mib: float, high_mib: float, tolerance_mib: float) -> dict:
    """Compare peak RSS of a short and a long run: flat when it grew by at most tolerance_mib."""
    growth = high_mib - low_mib
    return dict(growth_mib=growth, growth_ratio=growth / low_mib if low_mib else 0.0,
                flat=growth <= tolerance_mib)
