"""Figures: median, min and max of each side over the pairs, the Troupe/raw ratio of each
pair, printed as one JSON line per figure on stdout (progress goes to stderr)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from typing import Any


def rounded(value: float | None, digits: int = 4) -> float | None:
    """Four significant digits: enough for a benchmark, short to read."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _summary(prefix: str, values: Sequence[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {prefix: None, f"{prefix}_min": None, f"{prefix}_max": None}
    return {
        prefix: rounded(statistics.median(present)),
        f"{prefix}_min": rounded(min(present)),
        f"{prefix}_max": rounded(max(present)),
    }


def figure(
    benchmark: str,
    name: str,
    unit: str,
    troupe: Sequence[float | None],
    raw: Sequence[float | None] | None,
    **extra: Any,
) -> dict[str, Any]:
    """One figure: ``troupe`` and ``raw`` are medians over the pairs, ``ratio`` the median
    of the per-pair Troupe/raw ratios (``raw`` and ``ratio`` null where raw Celery has
    nothing to compare)."""
    raw_values: Sequence[float | None] = raw if raw is not None else [None] * len(troupe)
    ratios: list[float | None] = [
        (t / r) if (t is not None and r is not None and r != 0) else None
        for t, r in zip(troupe, raw_values, strict=True)
    ]
    line: dict[str, Any] = {"benchmark": benchmark, "figure": name, "unit": unit}
    line.update(_summary("troupe", troupe))
    line.update(_summary("raw", raw_values))
    line.update(_summary("ratio", ratios))
    line["pairs"] = [
        {"raw": rounded(r), "troupe": rounded(t), "ratio": rounded(x)}
        for t, r, x in zip(troupe, raw_values, ratios, strict=True)
    ]
    for key, value in extra.items():
        line[key] = rounded(value) if isinstance(value, float) else value
    return line


def error_line(benchmark: str, error: str) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "figure": "error",
        "unit": None,
        "troupe": None,
        "raw": None,
        "ratio": None,
        "error": error,
    }


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line, ensure_ascii=False), flush=True)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
