"""CI smoke-runs the benchmark suite at tiny sizes: it must run end to end and print the
figures it promises. Figures are not judged here; speed is measured in bench/, not tested."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"benchmark", "troupe", "raw", "unit", "ratio"}

pytestmark = pytest.mark.integration


def json_lines(command: list[str], *, timeout: float) -> list[dict[str, Any]]:
    """Run a benchmark command, which must succeed; the JSON lines it printed."""
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.timeout(240)
def test_quick_benchmarks_print_one_json_line_per_figure(redis_url: str, postgres_url: str) -> None:
    sizes = ["latency=5", "depth=3", "fanout=4", "rejected=3", "embedded_steps=3", "warmup=2"]
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--only",
        "latency,depth,fanout,breaker,embedded",
        "--pairs",
        "3",
    ]
    for size in sizes:
        command += ["--size", size]
    lines = json_lines(command, timeout=230)
    figures = {(line["benchmark"], line.get("figure")) for line in lines}
    assert {("latency", "p50"), ("depth", "seconds"), ("fanout", "seconds")} <= figures, figures
    assert ("breaker", "rejected_dispatch") in figures, figures
    for line in lines:
        assert line.keys() >= REQUIRED, line
        assert line.get("figure") != "error", line
        if line["raw"] is not None and line["troupe"] is not None:
            assert line["troupe"] > 0 and line["raw"] > 0, line


@pytest.mark.timeout(150)
def test_agent_workload_benchmarks_print_their_figures(redis_url: str, postgres_url: str) -> None:
    """The crossed DAG, the I/O fan-out on a threads pool and the map step, tiny."""
    sizes = ["dag_slow=1", "io_width=10", "io_wait=1", "map_items=3", "warmup=1"]
    command = [sys.executable, "-m", "bench", "--quick", "--only", "dag,io_fanout,map"]
    for size in sizes:
        command += ["--size", size]
    lines = json_lines(command, timeout=140)
    by_figure = {(line["benchmark"], line.get("figure")): line for line in lines}
    expected = {
        ("dag", "makespan"),
        ("io_fanout", "seconds"),
        ("io_fanout", "async_seconds"),
        ("io_fanout", "peak_db_connections"),
        ("io_fanout", "peak_rss"),
        ("map", "seconds"),
    }
    assert expected <= by_figure.keys(), by_figure.keys()
    for line in lines:
        assert line.keys() >= REQUIRED, line
        assert line.get("figure") != "error", line
    dag = by_figure[("dag", "makespan")]
    assert set(dag["start_offsets"]) == {"a_slow", "b_fast", "c_fast", "d_slow"}, dag
    assert dag["raw"] is None and dag["troupe"] >= dag["critical_path"], dag
    assert by_figure[("io_fanout", "peak_db_connections")]["troupe"] > 0
    assert by_figure[("map", "seconds")]["raw"] > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_a_fast_delegation_costs_one_read_and_one_write(
    redis_url: str, postgres_url: str, strategy: str
) -> None:
    """The delegation's own database traffic, counted by the profiler: one prepared read
    and one write script per delegation on PostgreSQL (a few more for the first steps,
    which prepare their connection's statements), and no separate COMMIT."""
    command = [sys.executable, "-m", "bench.profile_delegation", "--steps", "40"]
    (figures,) = json_lines([*command, "--strategy", strategy], timeout=110)
    assert figures["steps"] == 40
    assert figures["round_trips_per_delegation"] <= 2.2, figures
    assert figures["commits_per_delegation"] <= 0.1, figures
    assert figures["attempt_outcomes"] == {"success": 40}, figures


@pytest.mark.timeout(120)
def test_a_rejected_dispatch_costs_one_read_and_one_write_and_no_call(
    redis_url: str, postgres_url: str
) -> None:
    command = [sys.executable, "-m", "bench.profile_delegation", "--steps", "40"]
    (figures,) = json_lines([*command, "--breaker-open"], timeout=110)
    assert figures["breaker_open"] is True
    assert figures["attempt_outcomes"] == {"rejected": 40}, figures
    assert figures["round_trips_per_delegation"] <= 2.2, figures
