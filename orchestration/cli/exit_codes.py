"""Exit codes of `manage.py`, documented in the README."""

from typing import Final

COMPLETED: Final = 0
FAILED: Final = 1  # the execution failed or was cancelled (or an internal error)
USAGE: Final = 2  # bad usage, an invalid team file or an invalid TROUPE_* setting
TIMEOUT: Final = 3  # --timeout expired while waiting
UNAVAILABLE: Final = 4  # no worker, broker or database to run on
