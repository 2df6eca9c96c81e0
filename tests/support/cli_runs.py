"""Running several `manage.py` commands and reading what they print.

Commands that do not depend on each other run side by side: each is a process of its
own that spends most of its life importing, so a test that checks ten of them waits for
the slowest few rather than for all ten in a row.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.services import describe, run_manage

PARALLEL = 4


def run_many(
    commands: Sequence[Sequence[str]], env: Mapping[str, str], *, timeout: float = 60
) -> list[subprocess.CompletedProcess[str]]:
    """Run every command (as ``run_manage`` does), a few at a time; results in order."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda args: run_manage(args, env, timeout=timeout), commands))


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout, which must be exactly one JSON value, after an exit of 0."""
    assert result.returncode == 0, describe(result)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not one JSON value ({exc}):\n{describe(result)}")


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit ``code``, nothing on stdout, and one line on stderr naming every needle."""
    assert result.returncode == code, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(result)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert result.stdout == "", describe(result)
    return lines[0]
