"""The operator commands on PostgreSQL over 100,000 attempts, inserted in one statement:
`audit export` streams them in bounded memory (its peak RSS with 100,000 attempts is
about that with 10,000), `metrics` takes its percentiles in the database, `report` finds
the seeded cluster, `purge` removes them all in batches."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from orchestration.store.database import upgrade_schema
from tests.support.cli_runs import json_of, run_many
from tests.support.peak_memory import measured, peak_mb
from tests.support.services import MANAGE, PYTHON, ROOT, run_manage, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ATTEMPTS = 100_000
PER_EXECUTION = 100
# Attempts begin 10 ms apart from this long ago.
SPACING_MS = 10
# The export's peak resident memory, and how much more 100,000 attempts may take than
# 10,000: a page of rows at a time, not the trail.
PEAK_RSS_MB = 150
GROWTH_MB = 15

EXECUTIONS_SQL = f"""
INSERT INTO troupe_executions (id, team, strategy, spec, status, created_at, started_at,
    finished_at)
SELECT 'bulk-' || lpad(g::text, 8, '0'), 'bulk', 'parallel', '{{}}'::json, 'completed',
    now() - interval '2 days', now() - interval '2 days', now() - interval '2 days'
FROM generate_series(1, {ATTEMPTS // PER_EXECUTION}) AS g
"""

# Every 20th attempt an error whose message varies by a number (one cluster), every 50th
# (shifted by one) a time-out; usage on all, a tool call on every 10th.
ATTEMPTS_SQL = f"""
INSERT INTO troupe_attempts (execution_id, step_id, attempt, agent, task_id, worker,
    started_at, finished_at, duration_ms, outcome, error_type, error_message, usage,
    tool_calls)
SELECT
    'bulk-' || lpad(((g - 1) / {PER_EXECUTION} + 1)::text, 8, '0'),
    's' || ((g - 1) % {PER_EXECUTION}),
    1,
    'agent-' || (g % 3),
    md5(g::text),
    'worker-' || (g % 4) || '@host',
    :base + g * interval '{SPACING_MS} milliseconds',
    :base + g * interval '{SPACING_MS} milliseconds' + (g % 1000) * interval '1 millisecond',
    g % 1000,
    CASE WHEN g % 20 = 0 THEN 'error' WHEN g % 50 = 1 THEN 'timeout' ELSE 'success' END,
    CASE WHEN g % 20 = 0 THEN 'RuntimeError' WHEN g % 50 = 1 THEN 'AttemptTimeout' END,
    CASE WHEN g % 20 = 0 THEN 'item ' || g || ' failed: the upstream service answered 503'
         WHEN g % 50 = 1 THEN 'no answer within 1s' END,
    json_build_object('tokens_in', 100, 'tokens_out', 20, 'cached_tokens', 0,
        'reasoning_tokens', 0, 'cost_usd', 0.0001, 'model', 'model-x',
        'endpoint', 'http://svc-' || (g % 2) || '.internal/v1'),
    CASE WHEN g % 10 = 0 THEN json_build_array(json_build_object('tool', 'lookup',
        'arguments', json_build_object('id', g), 'duration_ms', 3, 'outcome', 'success',
        'error', NULL)) END
FROM generate_series(1, {ATTEMPTS}) AS g
"""


@dataclass
class Bulk:
    env: dict[str, str]
    url: str
    base: datetime


@pytest.fixture(scope="module")
def bulk(postgres: object) -> Iterator[Bulk]:
    database = f"troupe_test_{os.getpid()}_operations"
    url = postgres.create(database)  # type: ignore[attr-defined]
    try:
        upgrade_schema(url)
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as connection:
            base = connection.execute(text("SELECT now() - interval '1 day'")).scalar_one()
            connection.execute(text(EXECUTIONS_SQL))
            connection.execute(text(ATTEMPTS_SQL), {"base": base})
        with engine.connect() as connection:
            connection.execute(text("COMMIT"))
            connection.execute(text("ANALYZE troupe_attempts"))
        engine.dispose()
        yield Bulk(subprocess_env({"TROUPE_DATABASE_URL": url}), url, base)
    finally:
        postgres.drop(database)  # type: ignore[attr-defined]


@dataclass
class Export:
    lines: int
    first: bytes
    last: bytes
    peak_rss_mb: float
    returncode: int


def export(env: dict[str, str], peak_file: Path, *args: str) -> Export:
    """`audit export ARGS`, its output counted as it streams, and its peak resident set
    size as the kernel accounted it (wait4's rusage of that one process)."""
    process = measured(
        [PYTHON, str(MANAGE), "audit", "export", *args],
        peak_file,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    lines, first, last = 0, b"", b""
    with process.stdout as stream:
        for line in stream:
            if not lines:
                first = line
            lines += 1
            last = line
    returncode = process.wait(60)
    return Export(
        lines=lines,
        first=first,
        last=last,
        peak_rss_mb=peak_mb(peak_file),
        returncode=returncode,
    )


def test_audit_export_streams_100k_attempts_in_bounded_memory(bulk: Bulk, tmp_path: Path) -> None:
    until_10k = (bulk.base + timedelta(milliseconds=SPACING_MS * 10_000 + 5)).isoformat()
    small = export(bulk.env, tmp_path / "small", "--until", until_10k)
    large = export(bulk.env, tmp_path / "large")
    print(
        f"\naudit export peak RSS: {small.lines:,} attempts {small.peak_rss_mb:.1f} MB, "
        f"{large.lines:,} attempts {large.peak_rss_mb:.1f} MB"
    )
    assert (small.returncode, large.returncode) == (0, 0)
    assert (small.lines, large.lines) == (10_000, ATTEMPTS)
    assert b'"step": "s0"' in large.first and b'"execution_id": "bulk-00000001"' in large.first
    assert b'"execution_id": "bulk-00001000"' in large.last
    assert large.peak_rss_mb < PEAK_RSS_MB
    assert large.peak_rss_mb - small.peak_rss_mb < GROWTH_MB


def test_metrics_report_and_purge_over_100k_attempts(bulk: Bulk) -> None:
    metrics, report, executions = run_many(
        [
            ["metrics", "--since", "3d", "--json"],
            ["report", "--since", "3d", "--json"],
            ["executions", "--json", "--limit", "3"],
        ],
        bulk.env,
        timeout=120,
    )
    groups = json_of(metrics)
    assert len(groups) == 6  # three agents, two endpoints
    assert sum(group["total"] for group in groups) == ATTEMPTS
    assert sum(group["failed"] for group in groups) == ATTEMPTS // 20 + ATTEMPTS // 50
    assert sum(group["timeouts"] for group in groups) == ATTEMPTS // 50
    for group in groups:
        assert 0 < group["p50_ms"] < group["p95_ms"] < 1000, group
        assert group["cost_usd"] == pytest.approx(group["total"] * 0.0001)

    patterns = {(p["kind"], p["subject"]): p for p in json_of(report)["patterns"]}
    cluster = patterns[
        ("error_cluster", "RuntimeError: item <n> failed: the upstream service answered <n>")
    ]
    assert cluster["evidence"]["count"] == ATTEMPTS // 20

    listed = json_of(executions)
    assert len(listed) == 3 and all(line["steps"] == 0 for line in listed)
    assert listed[0]["tokens_in"] == 100 * PER_EXECUTION

    purge = run_manage(["purge", "--older-than", "1d", "--json"], bulk.env, timeout=180)
    done = json_of(purge)
    assert (done["executions"], done["attempts"]) == (ATTEMPTS // PER_EXECUTION, ATTEMPTS)
    engine = create_engine(bulk.url, poolclass=NullPool)
    with engine.connect() as connection:
        left = connection.execute(text("SELECT count(*) FROM troupe_attempts")).scalar_one()
    engine.dispose()
    assert left == 0
