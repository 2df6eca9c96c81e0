"""Endpoints, routing and cluster-wide limits on a real deployment: Redis (broker and
limits), PostgreSQL, two workers of 4 threads on one queue and one prefork worker of
concurrency 1 on another. Agents are local HTTP services (and an OpenAI-protocol
server) that count what reaches them: calls in flight at once, arrival times, which
endpoint. Executions are enqueued by one long-lived client process per queue.

- 3 endpoints, one dead: once its breaker opens no call reaches it, and the other two
  share the calls within 20 %; ``manage.py agents`` lists each endpoint.
- ``max_concurrency: 2`` over 8 worker slots: never more than 2 at the service, and the
  calls take about the time 2 slots give.
- ``requests_per_minute: 120`` over 60 calls: a call every 500 ms within 10 %;
  ``tokens_per_minute`` likewise, counted from the calls' usage.
- A 429's Retry-After pauses its endpoint for every worker.
- Keyed fairness: a customer flooding its executions holds its share of slots, and
  another customer's executions start meanwhile.
- A limited agent's waiting delegation holds no slot: on a worker of concurrency 1,
  other agents' steps run while it waits.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.support.agent_service import AgentService, Recorded, Reply, output
from tests.support.faults import Cluster, Service, breaker_row, query, wait_for, wait_ready
from tests.support.openai_server import OpenAIServer
from tests.support.openai_server import Reply as ModelReply
from tests.support.services import PYTHON, ROOT, describe, run_manage, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FAST_RETRY = {"max_attempts": 4, "initial_delay": 0.01, "max_delay": 0.05, "jitter": "none"}


class Client:
    """A ``tests.support.enqueuer`` process on one queue."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "tests.support.enqueuer"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the enqueuing client exited with {self.process.poll()}"
        reply = json.loads(line)
        assert "error" not in reply, reply["error"]
        return dict(reply)

    def ready(self) -> None:
        assert self._reply().get("ready")

    def enqueue(self, team: Path, inputs: Sequence[Any], gap: float = 0.0) -> list[str]:
        self._stdin().write(json.dumps({"team": str(team), "inputs": list(inputs), "gap": gap}))
        self._stdin().write("\n")
        self._stdin().flush()
        return list(self._reply()["ids"])

    def close(self) -> None:
        self._stdin().close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class Deployment:
    database_url: str
    env: dict[str, str]
    wide: Client  # queue of the two 4-thread workers
    narrow: Client  # queue of the concurrency-1 worker
    workers: list[Service]
    cluster: Cluster

    def wait_done(self, ids: Sequence[str], timeout: float = 60) -> dict[str, str]:
        def finished() -> dict[str, str] | None:
            rows = query(
                self.database_url,
                "SELECT id, status FROM troupe_executions WHERE id IN :ids",
                ids=tuple(ids),
            )
            states = {row["id"]: row["status"] for row in rows}
            done = all(s in ("completed", "failed", "cancelled") for s in states.values())
            return states if done and len(states) == len(ids) else None

        return wait_for(finished, timeout, f"executions {ids} to end", interval=0.1)


@pytest.fixture(scope="module")
def deployment(
    redis_url: str,
    postgres: Any,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    database = f"troupe_test_{os.getpid()}_limits"
    url = postgres.create(database)
    logs = tmp_path_factory.mktemp("limits-logs")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def env(queue: str) -> dict[str, str]:
        return subprocess_env(
            {
                "TROUPE_BROKER_URL": redis_url,
                "TROUPE_DATABASE_URL": url,
                "TROUPE_QUEUE": queue,
                "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("limits-state")),
                # A lease of 3 s, renewed every second.
                "TROUPE_LEASE_INTERVAL": "1",
            }
        )

    wide_env, narrow_env = env(f"troupe-limits-{tag}"), env(f"troupe-limits-narrow-{tag}")
    upgrade = run_manage(["db", "upgrade"], wide_env, timeout=120)
    assert upgrade.returncode == 0, describe(upgrade)
    host = socket.gethostname()
    cluster = Cluster(request.node)

    def worker(node: str, environment: dict[str, str], *options: str) -> Service:
        hostname = f"{node}-{tag}@{host}"
        return Service(
            name=hostname,
            args=["worker", *options, "-n", hostname, "-l", "INFO"],
            env=environment,
            log_path=logs / f"{node}.log",
        )

    workers = [
        worker("wide1", wide_env, "-c", "4", "--pool", "threads"),
        worker("wide2", wide_env, "-c", "4", "--pool", "threads"),
        worker("narrow", narrow_env, "-c", "1"),
    ]
    cluster.start(*workers)
    wide, narrow = Client(wide_env), Client(narrow_env)
    try:
        with cluster.dump_on_failure():
            wait_ready(workers, timeout=60)
            wide.ready()
            narrow.ready()
        yield Deployment(url, wide_env, wide, narrow, workers, cluster)
    finally:
        wide.close()
        narrow.close()
        cluster.stop_all()
        postgres.drop(database)


def write_team(
    directory: Path, agents: dict[str, Any], steps: list[dict[str, Any]], **extra: Any
) -> Path:
    name = f"limits-{uuid.uuid4().hex[:8]}"
    data = {
        "name": name,
        **extra,
        "agents": agents,
        "workflow": {"strategy": "parallel", "steps": steps},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def http_agent(**fields: Any) -> dict[str, Any]:
    return {"kind": "http", "timeout": 10, "retry": FAST_RETRY, **fields}


def steps(agent: str, count: int, prefix: str = "s") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "agent": agent} for i in range(count)]


def arrivals(service: AgentService, path: str = "/agent") -> list[float]:
    return sorted(r.at for r in service.requests(path))


def sent_back_between(log: Path, start: float, end: float) -> int:
    """Deliveries a worker sent back for later between two moments (epoch seconds): the
    "retry" lines of its Celery log, stamped in local time to the millisecond."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        if "] retry: Retry in" in line:
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            count += start <= stamp <= end
    return count


def most_within(times: list[float], window: float) -> int:
    """The most arrivals in any window of ``window`` seconds."""
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most


# --- endpoints and routing ----------------------------------------------------------------


def test_calls_spread_over_the_healthy_endpoints_and_none_reach_an_open_breaker(
    deployment: Deployment, tmp_path: Path
) -> None:
    with AgentService() as a, AgentService() as b, AgentService() as dead:
        urls = [
            a.script("/agent", Reply(json={"output": "a"}, delay=0.05)),
            b.script("/agent", Reply(json={"output": "b"}, delay=0.05)),
            dead.script("/agent", Reply(503, body="down")),
        ]
        agent = http_agent(
            endpoints=[{"url": url} for url in urls],
            breaker={"failure_threshold": 2, "reset_timeout": 600},
        )
        team = write_team(tmp_path, {"svc": agent}, steps("svc", 12))
        with deployment.cluster.dump_on_failure():
            first = deployment.wide.enqueue(team, [None])
            assert set(deployment.wait_done(first).values()) == {"completed"}
            wait_for(
                lambda: (
                    (breaker_row(deployment.database_url, f"http:{urls[2]}") or {}).get("state")
                    == "open"
                ),
                20,
                "the dead endpoint's breaker to open",
            )
            calls_before = {s: len(s.requests("/agent")) for s in (a, b, dead)}
            then = deployment.wide.enqueue(team, [None] * 3)
            assert set(deployment.wait_done(then).values()) == {"completed"}
        got = {s: len(s.requests("/agent")) - calls_before[s] for s in (a, b, dead)}
        assert got[dead] == 0
        assert got[a] + got[b] == 36
        assert min(got[a], got[b]) / max(got[a], got[b]) >= 0.8, got
        listing = run_manage(["agents", "--json"], deployment.env, timeout=60)
        assert listing.returncode == 0, describe(listing)
        rows = {row["identity"]: row for row in json.loads(listing.stdout)}
        assert rows[f"http:{urls[2]}"]["breaker"] == "open"
        for url in urls[:2]:
            row = rows[f"http:{url}"]
            assert row["breaker"] == "closed" and row["in_flight"] == 0
            assert row["recent_latency_ms"] is not None and row["recent_latency_ms"] >= 50


# --- limits -----------------------------------------------------------------------------------


def test_max_concurrency_holds_across_workers_and_keeps_its_slots_busy(
    deployment: Deployment, tmp_path: Path
) -> None:
    with AgentService() as service:
        reply = Reply(json={"output": 1}, delay=0.4)
        capped = http_agent(url=service.script("/capped", reply), max_concurrency=2)
        alone = http_agent(url=service.script("/alone", reply))
        team = write_team(tmp_path, {"capped": capped}, steps("capped", 12))
        # What one slot gives: 6 such calls on the worker of concurrency 1.
        baseline = write_team(tmp_path, {"alone": alone}, steps("alone", 6))
        with deployment.cluster.dump_on_failure():
            one_slot = deployment.narrow.enqueue(baseline, [None])
            assert set(deployment.wait_done(one_slot).values()) == {"completed"}
            assert service.max_in_flight == 1
            ids = deployment.wide.enqueue(team, [None])
            assert set(deployment.wait_done(ids).values()) == {"completed"}
        times = arrivals(service, "/capped")
        assert len(times) == 12
        assert service.max_in_flight == 2
        # 12 calls through 2 slots take as long as 6 through one: a call that frees its
        # slot sends the first waiter for it at once (its worker's message, as a pool
        # takes its next one), so no slot idles until a waiter's own estimate. 10 %
        # for this machine's noise.
        base = arrivals(service, "/alone")
        one_slot_span = base[-1] + 0.4 - base[0]
        span = times[-1] + 0.4 - times[0]
        print(f"max_concurrency: span {span:.3f} s, one slot {one_slot_span:.3f} s")
        assert span <= one_slot_span * 1.1, (span, one_slot_span)


def test_requests_per_minute_spaces_the_calls_across_workers(
    deployment: Deployment, tmp_path: Path
) -> None:
    with AgentService() as service:
        url = service.script("/agent", output(1))
        agent = http_agent(url=url, rate_limit={"requests_per_minute": 120})
        team = write_team(tmp_path, {"paced": agent}, steps("paced", 60))
        with deployment.cluster.dump_on_failure():
            ids = deployment.wide.enqueue(team, [None])
            assert set(deployment.wait_done(ids).values()) == {"completed"}
        times = arrivals(service)
        assert len(times) == 60
        # 120 a minute is a call every 500 ms: 60 calls span 59 intervals (29.5 s). Each
        # call goes at the slot it reserved, late by its message's delivery (tens of
        # ms): lateness shifts single calls, not the rate, so the span is within 10 %,
        # and no 10 s window holds more than the 21 calls an exact schedule puts in one.
        interval = (times[-1] - times[0]) / 59
        assert 0.45 <= interval <= 0.55, interval
        assert most_within(times, 10.0) <= 21


def test_tokens_per_minute_spaces_the_calls_by_their_usage(
    deployment: Deployment, tmp_path: Path
) -> None:
    reply = ModelReply.text("ok", prompt_tokens=100, completion_tokens=100)
    with OpenAIServer(default=reply) as llm:

        def writer(model: str, **limits: Any) -> dict[str, Any]:
            return {
                "kind": "openai",
                "base_url": llm.base_url,
                "model": model,
                "api_key_env": None,
                "max_tokens": 200,
                "timeout": 10,
                "retry": FAST_RETRY,
                **limits,
            }

        # 200 tokens a call (reserved from max_tokens, then settled from the usage
        # the server reports): a call every 200 ms.
        paced = writer("paced-model", rate_limit={"tokens_per_minute": 60_000})
        warm = write_team(tmp_path, {"w": writer("warm-up")}, steps("w", 8))
        team = write_team(tmp_path, {"writer": paced}, steps("writer", 12))
        with deployment.cluster.dump_on_failure():
            # Each worker's first model call loads the client library (about a second
            # here): calls admitted 200 ms apart would reach the server together.
            assert set(deployment.wait_done(deployment.wide.enqueue(warm, [None])).values()) == {
                "completed"
            }
            ids = deployment.wide.enqueue(team, [None])
            assert set(deployment.wait_done(ids).values()) == {"completed"}
        times = sorted(r.received_at for r in llm.requests if r.body["model"] == "paced-model")
        assert len(times) == 12
        interval = (times[-1] - times[0]) / 11
        assert 0.18 <= interval <= 0.22, interval


def test_a_retry_after_pauses_the_endpoint_for_every_worker(
    deployment: Deployment, tmp_path: Path
) -> None:
    pause = 3.0
    first_at: list[float] = []

    def answer(request: Recorded) -> Reply:
        # Busy for `pause` seconds from the first request: every request then gets a
        # 429 with the time that is left.
        first_at[:] = first_at or [request.at]
        left = first_at[0] + pause - request.at
        if left > 0:
            return Reply(429, body="slow down", headers={"Retry-After": f"{left:.2f}"})
        return output("done")

    with AgentService() as service:
        url = service.script("/agent", answer)
        # A limit no call reaches: the agent is counted in Redis, where pauses live.
        agent = http_agent(url=url, max_concurrency=100)
        one = write_team(tmp_path, {"svc": agent}, steps("svc", 1, prefix="first"))
        # More steps than one worker takes at once (4 threads, 4 reserved), so both
        # workers get some and both must keep to the pause.
        many = write_team(tmp_path, {"svc": agent}, steps("svc", 16))
        with deployment.cluster.dump_on_failure():
            ids = deployment.wide.enqueue(one, [None])
            service.wait_for("/agent", 1)
            later = deployment.wide.enqueue(many, [None])
            # Meanwhile they wait, and say why.
            wait_for(
                lambda: query(
                    deployment.database_url,
                    "SELECT reason FROM troupe_steps WHERE execution_id = :id"
                    " AND reason LIKE 'waiting for capacity%Retry-After%'",
                    id=later[0],
                ),
                pause,
                "a step waiting for the paused endpoint",
                interval=0.05,
            )
            states = deployment.wait_done(ids + later)
        assert set(states.values()) == {"completed"}
        start = first_at[0]
        times = arrivals(service)
        # Only the first call (and none of the 16 others) reached the service during
        # the pause; all 17 succeeded after it.
        assert [t for t in times if start < t < start + pause - 0.05] == []
        assert len([t for t in times if t >= start + pause - 0.05]) == 17
        # Both workers took deliveries of the paused steps during the pause and sent
        # them back for later instead of calling: the pause held for each. (Which one
        # makes the calls after it is Celery's: a countdown is held by the worker that
        # received it, and one worker may have received them all.)
        wide = deployment.workers[:2]
        began = start + time.time() - time.monotonic()  # the service's clock, as epoch
        deferred = [sent_back_between(w.log_path, began, began + pause) for w in wide]
        assert all(count > 0 for count in deferred), deferred


def test_keyed_fairness_leaves_room_for_the_other_customer(
    deployment: Deployment, tmp_path: Path
) -> None:
    with AgentService() as service:
        url = service.script("/agent", Reply(json={"output": 1}, delay=0.5))
        team = write_team(
            tmp_path,
            {"svc": http_agent(url=url)},
            steps("svc", 1),
            concurrency={"key": "input.customer", "max": 3},
        )
        with deployment.cluster.dump_on_failure():
            flood = deployment.wide.enqueue(team, [{"customer": "big"}] * 12)
            other = deployment.wide.enqueue(team, [{"customer": "small"}] * 2)
            assert set(deployment.wait_done(flood + other).values()) == {"completed"}
        calls = sorted((r.at, r.json["input"]["customer"]) for r in service.requests("/agent"))
        big = [at for at, customer in calls if customer == "big"]
        small = [at for at, customer in calls if customer == "small"]
        assert len(big) == 12 and len(small) == 2
        # The flooding customer never had more than its 3 executions at the service...
        assert max(sum(1 for t in big if s <= t < s + 0.5) for s in big) <= 3
        # ...so the other's, enqueued after all 12, started within the first rounds
        # of 3 (a round is a 0.5 s call), not behind the flood.
        assert max(small) < big[6], (small, big)


def test_a_waiting_delegation_holds_no_slot_of_a_worker_of_concurrency_one(
    deployment: Deployment, tmp_path: Path
) -> None:
    with AgentService() as service:
        url = service.script("/agent", Reply(json={"output": "long"}, delay=2.0))
        limited = http_agent(url=url, max_concurrency=1)
        holder = write_team(tmp_path, {"limited": limited}, steps("limited", 1, prefix="hold"))
        free = {"kind": "python", "target": "tests.support.agents:noop"}
        mixed = write_team(
            tmp_path,
            {"limited": limited, "free": free},
            [*steps("limited", 1, prefix="wait"), *steps("free", 4, prefix="free")],
        )
        with deployment.cluster.dump_on_failure():
            # The only slot of the limited agent is taken on the other queue's workers.
            held = deployment.wide.enqueue(holder, [None])
            service.wait_for("/agent", 1)
            ids = deployment.narrow.enqueue(mixed, [None])
            wait_for(
                lambda: query(
                    deployment.database_url,
                    "SELECT 1 FROM troupe_steps WHERE execution_id = :id AND step_id = 'wait0'"
                    " AND reason LIKE 'waiting for capacity%'",
                    id=ids[0],
                ),
                10,
                "the limited step to wait",
                interval=0.05,
            )
            assert set(deployment.wait_done(held + ids).values()) == {"completed"}
        rows = query(
            deployment.database_url,
            "SELECT step_id, finished_at FROM troupe_steps WHERE execution_id IN :ids",
            ids=(held[0], ids[0]),
        )
        finished = {row["step_id"]: row["finished_at"] for row in rows}
        # The free agent's 4 steps ran on the one slot while the limited step waited
        # for the call holding its agent's only slot, and it ran after that call.
        assert all(finished[f"free{i}"] < finished["hold0"] for i in range(4))
        assert finished["wait0"] > finished["hold0"]
        assert Counter(r.path for r in service.requests()) == {"/agent": 2}
