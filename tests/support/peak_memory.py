"""Run a command and learn its peak resident memory, as the kernel accounted it.

Measured from a small parent process, not from pytest: a child's ``ru_maxrss`` counts
the memory of the process it was forked from until it execs, and pytest grows large
over a whole suite (a 76 MB `manage.py validate` read as 299 MB when forked from it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

# Runs argv[2:] and writes its peak resident set size (KiB) to the file argv[1].
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as peak:
    peak.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(
    command: Sequence[str],
    peak_file: Path,
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` under the measuring parent, in a session of its own (so a
    test can kill both); its peak memory is in ``peak_file`` once it has exited."""
    return subprocess.Popen(
        [sys.executable, "-c", _MEASURE, str(peak_file), *command],
        cwd=cwd,
        env=dict(env),
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def peak_mb(peak_file: Path) -> float:
    return int(peak_file.read_text()) / 1024  # KiB on Linux


def kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the measuring parent and the command it runs."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)
