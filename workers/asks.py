"""``call.ask``: an agent delegates a question to another agent of its team and waits
for the answer.

The question is a real delegation: a step added to the execution (``<asker>~ask~…``,
its origin recorded), run through the same ``Delegation`` as any other, under the
asked agent's time limit, retry policy and breaker, with its own attempt rows and
usage. It runs here, in a thread of the asking call, not through the broker: a worker
whose every slot is taken by askers (concurrency 1, a chain A → B → C) still answers
them, so an ask never deadlocks. The asker's own time limit bounds the whole chain.

Its id is derived from the asker, the agent and the question, so a retried asker that
asks the same question finds the step it added before: answered, it gets the answer
without a second call; still running elsewhere, it waits for it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from orchestration.constants import COMPLETED
from orchestration.errors import AskFailed, PermanentAgentError
from workflows.runtime_steps import ask_id
from workflows.scheduling import AddedStep
from workflows.status import STEP_FINAL, StepStatus

if TYPE_CHECKING:
    from workers.delegation import Delegation, Delivery, Outcome, _State

# Questions inside questions: a chain deeper than this is a loop of asks.
MAX_ASK_DEPTH = 8


class Asks:
    """One attempt's questions to other agents (``AttemptChannel``'s asker)."""

    def __init__(self, runner: Delegation, state: _State, agent: str) -> None:
        self._runner = runner
        self._state = state
        self._agent = agent
        self._asked: Counter[str] = Counter()

    def ask(self, agent: str, question: Any, timeout: float | None = None) -> Any:
        state = self._state
        if agent not in state.team.agents:
            known = ", ".join(sorted(state.team.agents))
            raise PermanentAgentError(f"ask: unknown agent {agent!r} (the team has {known})")
        asker = state.delivery.step_id
        if asker.count("~ask~") >= MAX_ASK_DEPTH:
            raise PermanentAgentError(f"ask: questions nested {MAX_ASK_DEPTH} deep: {asker}")
        key = json.dumps([agent, question], sort_keys=True, default=str)
        self._asked[key] += 1
        step_id = ask_id(asker, agent, question, self._asked[key])
        text = question if isinstance(question, str) else None
        self._runner.store.add_ask(
            state.delivery.execution_id,
            AddedStep(
                step_id=step_id,
                agent=agent,
                parent_id=asker,
                item_index=0,
                item={
                    "task": text or f"Answer agent {self._agent}'s question (your input).",
                    "input": question,
                    "ask": {"from": self._agent, "step": asker},
                },
                origin={"kind": "ask", "by": asker, "from": self._agent, "to": agent},
                dependents=(),
            ),
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._answer(step_id, agent, deadline)

    def _answer(self, step_id: str, agent: str, deadline: float | None) -> Any:
        store = self._runner.store
        execution_id = self._state.delivery.execution_id
        task_id = f"ask-{uuid.uuid4()}"
        while True:
            row = store.steps_by_id(execution_id, [step_id])[step_id]
            if row.status == COMPLETED:
                return row.output
            if row.status in STEP_FINAL:
                detail = f"{row.error_type}: {row.error_message}" if row.error_type else row.reason
                raise AskFailed(f"agent {agent!r} did not answer ({row.status}): {detail}")
            attempt = max(1, row.attempts + (1 if row.status == StepStatus.RETRYING else 0))
            outcome = self._run(self._delivery(step_id, attempt, task_id), _left(deadline, agent))
            if outcome is not None and outcome.retry is not None:
                pause = outcome.retry.countdown
                left = _left(deadline, agent)
                if left is not None and pause >= left:
                    raise TimeoutError(f"ask: agent {agent!r} did not answer in time")
                time.sleep(pause)

    def _delivery(self, step_id: str, attempt: int, task_id: str) -> Delivery:
        return replace(
            self._state.delivery,
            step_id=step_id,
            attempt=attempt,
            task_id=task_id,
            previous_delay=None,
            orphaned_by=None,
        )

    def _run(self, delivery: Delivery, timeout: float | None) -> Outcome | None:
        """Run the question's delegation in a thread of its own: its call gets a time
        limit of its own (the asker's, if it runs in the main thread, stays armed)."""
        result: list[Outcome] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                result.append(self._runner.run(delivery))
            except BaseException as exc:  # handed to the asker below
                failure.append(exc)

        thread = threading.Thread(target=run, name=f"troupe-ask-{delivery.step_id}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"ask: {delivery.step_id} did not answer in time")
        if failure:
            raise failure[0]
        return result[0] if result else None


def _left(deadline: float | None, agent: str) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"ask: agent {agent!r} did not answer in time")
    return left
