"""What the measured rows mean together: speed ratios, greedy-token agreement, memory
flatness, the cost bounds per token, and the machine the numbers came from. No torch."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from .bands import FORCED
from .memory import flatness

# rows whose greedy tokens must equal the ONNX fp32 fixed path's (adaptive rows choose
# differently by design: refined sampling, MC means, THINK)
FIXED_ROWS = ("pytorch-full", "pytorch-kv", "onnx-int8")
REFERENCE_ROW = "onnx-fp32"


def _ok(row: dict) -> bool:
    return not row.get("skipped") and not row.get("error")


def with_ratios(rows: list[dict]) -> list[dict]:
    """Add speedup_vs_full / speedup_vs_kv (tokens/s over the PyTorch rows' at the same token
    count and threads) and tokens_agree (leading greedy tokens equal to onnx-fp32's); drop the
    token ids themselves."""
    index = {(r["configuration"], r["threads"], r["tokens_requested"]): r
             for r in rows if _ok(r)}
    for row in rows:
        if not _ok(row):
            continue
        key = (row["threads"], row["tokens_requested"])
        for base, field in (("pytorch-full", "speedup_vs_full"), ("pytorch-kv", "speedup_vs_kv")):
            other = index.get((base, *key))
            row[field] = row["tok_s"] / other["tok_s"] if other and other["tok_s"] else None
        reference = index.get((REFERENCE_ROW, *key))
        if row["configuration"] in FIXED_ROWS and reference:
            mine, theirs = row["token_ids"], reference["token_ids"]
            compared = min(len(mine), len(theirs))
            agree = next((i for i in range(compared) if mine[i] != theirs[i]), compared)
            row.update(tokens_compared=compared, tokens_agree=agree)
    for row in rows:
        row.pop("token_ids", None)
    return rows


def memory(rows: list[dict], tolerance_mib: float) -> list[dict]:
    """Peak RSS per configuration at each token count, and whether it stays flat from the
    fewest to the most new tokens (growth <= tolerance_mib)."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if _ok(row) and row.get("peak_rss_mib"):
            groups.setdefault((row["configuration"], row["threads"]), []).append(row)
    for (name, threads), group in groups.items():
        group.sort(key=lambda r: r["tokens_requested"])
        # ONNX rows: the peak of a stream() that keeps no trace (the runtime's own memory);
        # PyTorch rows keep no trace, so their process peak is theirs
        peaks = {r["tokens_requested"]: r.get("peak_rss_stream_mib") or r["peak_rss_mib"]
                 for r in group}
        low, high = min(peaks), max(peaks)
        entry = dict(configuration=name, threads=threads,
                     streamed="peak_rss_stream_mib" in group[0],
                     peak_rss_mib={str(n): v for n, v in peaks.items()},
                     tokens_low=low, tokens_high=high)
        if high != low:
            entry.update(flatness(peaks[low], peaks[high], tolerance_mib))
        out.append(entry)
    return out


def busiest(results: dict) -> float | None:
    """The highest 1-minute load average seen at the end of a job (None: not measured)."""
    loads = [r.get("load_average") for section in ("decode", "ttft", "cost_shape")
             for r in results[section]]
    loads = [x for x in loads if x is not None]
    return max(loads) if loads else None


def bounds(rows: list[dict]) -> list[dict]:
    """Per precision and thread count: the cheapest and the costliest band per token (mean us
    per token with every token forced into it), the worst single token seen, and the fixed and
    adaptive-default paths for comparison."""
    out = []
    for row in rows:
        if not _ok(row):
            continue
        modes = row["modes"]
        cost = {band: modes[band]["us_mean"] for band in FORCED}
        lower, upper = min(cost, key=cost.get), max(cost, key=cost.get)
        out.append(dict(
            precision=row["precision"], threads=row["threads"],
            lower_band=lower, lower_us=cost[lower], upper_band=upper, upper_us=cost[upper],
            upper_over_lower=cost[upper] / cost[lower] if cost[lower] else None,
            worst_token_us=max(modes[band]["us_max"] for band in FORCED),
            fixed_us=modes["fixed"]["us_mean"], adaptive_us=modes["adaptive"]["us_mean"],
            extra_over_cheap_us={band: cost[band] - cost["confident"] for band in FORCED}))
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine(torch_version: str | None, load_before: list[float] | None) -> dict:
    import numpy
    import onnxruntime
    return dict(cpu=_cpu_model(), cpus=os.cpu_count(), platform=platform.platform(),
                python=sys.version.split()[0], numpy=numpy.__version__,
                onnxruntime=onnxruntime.__version__, torch=torch_version,
                load_average_before=load_before, load_average_after=load_average())
