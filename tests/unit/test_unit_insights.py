"""Failure patterns found in seeded histories: each pattern when its evidence is there, and
none when it is not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestration.insights import (
    BreakerChange,
    CallStats,
    Failure,
    Thresholds,
    find_patterns,
    normalise,
    signature,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def failure(n: int, **fields: Any) -> Failure:
    values: dict[str, Any] = {
        "at": T0 + timedelta(seconds=n),
        "execution_id": f"exec-{n}",
        "team": "shop",
        "step_id": "fetch",
        "agent": "fetcher",
        "attempt": 1,
        "outcome": "error",
        "error_type": "RuntimeError",
        "error_message": f"boom {n}",
        "duration_ms": 10,
    }
    values.update(fields)
    return Failure(**values)


def kinds(patterns: list[Any]) -> list[tuple[str, str]]:
    return [(p.kind, p.subject) for p in patterns]


@pytest.mark.parametrize(
    ("message", "normalised"),
    [
        ("order 1234 failed after 3.5s", "order <n> failed after <n>s"),
        ("no user 'alice' in \"prod\"", "no user <str> in <str>"),
        (
            "request 0b7e9c2a-1f4d-4c3b-9a8e-2d6f1e0c5b7a timed out",
            "request <id> timed out",
        ),
        ("object deadbeef1234 gone", "object <id> gone"),
        ("  many\n  spaces  ", "many spaces"),
        (None, ""),
    ],
)
def test_normalise_replaces_what_varies(message: str | None, normalised: str) -> None:
    assert normalise(message) == normalised


def test_messages_that_differ_only_in_ids_share_a_signature() -> None:
    first = signature("HTTPError", "GET /items/17 returned 503 (request 'a1')")
    second = signature("HTTPError", "GET /items/942 returned 503 (request 'zz9')")
    assert first == second == "HTTPError: GET /items/<n> returned <n> (request <str>)"
    assert signature("ValueError", "GET /items/17 returned 503") != first


def test_errors_cluster_by_signature_across_steps_and_executions() -> None:
    failures = [
        *(failure(n, step_id=f"fetch[{n}]", error_message=f"item {n} not found") for n in range(4)),
        failure(10, step_id="pay", agent="payer", error_message="card 4242 declined", attempt=2),
        failure(11, error_type="KeyError", error_message="'sku'"),
    ]
    patterns = find_patterns(failures, {}, {}, [])
    assert kinds(patterns) == [("error_cluster", "RuntimeError: item <n> not found")]
    evidence = patterns[0].evidence
    assert evidence["count"] == 4
    assert evidence["steps"] == {"shop/fetch": 4}  # map items belong to their map step
    assert evidence["executions"] == 4
    assert evidence["agents"] == {"fetcher": 4}
    assert evidence["example"] == "item 3 not found"
    assert "'fetcher'" in patterns[0].recommendation


def test_retried_failures_advise_failing_fast_and_lost_workers_advise_the_logs() -> None:
    retried = [failure(n, attempt=n + 1, error_message="upstream 500") for n in range(3)]
    lost = [
        failure(n, outcome="lost", error_type="WorkerLost", error_message="gone") for n in range(3)
    ]
    by_subject = {p.subject: p for p in find_patterns([*retried, *lost], {}, {}, [])}
    assert "PermanentAgentError" in by_subject["RuntimeError: upstream <n>"].recommendation
    assert by_subject["RuntimeError: upstream <n>"].evidence["retries_that_failed"] == 2
    assert "workers' logs" in by_subject["WorkerLost: gone"].recommendation


def test_failure_rate_and_duration_rises_against_the_previous_window() -> None:
    current = {
        "flaky": CallStats(calls=20, failures=8, mean_ms=100.0),
        "slow": CallStats(calls=20, failures=0, mean_ms=900.0),
        "steady": CallStats(calls=20, failures=1, mean_ms=100.0),
        "new": CallStats(calls=20, failures=20, mean_ms=100.0),
        "rare": CallStats(calls=2, failures=2, mean_ms=100.0),
    }
    previous = {
        "flaky": CallStats(calls=20, failures=1, mean_ms=100.0),
        "slow": CallStats(calls=20, failures=0, mean_ms=300.0),
        "steady": CallStats(calls=20, failures=0, mean_ms=90.0),
        "rare": CallStats(calls=20, failures=0, mean_ms=100.0),
    }
    patterns = find_patterns([], current, previous, [])
    assert kinds(patterns) == [("failure_rate_rose", "flaky"), ("duration_rose", "slow")]
    rose = patterns[0]
    assert rose.evidence["now"]["failure_rate"] == 0.4
    assert rose.evidence["before"]["failure_rate"] == 0.05
    assert "40%" in rose.summary and "5%" in rose.summary


def test_a_small_slowdown_is_not_a_rise() -> None:
    # Three times slower, but only 20 ms: noise, not a pattern.
    current = {"quick": CallStats(calls=50, failures=0, mean_ms=30.0)}
    previous = {"quick": CallStats(calls=50, failures=0, mean_ms=10.0)}
    assert find_patterns([], current, previous, []) == []


def test_a_breaker_that_opened_three_times_flaps() -> None:
    changes = []
    for n, key in enumerate(["svc"] * 3 + ["calm"]):
        at = T0 + timedelta(minutes=n)
        changes.append(BreakerChange(key, at, "open", f"RuntimeError: down {n}"))
        changes.append(BreakerChange(key, at + timedelta(seconds=30), "half_open"))
        changes.append(BreakerChange(key, at + timedelta(seconds=31), "closed"))
    patterns = find_patterns([], {}, {}, changes)
    assert kinds(patterns) == [("breaker_flapping", "svc")]
    assert patterns[0].evidence["opened"] == 3
    assert patterns[0].evidence["last_reason"] == "RuntimeError: down 2"
    assert "reset_timeout" in patterns[0].recommendation


def test_without_breaker_history_refusals_count_the_openings() -> None:
    def refused(n: int, until: str) -> Failure:
        message = f"circuit open for 'python:pkg:call' until {until}"
        return failure(n, outcome="rejected", error_type="CircuitOpen", error_message=message)

    openings = ["2026-12-01T12:00:30.000+00:00", "2026-12-01T12:05:30.000+00:00"]
    twice = [refused(n, openings[n % 2]) for n in range(6)]
    assert find_patterns(twice, {}, {}, []) == []  # two openings, six refusals
    third = [*twice, refused(7, "2026-12-01T12:09:30.000+00:00")]
    patterns = find_patterns(third, {}, {}, [])
    assert kinds(patterns) == [("breaker_flapping", "python:pkg:call")]
    assert patterns[0].evidence["refused_calls"] == 7
    # Refusals are the breaker's pattern, not an error cluster.
    assert not [p for p in patterns if p.kind == "error_cluster"]


def test_a_step_that_keeps_timing_out() -> None:
    timeouts = [
        failure(
            n,
            outcome="timeout",
            error_type="AgentTimeout",
            error_message=f"no answer within 30s (attempt {n})",
            step_id=f"summarise[{n}]",
            duration_ms=30_000 + n,
        )
        for n in range(3)
    ]
    patterns = find_patterns(timeouts, {}, {}, [])
    assert kinds(patterns) == [("step_timeouts", "shop/summarise")]
    assert patterns[0].evidence["timeouts"] == 3
    assert "about 30.002 s" in patterns[0].recommendation
    assert find_patterns(timeouts[:2], {}, {}, []) == []


def test_a_budget_hit_in_several_executions() -> None:
    refused = [
        failure(n, error_type="BudgetExceeded", error_message=f"{n}00 tokens over budget")
        for n in range(3)
    ]
    patterns = find_patterns(refused, {}, {}, [])
    assert kinds(patterns) == [("budget_exceeded", "shop")]
    assert patterns[0].evidence["executions"] == 3
    assert "max_cost_usd" in patterns[0].recommendation
    one_execution = [failure(n, execution_id="e", error_type="BudgetExceeded") for n in range(3)]
    assert find_patterns(one_execution, {}, {}, []) == []


def test_thresholds_are_the_caller_s_to_set() -> None:
    two = [failure(n, error_message="same") for n in range(2)]
    assert find_patterns(two, {}, {}, []) == []
    assert kinds(find_patterns(two, {}, {}, [], Thresholds(cluster_min=2))) == [
        ("error_cluster", "RuntimeError: same")
    ]


def test_a_quiet_history_has_no_patterns() -> None:
    calm = {"a": CallStats(calls=100, failures=0, mean_ms=50.0)}
    assert find_patterns([], calm, calm, []) == []
