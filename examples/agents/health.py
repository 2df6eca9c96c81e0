"""Health probes for the example agents, run by the beat heartbeat.

A probe returns None or True when the agent can work, False (or raises) when it cannot.
The scanners read files, so they are healthy while the working directory is readable.
"""

from __future__ import annotations

import os


def always_up() -> bool:
    return True


def workdir_readable() -> bool:
    return os.access(os.getcwd(), os.R_OK | os.X_OK)
