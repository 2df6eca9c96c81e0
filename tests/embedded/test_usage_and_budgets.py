"""Usage, cost and budgets as a user sees them: summed per step, agent and execution in
``status --json`` and run-team's table; a budget that refuses calls once spent; and a
reservation race that cannot overshoot, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration.agents.call import Usage
from orchestration.errors import BudgetExceeded
from orchestration.pricing import Prices
from orchestration.spec import Budget, ModelPrice
from orchestration.spending import AttemptSpending
from orchestration.store.budgets import BudgetRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.repository import Store
from tests.support.services import describe, run_manage
from workflows.plan import Strategy

pytestmark = pytest.mark.timeout(120)

USAGE_AGENT = {"kind": "python", "target": "tests.support.usage_agents:reports_usage"}


def write_team(
    directory: Path, steps: list[str], *, strategy: str = "sequential", **team: Any
) -> Path:
    data = {
        "name": "spender",
        "agents": {
            "writer": USAGE_AGENT,
            "editor": USAGE_AGENT,
        },
        "workflow": {
            "strategy": strategy,
            "steps": [
                {"id": sid, "agent": "writer" if i % 2 == 0 else "editor"}
                for i, sid in enumerate(steps)
            ],
        },
        **team,
    }
    path = directory / "team.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run(
    team: Path, payload: dict[str, Any], env: dict[str, str], *extra: str
) -> tuple[Any, dict[str, Any]]:
    result = run_manage(
        ["run-team", str(team), "--input-json", json.dumps(payload), "--json", *extra], env
    )
    try:
        return result, json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(describe(result))


def test_usage_is_priced_and_summed_per_step_and_execution(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    calls = tmp_path / "calls.log"
    team = write_team(tmp_path, ["draft", "edit", "polish"])
    usage = {"tokens_in": 1000, "tokens_out": 500, "cached_tokens": 200, "model": "gpt-4o-mini"}
    result, data = run(team, {"usage": usage, "calls": str(calls)}, cli_env)
    assert result.returncode == 0, describe(result)
    # gpt-4o-mini at the shipped prices: 800 × 0.15 + 200 × 0.075 + 500 × 0.60 per 1M.
    one = (800 * 0.15 + 200 * 0.075 + 500 * 0.60) / 1e6
    for step in data["steps"]:
        assert step["usage"] == {
            "tokens_in": 1000,
            "tokens_out": 500,
            "cached_tokens": 200,
            "reasoning_tokens": 0,
            "cost_usd": pytest.approx(one),
        }
    assert data["usage"]["tokens_in"] == 3000
    assert data["usage"]["tokens_out"] == 1500
    assert data["usage"]["cost_usd"] == pytest.approx(3 * one)

    status = run_manage(["status", data["execution_id"], "--json"], cli_env)
    assert json.loads(status.stdout)["usage"] == data["usage"]


def test_run_team_prints_cost_per_agent_and_the_total(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    team = write_team(
        tmp_path,
        ["draft", "edit", "polish"],
        prices={"house-model": {"input": 1.0, "output": 2.0}},
    )
    usage = {"tokens_in": 1_000_000, "tokens_out": 500_000, "model": "house-model"}
    result = run_manage(
        [
            "run-team",
            str(team),
            "--input-json",
            json.dumps({"usage": usage, "calls": str(tmp_path / "calls.log")}),
        ],
        cli_env,
    )
    assert result.returncode == 0, describe(result)
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if "│" in line[:2]}
    # The team file's own price: 1M in at $1 + 0.5M out at $2 = $2 per call.
    assert "4.000000" in lines["writer"], result.stdout  # draft and polish
    assert "2.000000" in lines["editor"], result.stdout
    assert "6.000000" in lines["total"], result.stdout


def test_a_model_without_a_price_costs_unknown_not_zero(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    team = write_team(tmp_path, ["draft"])
    usage = {"tokens_in": 10, "tokens_out": 5, "model": "no-such-model"}
    result, data = run(team, {"usage": usage, "calls": str(tmp_path / "calls.log")}, cli_env)
    assert result.returncode == 0, describe(result)
    assert data["steps"][0]["usage"]["cost_usd"] is None
    assert data["usage"] == {
        "tokens_in": 10,
        "tokens_out": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": None,
    }


def test_a_spent_budget_refuses_the_next_call_without_making_it(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    calls = tmp_path / "calls.log"
    team = write_team(tmp_path, ["one", "two", "three"], budget={"max_tokens": 1000})
    usage = {"tokens_in": 400, "tokens_out": 200, "model": "gpt-4o-mini"}
    result, data = run(team, {"usage": usage, "calls": str(calls)}, cli_env)
    assert result.returncode == 1, describe(result)
    steps = {step["id"]: step for step in data["steps"]}
    # One call (600 tokens) leaves the budget open; the second is let in and spends it
    # (1,200: a python agent's usage is known only afterwards); the third is refused.
    assert steps["one"]["status"] == steps["two"]["status"] == "completed"
    assert steps["three"]["status"] == "failed"
    assert steps["three"]["error"].startswith("BudgetExceeded: budget used up: 1,200 of 1,000")
    assert steps["three"]["attempts"] == 1  # permanent: not retried
    assert calls.read_text().split() == ["one", "two"]


def test_a_budget_given_at_enqueue_replaces_the_team_files(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    calls = tmp_path / "calls.log"
    team = write_team(tmp_path, ["one", "two", "three"], budget={"max_tokens": 1000})
    usage = {"tokens_in": 400, "tokens_out": 200, "model": "gpt-4o-mini"}
    result, data = run(
        team, {"usage": usage, "calls": str(calls)}, cli_env, "--max-tokens", "100000"
    )
    assert result.returncode == 0, describe(result)
    assert data["usage"]["tokens_in"] == 1200
    assert calls.read_text().split() == ["one", "two", "three"]

    result, data = run(
        team, {"usage": usage, "calls": str(calls)}, cli_env, "--max-cost-usd", "0.0000001"
    )
    assert result.returncode == 1, describe(result)
    assert [step["status"] for step in data["steps"]] == ["completed", "failed", "skipped"]


# --- the reservation race ----------------------------------------------------------------


def _execution(url: str, budget: Budget) -> tuple[Store, str]:
    from orchestration.spec import TeamSpec
    from workflows.plan import build_plan

    spec = TeamSpec.model_validate(
        {
            "name": "race",
            "agents": {"a": {"kind": "python", "target": "tests.support.agents:noop"}},
            "workflow": {"strategy": Strategy.PARALLEL.value, "steps": [{"id": "s", "agent": "a"}]},
        }
    )
    store = Store(url, connections=30)
    execution_id = str(uuid.uuid4())
    ExecutionRecords(store).create_execution(
        execution_id, spec.model_dump(mode="json"), build_plan(spec), None, budget=budget
    )
    return store, execution_id


@pytest.mark.parametrize("limit", ["max_cost_usd", "max_tokens"])
def test_twenty_concurrent_reservations_never_commit_more_than_the_budget(
    url: str, limit: str
) -> None:
    """20 calls at once, each reserving a worst case of 1,000 tokens out and 100 in at
    a price of $1/$1 per million ($0.0011): a budget that holds exactly 7 of them lets
    exactly 7 through, whichever 7, on SQLite and on PostgreSQL."""
    worst_tokens, worst_cost = 1100, 1100 / 1e6
    budget = (
        Budget(max_cost_usd=7 * worst_cost + 1e-9)
        if limit == "max_cost_usd"
        else Budget(max_tokens=7 * worst_tokens + 5)
    )
    store, execution_id = _execution(url, budget)
    prices = Prices.layered({"m": ModelPrice(input=1.0, output=1.0)})
    records = BudgetRecords(store)
    start = threading.Barrier(20)
    admitted: list[int] = []
    refused: list[str] = []

    def one(i: int) -> None:
        spending = AttemptSpending(execution_id, "a", prices, budget, records)
        start.wait()
        try:
            spending.reserve("m", 100, 1000)
        except BudgetExceeded as exc:
            refused.append(str(exc))
        else:
            admitted.append(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    state = records.state(execution_id)
    assert len(admitted) == 7, (admitted, refused[:1])
    assert len(refused) == 13
    assert state is not None
    assert state.committed_tokens == 7 * worst_tokens
    assert state.committed_cost_usd == pytest.approx(7 * worst_cost)
    assert all(
        message.startswith("budget exceeded: the call may need 1,100 tokens") for message in refused
    )


def test_settling_gives_back_what_a_call_did_not_use(url: str) -> None:
    budget = Budget(max_tokens=2000)
    store, execution_id = _execution(url, budget)
    records = BudgetRecords(store)
    spending = AttemptSpending(execution_id, "a", Prices.layered(), budget, records)
    held = spending.reserve("gpt-4o", 100, 1000)
    priced = spending.settle(held, Usage(tokens_in=80, tokens_out=20, model="gpt-4o"))
    assert priced is not None and priced.cost_usd == pytest.approx((80 * 2.5 + 20 * 10) / 1e6)
    state = records.state(execution_id)
    assert state is not None and state.committed_tokens == 100
    # A request whose fate is unknown (it timed out) keeps its whole reservation.
    held = spending.reserve("gpt-4o", 100, 1000)
    assert spending.settle(held, None) is None
    state = records.state(execution_id)
    assert state is not None and state.committed_tokens == 1200


def test_no_max_tokens_or_no_price_cannot_run_under_a_budget(url: str) -> None:
    store, execution_id = _execution(url, Budget(max_cost_usd=1.0))
    spending = AttemptSpending(
        execution_id, "a", Prices.layered(), Budget(max_cost_usd=1.0), BudgetRecords(store)
    )
    with pytest.raises(BudgetExceeded, match="sets no max_tokens"):
        spending.reserve("gpt-4o", 10, None)
    with pytest.raises(BudgetExceeded, match="'mystery' has no price"):
        spending.reserve("mystery", 10, 10)
