"""The shared memory as one attempt sees it, and the rules that combine writes.

An attempt reads the memory committed when it first looks (one read, made only if it
looks) plus its own writes, and stages its writes: the store applies them by their
rules when the attempt succeeds, to whatever is committed then. A read that came before
a parallel step's write therefore never makes that write lost: ``sum`` adds to the
newest total, ``append`` to the newest list.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestration.errors import InvalidTeamWrite
from orchestration.spec import MemoryRule

# The width of the key columns (troupe_memory.key).
MAX_KEY = 200


@dataclass(frozen=True)
class MemorySnapshot:
    """The committed memory at one version of the execution's memory."""

    version: int
    values: Mapping[str, Any]


@dataclass(frozen=True)
class StagedWrite:
    key: str
    value: Any
    rule: MemoryRule


def combine(rule: MemoryRule, current: Any, value: Any) -> Any:
    """The value of a key after a write of ``value`` by ``rule`` meets ``current``.

    An absent or null value starts empty. A current value the rule cannot combine with
    (a number where ``append`` wants a list) is replaced: the history keeps it as the
    write's ``previous``. ``value`` was checked when it was staged (``check_write``).
    """
    if rule is MemoryRule.APPEND:
        return [*current, value] if isinstance(current, list) else [value]
    if rule is MemoryRule.MERGE:
        return {**current, **value} if isinstance(current, dict) else dict(value)
    if rule is MemoryRule.SUM:
        return current + value if _is_number(current) else value
    return value


def check_write(key: Any, value: Any, rule: MemoryRule) -> Any:
    """``value`` as a copy of plain JSON, or InvalidTeamWrite saying what is wrong. The
    copy keeps the staged write from changing with the agent's own object."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise InvalidTeamWrite(
            f"a shared-memory key is a string of 1 to {MAX_KEY} characters, not {key!r:.80}"
        )
    value = json_copy(value, f"the value written to {key!r}")
    if rule is MemoryRule.MERGE and not isinstance(value, dict):
        raise InvalidTeamWrite(f"{key!r} is merged: its writes must be mappings, not {value!r:.80}")
    if rule is MemoryRule.SUM and not _is_number(value):
        raise InvalidTeamWrite(f"{key!r} is summed: its writes must be numbers, not {value!r:.80}")
    return value


def json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidTeamWrite(f"{what} is not JSON: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class AttemptMemory:
    """``call.shared``: the SharedMemory of one attempt (see the module's docstring).

    ``read`` is called once, on the first ``get`` or ``all``: an attempt that only
    writes, or never touches the memory, costs no read.
    """

    def __init__(self, rules: Mapping[str, MemoryRule], read: Callable[[], MemorySnapshot]) -> None:
        self._rules = rules
        self._read = read
        self._snapshot: MemorySnapshot | None = None
        # The snapshot with this attempt's writes applied, once read.
        self._view: dict[str, Any] | None = None
        self._writes: list[StagedWrite] = []
        self._closed = False
        # The agent may use the memory from threads of its own.
        self._lock = threading.Lock()

    # --- SharedMemory ----------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            view = self._seen()
            return copy.deepcopy(view[key]) if key in view else default

    def set(self, key: str, value: Any) -> None:
        self._stage(key, value, MemoryRule.LAST_WRITER)

    def update(self, key: str, value: Any) -> None:
        self._stage(key, value, self.rule_of(key))

    def all(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._seen())

    # --- the attempt's side ----------------------------------------------------------

    def rule_of(self, key: str) -> MemoryRule:
        return self._rules.get(key, MemoryRule.LAST_WRITER)

    @property
    def version(self) -> int | None:
        """The memory version this attempt read (None: it never read the memory)."""
        snapshot = self._snapshot
        return snapshot.version if snapshot is not None else None

    def close(self) -> tuple[StagedWrite, ...]:
        """The staged writes, in order; later writes are refused (the attempt ended)."""
        with self._lock:
            self._closed = True
            return tuple(self._writes)

    def _stage(self, key: str, value: Any, rule: MemoryRule) -> None:
        value = check_write(key, value, rule)
        with self._lock:
            if self._closed:
                raise InvalidTeamWrite(f"the attempt has ended: its write to {key!r} is too late")
            self._writes.append(StagedWrite(key, value, rule))
            if self._view is not None:
                self._view[key] = combine(rule, self._view.get(key), value)

    def _seen(self) -> dict[str, Any]:
        if self._view is None:
            snapshot = self._read()
            view = copy.deepcopy(dict(snapshot.values))
            for write in self._writes:
                view[write.key] = combine(write.rule, view.get(write.key), write.value)
            self._snapshot, self._view = snapshot, view
        return self._view
