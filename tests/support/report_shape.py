"""The JSON shape of `run-team --json` and `status --json` that users' scripts rely on."""

from __future__ import annotations

from typing import Any

REPORT_KEYS = {"execution_id", "status", "output", "usage", "steps", "handoffs"}
STEP_KEYS = {
    "id",
    "agent",
    "status",
    "attempts",
    "duration_ms",
    "error",
    "parent",
    "item_index",
    "usage",
}
# Only a step that asks for a person's approval carries it.
OPTIONAL_STEP_KEYS = {"approval"}


def assert_report_shape(data: dict[str, Any]) -> None:
    """Exactly the documented keys, at the top and on every step, of the right types."""
    assert set(data) == REPORT_KEYS, data
    assert isinstance(data["execution_id"], str) and data["execution_id"]
    assert isinstance(data["steps"], list)
    for step in data["steps"]:
        assert STEP_KEYS <= set(step) <= STEP_KEYS | OPTIONAL_STEP_KEYS, step
        assert isinstance(step["id"], str)
        assert isinstance(step["agent"], str)
        assert isinstance(step["attempts"], int)
        assert step["duration_ms"] is None or isinstance(step["duration_ms"], int)
        assert step["error"] is None or isinstance(step["error"], str)
