"""`retry`, `watch` and run-team's live table, as a user runs them (embedded mode).

Agents leave a line per call in a file, so a test counts exactly which steps a retry
called again; a gated step holds an execution running until the test has seen what it
waits for."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.support.cli_runs import json_of, one_error_line, run_many
from tests.support.history_agents import calls_of
from tests.support.services import MANAGE, PYTHON, ROOT, describe, run_manage, subprocess_env

pytestmark = pytest.mark.timeout(120)

UNKNOWN = "00000000-0000-0000-0000-000000000000"
COUNTED = {"kind": "python", "target": "tests.support.history_agents:counted"}
GATED = {"kind": "python", "target": "tests.support.history_agents:gated", "timeout": 40}


def write_team(directory: Path, name: str, steps: list[dict[str, Any]]) -> Path:
    path = directory / f"{name}.yaml"
    data = {
        "name": name,
        "agents": {"counted": COUNTED, "gated": GATED},
        "workflow": {"strategy": "dag", "steps": steps},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@dataclass
class FailedRun:
    env: dict[str, str]
    calls: Path
    broken: Path
    execution_id: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> FailedRun:
    """a → b → c and a → d; b fails while the file `broken` exists."""
    work = tmp_path_factory.mktemp("retry")
    env = subprocess_env({"TROUPE_STATE_DIR": str(work / "state")})
    calls, broken = work / "calls", work / "broken"
    broken.touch()
    team = write_team(
        work,
        "fork",
        [
            {"id": "a", "agent": "counted"},
            {"id": "b", "agent": "counted", "after": ["a"]},
            {"id": "c", "agent": "counted", "after": ["b"]},
            {"id": "d", "agent": "counted", "after": ["a"]},
        ],
    )
    given = {"calls": str(calls), "broken": str(broken), "fail": ["b"]}
    result = run_manage(["run-team", str(team), "--input-json", json.dumps(given), "--json"], env)
    assert result.returncode == 1, describe(result)
    report = json.loads(result.stdout)
    return FailedRun(env, calls, broken, report["execution_id"], report)


def statuses(report: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {step["id"]: (step["status"], step["attempts"]) for step in report["steps"]}


def test_retry_calls_again_only_the_failed_step_and_what_depends_on_it(
    failed_run: FailedRun,
) -> None:
    first = failed_run.report
    assert statuses(first) == {
        "a": ("completed", 1),
        "b": ("failed", 1),
        "c": ("skipped", 0),
        "d": ("completed", 1),
    }
    assert Counter(calls_of(failed_run.calls)) == Counter({"a": 1, "b": 1, "d": 1})
    token_a = first["output"]["d"]["saw"]["a"]

    failed_run.broken.unlink()  # b's cause, fixed
    result = run_manage(["retry", failed_run.execution_id, "--json"], failed_run.env)
    retried = json_of(result)
    assert retried["status"] == "completed" and retried["execution_id"] != failed_run.execution_id
    # b and c ran again, in order; a and d kept their results without a call.
    assert calls_of(failed_run.calls)[3:] == ["b", "c"]
    assert statuses(retried) == {
        "a": ("completed", 0),
        "b": ("completed", 1),
        "c": ("completed", 1),
        "d": ("completed", 0),
    }
    # c saw a's recorded output, and the output of the retry keeps d's.
    assert retried["output"]["c"]["saw"]["a"] == token_a
    assert retried["output"]["d"] == first["output"]["d"]

    logs, again = run_many(
        [
            ["logs", retried["execution_id"]],
            ["retry", retried["execution_id"], "--from-step", "d", "--json"],
        ],
        failed_run.env,
    )
    assert logs.returncode == 0, describe(logs)
    assert f"(a retry of {failed_run.execution_id})" in logs.stdout
    assert f"a  completed without a call: kept from execution {failed_run.execution_id}" in (
        logs.stdout
    )
    assert re.search(r"\bb #1\b", logs.stdout) and not re.search(r"\ba #1\b", logs.stdout)

    # From d, in an execution that completed: only d is called again.
    from_d = json_of(again)
    assert from_d["status"] == "completed"
    assert calls_of(failed_run.calls)[5:] == ["d"]
    assert from_d["output"]["c"] == retried["output"]["c"]
    assert from_d["output"]["d"]["token"] != retried["output"]["d"]["token"]


def test_retry_and_watch_refuse_bad_arguments_in_one_line(failed_run: FailedRun) -> None:
    old = failed_run.execution_id
    cases: list[tuple[list[str], int, tuple[str, ...]]] = [
        (["retry", UNKNOWN], 2, (f"no execution with id {UNKNOWN!r}",)),
        (["retry", old, "--from-step", "zz"], 2, ("no step 'zz' (its steps: a, b, c, d)",)),
        (["retry", old, "--no-wait"], 2, ("--no-wait needs a broker",)),
        (["retry", old, "--max-tokens", "0"], 2, ("--max-tokens",)),
        (["watch", UNKNOWN], 2, (f"no execution with id {UNKNOWN!r}",)),
    ]
    results = run_many([*(args for args, _, _ in cases), ["watch", old, "--json"]], failed_run.env)
    for (_args, code, needles), result in zip(cases, results, strict=False):
        one_error_line(result, code, *needles)
    # Watching an execution that failed: its report at once, and the exit code of status.
    watched = results[-1]
    assert watched.returncode == 1, describe(watched)
    assert json.loads(watched.stdout)["status"] == "failed"


class Lines:
    """A process's output read in a thread, so a test can wait for a line with a
    deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        # The reader owns the stream: it closes it at the end of the output.
        with stream:
            for line in stream:
                self._queue.put(line)
        self._queue.put(None)

    def join(self) -> None:
        """Once the process has ended: wait for the reader to reach the end."""
        self._thread.join(10)

    def wait_for(self, pattern: str, seconds: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        pytest.fail(f"no line matching {pattern!r} within {seconds}s:\n{''.join(self.seen)}")


@pytest.fixture
def gated_team(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Path]]:
    """hold waits for the gate file; done runs after it. Yields (team, env, gate)."""
    team = write_team(
        tmp_path,
        "gated",
        [{"id": "hold", "agent": "gated"}, {"id": "done", "agent": "counted", "after": ["hold"]}],
    )
    env = subprocess_env({"TROUPE_STATE_DIR": str(tmp_path / "state")})
    gate = tmp_path / "gate"
    yield team, env, gate
    gate.touch()  # whatever happened, let a run still waiting go


def test_watch_follows_an_execution_run_elsewhere_until_it_ends(
    gated_team: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    team, env, gate = gated_team
    given = json.dumps({"gate": str(gate), "calls": str(tmp_path / "calls")})
    runner = subprocess.Popen(
        [PYTHON, str(MANAGE), "run-team", str(team), "--input-json", given],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watcher = None
    readers: list[Lines] = []
    try:
        assert runner.stdout is not None
        readers.append(Lines(runner.stdout))
        execution_id = readers[0].wait_for(r"^execution (\S+) of team 'gated'")[1]
        watcher = subprocess.Popen(
            [PYTHON, str(MANAGE), "watch", execution_id],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert watcher.stdout is not None
        lines = Lines(watcher.stdout)
        readers.append(lines)
        # Attached while hold runs: watch shows it running, then its end once let go.
        lines.wait_for(r"running hold \(gated\)")
        gate.touch()
        lines.wait_for(r"completed done \(counted\)")
        lines.wait_for(r"execution completed")
        assert watcher.wait(30) == 0, "".join(lines.seen)
        assert runner.wait(30) == 0
    finally:
        for process in (runner, watcher):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        for reader in readers:
            reader.join()


def test_run_team_on_a_terminal_redraws_a_live_table_in_place(
    gated_team: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    team, env, gate = gated_team
    given = json.dumps({"gate": str(gate), "calls": str(tmp_path / "calls")})
    terminal = {**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "30"}
    leader, follower = pty.openpty()
    runner = subprocess.Popen(
        [PYTHON, str(MANAGE), "run-team", str(team), "--input-json", given],
        cwd=ROOT,
        env=terminal,
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    screen = bytearray()
    done = threading.Event()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process has ended
                break
            if not chunk:
                break
            screen.extend(chunk)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while b"running" not in screen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b"running" in screen, bytes(screen).decode(errors="replace")
        gate.touch()
        assert runner.wait(30) == 0
        assert done.wait(10)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)
        os.close(leader)
    raw = bytes(screen)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", raw).decode(errors="replace")
    for column in ("step", "state", "attempt", "agent", "duration", "cost (USD)"):
        assert column in text
    # In place: the table is erased line by line (cursor up, erase line) and drawn again.
    assert raw.count(b"\x1b[1A\x1b[2K") >= 2, text
    assert re.search(r"hold\s*│\s*running\s*│\s*1", text), text
    assert "execution completed" in text
