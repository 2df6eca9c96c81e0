"""call_with_time_limit, both ways a call runs: in the main thread of a process whose
SIGALRM is free (a prefork pool process), cut off by a timer; in any other thread, in a
helper thread abandoned at its limit. The same promises hold either way: the value or
the agent's own error comes through, a call past its limit or its heartbeat timeout is
cut off near it, a slow call gets its start marker once and lease renewals after it."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from orchestration.errors import AgentError, AttemptTimeout
from orchestration.resilience import alarm_call
from orchestration.resilience.time_limit import (
    CallWatch,
    HeartbeatMonitor,
    call_with_time_limit,
)


class AgentBroke(RuntimeError):
    pass


def _outcome(scenario: Callable[[], Any]) -> tuple[str, Any]:
    """What a scenario did, as plain data that crosses a process boundary."""
    try:
        return "value", scenario()
    except BaseException as exc:
        return "raised", (type(exc).__name__, str(exc), getattr(exc, "seconds", None))


def in_a_pool_process(scenario: Callable[[], Any]) -> tuple[str, Any]:
    """In the main thread of a forked process with SIGALRM free, as in a prefork pool
    process (pytest-timeout owns SIGALRM in this one)."""
    reader, writer = multiprocessing.get_context("fork").Pipe(duplex=False)

    def child() -> None:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        assert alarm_call.usable()
        writer.send(_outcome(scenario))

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    try:
        if not reader.poll(20):
            raise AssertionError("the pool process sent nothing in 20 s")
        return reader.recv()
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()


def in_another_thread(scenario: Callable[[], Any]) -> tuple[str, Any]:
    """In a thread that is not the main thread, as in the embedded worker."""
    found: list[tuple[str, Any]] = []

    def run() -> None:
        assert not alarm_call.usable()
        found.append(_outcome(scenario))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(20)
    assert found, "the thread did not finish in 20 s"
    return found[0]


RUNNERS = {"alarm": in_a_pool_process, "helper": in_another_thread}


def time_the_cut_off(call: Callable[[], Any]) -> tuple[str, float, float] | None:
    """What cut ``call`` off, at what limit, after how long; None if nothing did."""
    started = time.monotonic()
    try:
        call()
    except AttemptTimeout as exc:  # HeartbeatTimeout is one too
        return type(exc).__name__, exc.seconds, time.monotonic() - started
    return None


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Any]], tuple[str, Any]]:
    return RUNNERS[request.param]


def test_returns_the_value(run):
    assert run(lambda: call_with_time_limit(lambda: {"answer": 42}, 0.2)) == (
        "value",
        {"answer": 42},
    )
    assert run(lambda: call_with_time_limit(lambda: None, 0.2)) == ("value", None)


@pytest.mark.parametrize("error", [AgentBroke("bad input"), KeyError("k"), SystemExit(3)])
def test_reraises_the_function_own_exception(run, error):
    def scenario():
        def agent():
            raise error

        try:
            call_with_time_limit(agent, 0.2)
        except BaseException as exc:
            return exc is error
        return False

    assert run(scenario) == ("value", True)


@pytest.mark.parametrize("limit", [0.05, 0.1])
def test_slow_call_is_cut_off_near_the_limit(run, limit):
    def scenario():
        started = time.monotonic()
        try:
            call_with_time_limit(lambda: time.sleep(limit + 0.5), limit)
        except AttemptTimeout as exc:
            assert isinstance(exc, AgentError)
            return time.monotonic() - started, exc.seconds, str(exc)
        return None

    kind, outcome = run(scenario)
    assert kind == "value", outcome
    elapsed, seconds, message = outcome
    assert limit <= elapsed < limit + 0.25  # not the 0.5s the function wanted
    assert seconds == limit
    assert f"time limit of {limit:g}s" in message


def test_call_finishing_inside_the_limit_is_not_cut_off(run):
    def agent():
        time.sleep(0.02)
        return "done"

    assert run(lambda: call_with_time_limit(agent, 0.2)) == ("value", "done")


def test_a_slow_call_is_marked_started_once_then_its_lease_renewed(run):
    def scenario():
        events: list[tuple[str, float]] = []
        started = time.monotonic()
        call_with_time_limit(
            lambda: time.sleep(0.35),
            CallWatch(
                2.0,
                still_running=lambda: events.append(("marker", time.monotonic() - started)),
                still_running_after=0.05,
                renew_lease=lambda details: events.append(("lease", time.monotonic() - started)),
                lease_interval=0.1,
            ),
        )
        return events

    kind, events = run(scenario)
    assert kind == "value"
    names = [name for name, _ in events]
    assert names[0] == "marker" and names.count("marker") == 1
    assert 0.05 <= events[0][1] < 0.2
    assert 2 <= names.count("lease") <= 3  # at ~0.15, ~0.25 (and ~0.35) s


def test_a_fast_call_writes_no_marker(run):
    def scenario():
        events: list[str] = []
        value = call_with_time_limit(
            lambda: "quick",
            CallWatch(
                2.0,
                still_running=lambda: events.append("marker"),
                still_running_after=0.2,
                renew_lease=lambda details: events.append("lease"),
                lease_interval=0.05,
            ),
        )
        time.sleep(0.3)  # past when a marker would have been due
        return value, events

    assert run(scenario) == ("value", ("quick", []))


def test_what_the_marker_raises_ends_the_call(run):
    def refuse():
        raise AgentBroke("another copy holds this attempt")

    def scenario():
        started = time.monotonic()
        try:
            call_with_time_limit(
                lambda: time.sleep(2),
                CallWatch(5.0, still_running=refuse, still_running_after=0.05),
            )
        except AgentBroke as exc:
            return str(exc), time.monotonic() - started
        return None

    kind, outcome = run(scenario)
    assert kind == "value", outcome
    message, elapsed = outcome
    assert message == "another copy holds this attempt"
    assert elapsed < 0.5


def test_a_silent_agent_is_cut_off_at_its_heartbeat_timeout(run):
    def scenario():
        watch = CallWatch(5.0, heartbeat_timeout=0.15, monitor=HeartbeatMonitor())
        return time_the_cut_off(lambda: call_with_time_limit(lambda: time.sleep(2), watch))

    kind, outcome = run(scenario)
    assert kind == "value", outcome
    error, seconds, elapsed = outcome
    assert (error, seconds) == ("HeartbeatTimeout", 0.15)
    assert 0.15 <= elapsed < 0.5


def test_an_agent_that_keeps_beating_outlives_its_heartbeat_timeout(run):
    def scenario():
        monitor = HeartbeatMonitor()

        def agent():
            for _ in range(8):
                time.sleep(0.05)
                monitor.beat({"done": _})
            return "finished"

        return call_with_time_limit(agent, CallWatch(5.0, heartbeat_timeout=0.15, monitor=monitor))

    assert run(scenario) == ("value", "finished")


# --- what differs: a timed-out call in a pool process is stopped, not abandoned ------------


def test_in_a_pool_process_a_timed_out_call_stops_running():
    def scenario():
        reached: list[str] = []

        def agent():
            time.sleep(0.5)
            reached.append("after the sleep")

        with contextlib.suppress(AttemptTimeout):
            call_with_time_limit(agent, 0.1)
        time.sleep(0.6)
        return reached

    assert in_a_pool_process(scenario) == ("value", [])


def test_in_another_thread_a_timed_out_call_runs_on_unobserved():
    def scenario():
        reached = threading.Event()

        def agent():
            time.sleep(0.3)
            reached.set()

        with contextlib.suppress(AttemptTimeout):
            call_with_time_limit(agent, 0.1)
        return reached.wait(2)

    assert in_another_thread(scenario) == ("value", True)


def test_an_agent_that_swallows_the_cut_off_is_still_timed_out():
    def scenario():
        def stubborn():
            caught = 0
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    time.sleep(0.5)
                except BaseException:
                    caught += 1
                    if caught == 2:
                        return "swallowed twice"
            return "slept it out"

        return time_the_cut_off(lambda: call_with_time_limit(stubborn, 0.1))

    kind, outcome = in_a_pool_process(scenario)
    assert kind == "value", outcome
    error, seconds, elapsed = outcome
    assert (error, seconds) == ("AttemptTimeout", 0.1)
    assert elapsed < 0.5  # cut off, cut off again 50 ms later, then it gave up


def test_a_process_whose_sigalrm_is_taken_uses_a_helper_thread():
    def scenario():
        signal.signal(signal.SIGALRM, lambda signum, frame: None)
        usable = alarm_call.usable()
        value = call_with_time_limit(lambda: threading.current_thread().name, 0.5)
        return usable, value

    assert in_a_pool_process(scenario) == ("value", (False, "troupe-agent-call"))


def test_in_a_pool_process_the_call_runs_in_the_main_thread():
    def scenario():
        return call_with_time_limit(lambda: threading.current_thread().name, 0.5)

    assert in_a_pool_process(scenario) == ("value", "MainThread")
