"""The ``http`` agent kind end to end: team files with ``kind: http`` agents run on the
embedded runtime against a local agent service (tests.support.agent_service) that
records every request, so what was sent is asserted, not assumed.

Every test starts a service of its own on an ephemeral port, so agents of different
tests call different URLs and never share a breaker. A few tests call the adapter
directly, where Troupe's engine cannot be made to do a thing on cue (a redelivery).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration import ExecutionReport, Team
from orchestration.agents import http_service
from orchestration.agents.call import AgentCall, Usage
from orchestration.agents.http_service import (
    AgentServiceTimeout,
    HttpServiceAgent,
    retry_after,
    shared_client,
)
from orchestration.agents.secrets import MASK
from orchestration.errors import (
    AgentProtocolError,
    PermanentAgentError,
    SecretMissing,
    TransientAgentError,
)
from orchestration.spec import HttpAgentSpec
from tests.support.agent_service import AgentService, Recorded, Reply, output
from tests.support.services import describe, run_manage

pytestmark = pytest.mark.timeout(60)

# Small delays keep retries fast; no jitter, so a wait is what the policy says.
FAST_RETRY = {"max_attempts": 3, "initial_delay": 0.05, "max_delay": 0.2, "jitter": "none"}


@pytest.fixture
def service() -> Iterator[AgentService]:
    with AgentService() as running:
        yield running


def http_agent(url: str, *, timeout: float = 10, **fields: Any) -> dict[str, Any]:
    retry = {**FAST_RETRY, **fields.pop("retry", {})}
    return {"kind": "http", "url": url, "timeout": timeout, "retry": retry, **fields}


def team_data(
    agents: dict[str, dict[str, Any]], steps: list[dict[str, Any]], strategy: str = "sequential"
) -> dict[str, Any]:
    return {
        "name": f"http-{uuid.uuid4().hex[:8]}",
        "agents": agents,
        "workflow": {"strategy": strategy, "steps": steps},
    }


def run(
    agents: dict[str, dict[str, Any]],
    steps: list[dict[str, Any]],
    strategy: str = "sequential",
    input: Any = None,
) -> ExecutionReport:
    text = yaml.safe_dump(team_data(agents, steps, strategy), sort_keys=False)
    return Team.from_yaml(text, source="http-team.yaml").run(input, timeout=30)


def one_step(url: str, **fields: Any) -> ExecutionReport:
    return run({"remote": http_agent(url, **fields)}, [{"id": "s", "agent": "remote"}])


def step_of(report: ExecutionReport, step_id: str = "s") -> Any:
    return next(step for step in report.steps if step.id == step_id)


def outcomes(runtime: Any, report: ExecutionReport, step_id: str = "s") -> list[str | None]:
    return [row.outcome for row in runtime.executions.attempts(report.execution_id, step_id)]


def call_of(**fields: Any) -> AgentCall:
    values: dict[str, Any] = {
        "execution_id": "exec-1",
        "step_id": "s",
        "agent": "remote",
        "task": "do it",
        "input": {"x": 1},
        "outputs": {"up": {"y": 2}},
        "attempt": 1,
    }
    return AgentCall(**{**values, **fields})


def spec_of(url: str, **fields: Any) -> HttpAgentSpec:
    return HttpAgentSpec(kind="http", url=url, **fields)


# --- what the service is sent ------------------------------------------------------------


def test_each_step_posts_its_context_and_upstream_outputs(
    runtime: Any, service: AgentService
) -> None:
    first = service.script("/first", output({"n": 1}))
    second = service.script("/second", output({"done": True}))
    report = run(
        {"first": http_agent(first), "second": http_agent(second)},
        [
            {"id": "a", "agent": "first", "task": "count"},
            {"id": "b", "agent": "second", "task": "finish"},
        ],
        input={"topic": "http"},
    )
    assert report.status == "completed", report
    assert step_of(report, "b").attempts == 1
    (request,) = service.requests("/second")
    assert request.method == "POST"
    assert request.json == {
        "execution_id": report.execution_id,
        "step_id": "b",
        "agent": "second",
        "attempt": 1,
        "task": "finish",
        "input": {"topic": "http"},
        "outputs": {"a": {"n": 1}},
        "item": None,
        "index": None,
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == f"{report.execution_id}:b:1"
    # The first step sees nothing upstream.
    (earlier,) = service.requests("/first")
    assert earlier.json["outputs"] == {}
    assert earlier.json["task"] == "count"


def test_a_map_step_sends_each_item_and_its_index(runtime: Any, service: AgentService) -> None:
    files = ["a.py", "b.py", "c.py"]
    split = service.script("/split", output({"files": files}))

    def review(request: Recorded) -> Reply:
        return output({"reviewed": request.json["item"]})

    reviewer = service.script("/review", review)
    report = run(
        {"splitter": http_agent(split), "reviewer": http_agent(reviewer)},
        [
            {"id": "split", "agent": "splitter"},
            {
                "id": "review",
                "agent": "reviewer",
                "after": ["split"],
                "for_each": "steps.split.output.files",
            },
        ],
        strategy="dag",
    )
    assert report.status == "completed", report
    requests = sorted(service.requests("/review"), key=lambda r: r.json["index"])
    assert [r.json["index"] for r in requests] == [0, 1, 2]
    for index, request in enumerate(requests):
        body = request.json
        assert body["item"] == files[index]
        assert body["outputs"] == {"split": {"files": files}}
        step_id = body["step_id"]
        assert step_id != "review" and step_id.startswith("review"), step_id
        assert request.headers["idempotency-key"] == f"{report.execution_id}:{step_id}:1"
    assert step_of(report, "review").status == "completed"
    assert [{"reviewed": name} for name in files] in _values(report.output)


def _values(value: Any) -> list[Any]:
    """``value`` and everything nested in it, to find the map step's list in the output
    whatever shape the strategy gives the execution's output."""
    found = [value]
    if isinstance(value, dict):
        for inner in value.values():
            found.extend(_values(inner))
    return found


# --- transient failures: retried -------------------------------------------------------------


def test_429_waits_at_least_retry_after_then_succeeds(runtime: Any, service: AgentService) -> None:
    url = service.script(
        "/limited",
        Reply(429, body="slow down", headers={"Retry-After": "1"}),
        output("fine"),
    )
    report = one_step(url)
    assert report.status == "completed", report
    assert report.output == "fine"
    assert step_of(report).attempts == 2
    first, second = service.wait_for("/limited", 2)
    # The policy alone would have waited 0.05 s.
    assert second.at - first.at >= 1.0, second.at - first.at
    attempts = runtime.executions.attempts(report.execution_id, "s")
    assert attempts[0].outcome == "error"
    assert "HTTP 429" in (attempts[0].error_message or "")
    # A retry is a new attempt, so a new key: the service must not answer it from its
    # record of the first.
    assert first.headers["idempotency-key"] == f"{report.execution_id}:s:1"
    assert second.headers["idempotency-key"] == f"{report.execution_id}:s:2"


def test_500_is_retried_then_succeeds(runtime: Any, service: AgentService) -> None:
    url = service.script("/flaky", Reply(500, body="boom"), output({"ok": 1}))
    report = one_step(url)
    assert report.status == "completed", report
    assert report.output == {"ok": 1}
    assert step_of(report).attempts == 2
    assert len(service.requests("/flaky")) == 2


def test_a_timeout_is_retried_and_recorded_as_a_timeout(
    runtime: Any, service: AgentService
) -> None:
    url = service.script("/slow", Reply(delay=5, json={"output": "too late"}))
    report = one_step(url, timeout=0.5, retry={"max_attempts": 2})
    assert report.status == "failed", report
    step = step_of(report)
    assert step.attempts == 2
    assert outcomes(runtime, report) == ["timeout", "timeout"]
    assert step.error is not None and "0.5s" in step.error, step.error
    assert len(service.wait_for("/slow", 2)) == 2


def test_a_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    agent = HttpServiceAgent(spec_of(f"http://127.0.0.1:{port}/agent", timeout=2))
    with pytest.raises(TransientAgentError, match="ConnectError"):
        agent.invoke(call_of())


# --- permanent failures: not retried ---------------------------------------------------------


def test_400_fails_the_step_at_once_naming_the_status(runtime: Any, service: AgentService) -> None:
    url = service.script("/picky", Reply(400, body='{"error": "field x is required"}'))
    report = one_step(url)
    assert report.status == "failed", report
    step = step_of(report)
    assert step.attempts == 1
    assert step.error is not None
    assert step.error.startswith("PermanentAgentError"), step.error
    assert "HTTP 400" in step.error and "field x is required" in step.error, step.error
    assert len(service.requests("/picky")) == 1


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (Reply(200, body="<html>Bad Gateway</html>"), "not JSON"),
        (Reply(200, json={"result": 1}), 'without an "output" field'),
        (Reply(200, body='{"output": NaN}'), "not JSON"),
    ],
    ids=["html", "no-output", "nan"],
)
def test_a_reply_troupe_cannot_use_is_a_clear_protocol_error(
    runtime: Any, service: AgentService, reply: Reply, needle: str
) -> None:
    url = service.script("/odd", reply)
    report = one_step(url)
    assert report.status == "failed", report
    step = step_of(report)
    assert step.attempts == 1
    assert step.error is not None
    assert step.error.startswith("AgentProtocolError"), step.error
    assert needle in step.error and url in step.error, step.error


# --- the idempotency key -------------------------------------------------------------------


def test_the_same_attempt_sent_again_carries_the_same_key(service: AgentService) -> None:
    url = service.script("/agent", output("done"))
    call = call_of(execution_id="exec-7", step_id="review[2]", attempt=3, item="b.py", index=2)
    # A redelivered message builds a new adapter and sends the same attempt again.
    HttpServiceAgent(spec_of(url)).invoke(call)
    HttpServiceAgent(spec_of(url)).invoke(call)
    HttpServiceAgent(spec_of(url)).invoke(call_of(execution_id="exec-7", attempt=4))
    first, again, retry = service.wait_for("/agent", 3)
    assert first.headers["idempotency-key"] == "exec-7:review[2]:3"
    assert again.headers["idempotency-key"] == "exec-7:review[2]:3"
    assert again.body == first.body
    assert retry.headers["idempotency-key"] == "exec-7:s:4"


# --- headers and secrets -------------------------------------------------------------------


def test_a_header_names_a_variable_the_service_gets_its_value_the_records_only_its_name(
    service: AgentService, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    url = service.script("/secure", output({"ok": True}))
    agent = http_agent(
        url, headers={"Authorization": "Bearer ${HTTP_AGENT_TOKEN}", "X-Team": "audit"}
    )
    team = tmp_path / "team.yaml"
    team.write_text(
        yaml.safe_dump(team_data({"remote": agent}, [{"id": "s", "agent": "remote"}])),
        encoding="utf-8",
    )
    env = {**cli_env, "HTTP_AGENT_TOKEN": secret}
    ran = run_manage(["run-team", str(team), "--input", "hi", "--json"], env)
    assert ran.returncode == 0, describe(ran)
    (request,) = service.requests("/secure")
    assert request.headers["authorization"] == f"Bearer {secret}"
    assert request.headers["x-team"] == "audit"
    execution_id = json.loads(ran.stdout)["execution_id"]
    status = run_manage(["status", execution_id, "--json"], env)
    assert status.returncode == 0, describe(status)
    for shown in (ran.stdout, ran.stderr, status.stdout, status.stderr):
        assert secret not in shown
    state = Path(cli_env["TROUPE_STATE_DIR"])
    with sqlite3.connect(state / "troupe.db") as db:
        (stored,) = db.execute(
            "SELECT spec FROM troupe_executions WHERE id = ?", (execution_id,)
        ).fetchone()
    headers = json.loads(stored)["agents"]["remote"]["headers"]
    assert headers == {"Authorization": "Bearer ${HTTP_AGENT_TOKEN}", "X-Team": "audit"}
    # Nowhere in the state (the database and its journal) is the value written down.
    for path in state.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_header_naming_an_unset_variable_fails_without_calling(
    runtime: Any, service: AgentService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HTTP_AGENT_UNSET", raising=False)
    url = service.script("/never", output("no"))
    report = one_step(url, headers={"X-Key": "${HTTP_AGENT_UNSET}"})
    assert report.status == "failed", report
    step = step_of(report)
    assert step.attempts == 1
    assert step.error is not None and step.error.startswith(SecretMissing.__name__)
    assert "HTTP_AGENT_UNSET" in step.error
    assert service.requests("/never") == []


def test_a_secret_the_service_echoes_into_an_error_is_masked(
    runtime: Any, service: AgentService, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"echoed-{uuid.uuid4().hex}"
    monkeypatch.setenv("HTTP_AGENT_ECHOED", secret)

    def tattle(request: Recorded) -> Reply:
        return Reply(403, body=f"bad credentials: {request.headers['authorization']}")

    url = service.script("/tattle", tattle)
    report = one_step(url, headers={"Authorization": "Bearer ${HTTP_AGENT_ECHOED}"})
    assert report.status == "failed", report
    error = step_of(report).error
    assert error is not None and "HTTP 403" in error
    assert secret not in error and MASK in error, error
    rows = runtime.executions.attempts(report.execution_id, "s")
    assert all(secret not in (row.error_message or "") for row in rows)


# --- the reply ----------------------------------------------------------------------------


def test_usage_in_the_reply_becomes_the_results_usage(service: AgentService) -> None:
    usage: dict[str, Any] = {
        "tokens_in": 120,
        "tokens_out": 30,
        "cached_tokens": 100,
        "reasoning_tokens": 5,
        "cost_usd": 0.0021,
        "model": "remote-model-1",
    }
    url = service.script("/metered", output({"answer": 42}, usage=usage))
    result = HttpServiceAgent(spec_of(url)).invoke(call_of())
    assert result.output == {"answer": 42}
    assert result.usage == Usage(**usage, endpoint=url)
    # No usage: nothing reported, and the cost is not made up.
    plain = service.script("/plain", output([1, 2]))
    assert HttpServiceAgent(spec_of(plain)).invoke(call_of()).usage == Usage(endpoint=plain)
    bad = service.script("/bad-usage", output(1, usage={"tokens_in": "many"}))
    with pytest.raises(AgentProtocolError, match=r"usage\.tokens_in"):
        HttpServiceAgent(spec_of(bad)).invoke(call_of())


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("3") == 3.0
    assert retry_after("-4") == 0.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    now = datetime(2030, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after(later, now=now.timestamp()) == 90.0
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert retry_after(earlier, now=now.timestamp()) == 0.0


def test_a_transient_status_carries_its_retry_after_as_an_http_date(
    service: AgentService,
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    url = service.script("/busy", Reply(503, body="busy", headers={"Retry-After": when}))
    with pytest.raises(TransientAgentError) as caught:
        HttpServiceAgent(spec_of(url)).invoke(call_of())
    assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 30


def test_a_timeout_is_transient_and_a_timeout_error(service: AgentService) -> None:
    url = service.script("/slow", Reply(delay=5, json={"output": 1}))
    with pytest.raises(AgentServiceTimeout) as caught:
        HttpServiceAgent(spec_of(url, timeout=0.3)).invoke(call_of())
    assert isinstance(caught.value, TransientAgentError | TimeoutError)
    assert not isinstance(caught.value, PermanentAgentError)


# --- the pooled client --------------------------------------------------------------------


def test_calls_share_one_client_and_a_forked_child_gets_its_own(service: AgentService) -> None:
    url = service.script("/agent", output(1))
    HttpServiceAgent(spec_of(url)).invoke(call_of())
    client = shared_client()
    HttpServiceAgent(spec_of(url)).invoke(call_of())
    assert shared_client() is client
    with warnings.catch_warnings():
        # Python 3.12 warns about forking a process that runs threads (the service's).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report whether the inherited client was dropped, and go
        os._exit(0 if http_service._client is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared_client() is client


# --- health ---------------------------------------------------------------------------------


def test_the_heartbeat_probes_the_health_url(service: AgentService) -> None:
    from workers.health import probe

    check = spec_of(service.url("/agent"), health_url=service.url("/health")).probe
    assert check is not None
    assert probe(check) == (True, None)
    service.healthy = False
    assert probe(check) == (False, "HTTP 503")
