"""A team's keyed fairness (``concurrency: {key, max}``): which slot an execution needs.

The key is a CEL expression over the execution's input, evaluated once per execution
in a worker (its input never changes). Executions whose key cannot be evaluated share
one key, ``(none)``; a long key is kept by its digest.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from orchestration.capacity import KeyedConcurrency
from orchestration.limits.demand import FairSlot
from workflows.conditions import compile_condition, evaluate_key

NO_KEY = "(none)"
_KEY_CHARS = 100
# A waiting execution looks again this often (times its rounds behind the others).
POLL_MS = 500

_keys: OrderedDict[str, str] = OrderedDict()
_KEYS_KEPT = 16_384
_lock = threading.Lock()


def fair_slot(
    team: str,
    rule: KeyedConcurrency | None,
    execution_id: str,
    input_value: Any,
    lease_seconds: float,
) -> FairSlot | None:
    if rule is None:
        return None
    with _lock:
        value = _keys.get(execution_id)
    if value is None:
        found = evaluate_key(compile_condition(rule.key), input_value)
        value = NO_KEY if found is None else found
        if len(value) > _KEY_CHARS:
            value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
        with _lock:
            _keys[execution_id] = value
            if len(_keys) > _KEYS_KEPT:
                _keys.popitem(last=False)
    return FairSlot(
        key=f"{team}:{value}",
        max=rule.max,
        execution_id=execution_id,
        lease_ms=int(lease_seconds * 1000),
        poll_ms=POLL_MS,
    )
