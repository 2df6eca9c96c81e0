"""The LLM example, end to end as its README section runs it: `run-team
examples/pr_review/team.yaml` against a local server speaking OpenAI's protocol over
HTTP, with a tool call, structured replies and usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.openai_server import OpenAIServer, Reply, Request
from tests.support.services import describe, run_manage

pytestmark = pytest.mark.timeout(120)

TEAM = "examples/pr_review/team.yaml"
DIFF = "examples/pr_review/sample.diff"
KEY = "sk-example-test-key-0123456789"


def reviewer(request: Request) -> Reply:
    """A model that finds the SQL injection in users.py (after looking up its CWE), the
    hard-coded key in payments.py, and nothing in README.md."""
    prompt = request.text()
    usage = {"prompt_tokens": 1200, "completion_tokens": 80, "cached_tokens": 200}
    if request.messages[-1]["role"] == "tool":
        weakness = json.loads(request.messages[-1]["content"])
        finding = {
            "line": 4,
            "severity": "error",
            "message": "query built with %",
            "cwe": weakness["cwe"],
        }
        return Reply.json({"findings": [finding]}, **usage)
    if "File: app/users.py" in prompt:
        return Reply.tool_call("lookup_weakness", {"keyword": "SQL injection"}, **usage)
    if "File: app/payments.py" in prompt:
        finding = {"line": 12, "severity": "warning", "message": "hard-coded API key"}
        return Reply.json({"findings": [finding]}, **usage)
    return Reply.json({"findings": []}, **usage)


def test_the_pr_reviewer_reviews_each_file_and_collects_the_findings(
    cli_env: dict[str, str],
) -> None:
    with OpenAIServer(default=reviewer) as server:
        env = {
            **cli_env,
            "LLM_BASE_URL": server.base_url,
            "LLM_MODEL": "gpt-4o-mini",
            "LLM_API_KEY": KEY,
        }
        result = run_manage(["run-team", TEAM, "--input", DIFF, "--json"], env, timeout=100)
        requests = server.requests
        execution_id = json.loads(result.stdout)["execution_id"]
        audit = run_manage(["status", execution_id, "--attempts", "--json"], env)
        table = run_manage(["status", execution_id, "--attempts"], env)
    assert result.returncode == 0, describe(result)
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["status"] == "completed", data
    assert data["output"] == {
        "files_reviewed": 3,
        "findings": [
            {
                "file": "app/users.py",
                "line": 4,
                "severity": "error",
                "message": "query built with %",
                "cwe": "CWE-89",
            },
            {
                "file": "app/payments.py",
                "line": 12,
                "severity": "warning",
                "message": "hard-coded API key",
            },
        ],
        "verdict": "request-changes",
    }
    # One request per file, and one more for the file whose review called the tool.
    assert len(requests) == 4
    assert {r.authorization for r in requests} == {f"Bearer {KEY}"}
    assert all(r.body["response_format"]["type"] == "json_schema" for r in requests)
    steps = {step["id"]: step for step in data["steps"]}
    assert [steps[f"review[{i}]"]["status"] for i in range(3)] == ["completed"] * 3
    # Usage is summed over every request: users.py's review made two.
    assert steps["review[1]"]["usage"]["tokens_in"] == 2400
    assert data["usage"]["tokens_in"] == 4 * 1200
    assert data["usage"]["tokens_out"] == 4 * 80
    assert data["usage"]["cached_tokens"] == 4 * 200
    # gpt-4o-mini's shipped prices: 1,000 fresh + 200 cached in, 80 out, per request.
    per_request = (1000 * 0.15 + 200 * 0.075 + 80 * 0.60) / 1e6
    assert data["usage"]["cost_usd"] == pytest.approx(4 * per_request)
    assert KEY not in result.stdout + result.stderr

    # The audit trail shows the tool call under the attempt that made it.
    attempts = {a["step"]: a for a in json.loads(audit.stdout)["attempts"]}
    (tool_call,) = attempts["review[1]"]["tool_calls"]
    assert tool_call["tool"] == "lookup_weakness"
    assert tool_call["arguments"] == {"keyword": "SQL injection"}
    assert tool_call["outcome"] == "success"
    assert attempts["review[1]"]["usage"]["tokens_in"] == 2400
    assert attempts["split"]["usage"] is None
    assert "↳ lookup_weakness" in table.stdout, describe(table)
