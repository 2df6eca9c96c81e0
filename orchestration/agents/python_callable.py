"""The ``python`` agent kind: a dotted path to a callable, sync or async."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from concurrent.futures import Future
from functools import lru_cache
from typing import Any

from orchestration.agents.call import AgentCall, AgentResult
from orchestration.agents.event_loop import shared_loop
from orchestration.agents.team_channel import Handoff
from orchestration.errors import AgentExited, AgentLoadError, PermanentAgentError


@lru_cache(maxsize=512)
def load_target(target: str) -> Callable[..., Any]:
    """Import ``package.module:attribute``; raise AgentLoadError with the reason."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise AgentLoadError(f"cannot import {module_name!r}: {reason}") from None
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AgentLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(obj):
        raise AgentLoadError(f"{target!r} is not callable")
    return obj  # type: ignore[no-any-return]


class PythonCallableAgent:
    def __init__(self, target: str) -> None:
        self.target = target
        self._function = load_target(target)
        self._is_async = inspect.iscoroutinefunction(self._function)

    def invoke(self, call: AgentCall) -> AgentResult:
        try:
            value = self._function(call)
            if inspect.isawaitable(value):
                value = shared_loop.run(_await(value))
        except (SystemExit, KeyboardInterrupt) as exc:
            raise self._exited(exc) from None
        return self._result(value)

    def start_on_loop(self, call: AgentCall) -> Future[AgentResult] | None:
        """An ``async def`` agent's call, on the shared loop (see ``base.StartOnLoop``)."""
        if not self._is_async:
            return None
        return shared_loop.submit(self._finish(self._function(call)))

    async def _finish(self, awaitable: Any) -> AgentResult:
        try:
            value = await awaitable
        except (SystemExit, KeyboardInterrupt) as exc:
            # On the loop's thread, asyncio would let these stop the loop of every
            # async agent of the process.
            raise self._exited(exc) from None
        return self._result(value)

    def _exited(self, exc: BaseException) -> AgentExited:
        # Raised by the agent's own code: its attempt fails. Left alone, it would end
        # the pool process (or the embedded worker's thread) and the message would be
        # delivered again, without end.
        return AgentExited(
            f"{self.target} raised {type(exc).__name__}"
            + (f"({exc.args[0]!r})" if exc.args else "")
        )

    def _result(self, value: Any) -> AgentResult:
        if isinstance(value, Handoff):
            return AgentResult(output=None, handoff=value)
        result = value if isinstance(value, AgentResult) else AgentResult(output=value)
        _require_json(result.output, self.target)
        return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _require_json(value: Any, target: str) -> None:
    # Outputs cross the broker and the database as JSON; refuse anything else up front.
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentAgentError(f"{target} returned a value that is not JSON: {exc}") from None
