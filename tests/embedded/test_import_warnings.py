"""Importing Troupe must not warn: pyproject turns warnings into errors under pytest."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.services import ROOT, subprocess_env

# The same filters as [tool.pytest.ini_options] filterwarnings in pyproject.toml.
CHECK = """
import warnings
warnings.filterwarnings("error")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="kombu.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="celery.*")
import orchestration
import orchestration.cli
import workers.tasks
print("ok")
"""


@pytest.mark.timeout(60)
def test_importing_troupe_raises_no_warning(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=ROOT,
        env=subprocess_env({"TROUPE_STATE_DIR": str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
    assert result.stdout.strip() == "ok"
