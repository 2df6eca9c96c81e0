"""The wheel, as a user gets it: built from the source tree, installed with pip into a
fresh virtual environment, and run as the `troupe` command from a folder outside the
checkout: its migrations (`troupe db upgrade`) and an example team it ships
(`troupe run-team --example code_audit`).

Offline and fast: the environment gets Troupe from the wheel alone, and its dependencies
from this interpreter's site-packages (linked in, without this checkout's own Troupe),
so pip resolves them all as installed instead of downloading them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.services import ROOT, subprocess_env

pytestmark = pytest.mark.timeout(180)

# What the build needs of the source tree: not the tests, benchmarks or local state.
NOT_SHIPPED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".troupe",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "tests",
    "bench",
)


def run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"$ {' '.join(args)}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _link_dependencies(target: Path) -> None:
    """Link every distribution of this interpreter's site-packages into ``target``,
    except Troupe itself (its editable install, its metadata, the .pth hooks)."""
    target.mkdir()
    seen: set[str] = set()
    for key in ("purelib", "platlib"):
        site = Path(sysconfig.get_paths()[key])
        if str(site) in seen or not site.is_dir():
            continue
        seen.add(str(site))
        for entry in site.iterdir():
            name = entry.name
            if name.startswith(("troupe", "__editable__")) or name.endswith(".pth"):
                continue
            if not (target / name).exists():
                (target / name).symlink_to(entry)


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SHIPPED)
    env = subprocess_env()
    env.pop("PYTHONPATH")
    dist = tmp_path / "dist"
    # An absolute path: pip would look a bare name up on the index.
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("troupe-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
            env=env,
        ).strip()
    )
    _link_dependencies(tmp_path / "deps")
    (site / "troupe-test-dependencies.pth").write_text(f"{tmp_path / 'deps'}\n")
    # With its dependencies: pip checks the wheel's requirements against what is there.
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    run([*pip, "install", "--no-index", "-q", str(wheel)], cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = run(
        [str(python), "-c", "import orchestration, examples; print(orchestration.__file__)"],
        cwd=elsewhere,
        env=env,
    )
    assert Path(found.strip()).is_relative_to(site), found

    troupe = str(venv / "bin" / "troupe")
    assert "database schema is current" in run([troupe, "db", "upgrade"], cwd=elsewhere, env=env)
    run([troupe, "db", "check"], cwd=elsewhere, env=env)
    report = json.loads(
        run([troupe, "run-team", "--example", "code_audit", "--json"], cwd=elsewhere, env=env)
    )
    assert report["status"] == "completed", report
    assert report["output"]["files_scanned"] == 5, report
    assert report["output"]["verdict"] == "needs-attention", report
    # The state went where the user runs it, under the default state directory.
    assert (elsewhere / ".troupe" / "troupe.db").is_file()
    usage = run([troupe, "--help"], cwd=elsewhere, env=env)
    assert "Usage: troupe" in usage
    assert os.access(troupe, os.X_OK)


def test_run_team_takes_a_team_file_or_an_example_not_both(tmp_path: Path) -> None:
    env = subprocess_env({"TROUPE_STATE_DIR": str(tmp_path / "state")})
    for args in ([], ["examples/code_audit/team.yaml", "--example", "code_audit"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "run-team", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result
        assert result.stderr.strip() == "error: give TEAM_FILE or --example NAME (one of them)"
