"""Read a team file: YAML → TeamSpec, with one clear line for anything wrong.

Whatever the file holds, reading it is bounded in time and memory: the limits are in
orchestration/team_limits.py, each checked before the work it protects.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestration.agents.python_callable import load_target
from orchestration.bounded_yaml import load_bounded
from orchestration.errors import AgentLoadError, TeamFileError
from orchestration.spec import AGENT_KINDS, OpenAIAgentSpec, PythonAgentSpec, SpecProblem, TeamSpec
from orchestration.team_limits import MAX_FILE_BYTES

# An error quotes what it refuses, but only a glance of it: the value may be megabytes,
# or a small alias graph that a plain repr would expand into billions of items.
_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxstring, _ECHO.maxother = 2, 60, 60
_ECHO.maxlist = _ECHO.maxtuple = _ECHO.maxdict = _ECHO.maxset = 4
_ECHO_CHARS = 80
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,60}")


def load_team(
    path: str | Path,
    *,
    visibility_timeout: float | None = None,
    consumer_timeout: float | None = None,
    import_targets: bool = True,
) -> TeamSpec:
    source = str(path)
    try:
        with Path(path).open("rb") as handle:
            # One byte more than allowed tells a file at the limit from one above it.
            raw = handle.read(MAX_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise TeamFileError(source, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TeamFileError(source, None, f"cannot read: {exc}") from None
    return parse_team(
        text,
        source=source,
        visibility_timeout=visibility_timeout,
        consumer_timeout=consumer_timeout,
        import_targets=import_targets,
    )


def parse_team(
    text: str,
    *,
    source: str = "<team>",
    visibility_timeout: float | None = None,
    consumer_timeout: float | None = None,
    import_targets: bool = True,
) -> TeamSpec:
    if len(text) > MAX_FILE_BYTES:
        raise TeamFileError(
            source, None, f"larger than {MAX_FILE_BYTES:,} bytes, the most a team file may hold"
        )
    try:
        data = load_bounded(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or _reader_problem(exc)
        raise TeamFileError(source, where, f"invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise TeamFileError(source, None, "expected a mapping with name, agents and workflow")
    spec = validate_team_data(data, source)
    if import_targets:
        check_targets(spec, source)
    if visibility_timeout is not None:
        check_visibility_bound(spec, source, visibility_timeout)
    if consumer_timeout is not None:
        check_consumer_timeout_bound(spec, source, consumer_timeout)
    return spec


def validate_team_data(data: dict[str, Any], source: str) -> TeamSpec:
    try:
        return TeamSpec.model_validate(data)
    except ValidationError as exc:
        errors = _independent(exc.errors(include_url=False))
        field, problem = _describe(errors[0], data)
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise TeamFileError(source, field, problem) from None


def check_targets(spec: TeamSpec, source: str) -> None:
    for name, agent in spec.agents.items():
        targets = []
        if isinstance(agent, PythonAgentSpec):
            targets.append(("target", agent.target))
        if isinstance(agent, OpenAIAgentSpec):
            targets.extend((f"tools[{i}]", tool) for i, tool in enumerate(agent.tools))
        if agent.health is not None and agent.health.target is not None:
            targets.append(("health.target", agent.health.target))
        for field, target in targets:
            try:
                load_target(target)
            except AgentLoadError as exc:
                raise TeamFileError(source, f"agents.{name}.{field}", str(exc)) from None


def check_visibility_bound(spec: TeamSpec, source: str, visibility_timeout: float) -> None:
    _check_redelivery_bound(
        spec,
        source,
        visibility_timeout,
        "the broker's visibility timeout",
        "raise TROUPE_VISIBILITY_TIMEOUT",
    )


def check_consumer_timeout_bound(spec: TeamSpec, source: str, consumer_timeout: float) -> None:
    _check_redelivery_bound(
        spec,
        source,
        consumer_timeout,
        "RabbitMQ's consumer timeout",
        "raise consumer_timeout in rabbitmq.conf and TROUPE_CONSUMER_TIMEOUT",
    )


def _check_redelivery_bound(
    spec: TeamSpec, source: str, bound: float, what: str, remedy: str
) -> None:
    """A message is held unacknowledged for a retry's delay, then for the call: past the
    broker's bound, the broker hands it to another worker while the first still runs."""
    for name, agent in spec.agents.items():
        longest = agent.timeout + agent.retry.largest_delay()
        if longest > bound:
            raise TeamFileError(
                source,
                f"agents.{name}.timeout",
                f"time limit {agent.timeout:g}s + largest retry delay "
                f"{agent.retry.largest_delay():g}s exceeds {what} "
                f"({bound:g}s); the message would be redelivered and run twice. "
                f"Lower them or {remedy}",
            )


def _reader_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        return f"character #x{exc.character:04x} at position {exc.position} is not allowed"
    return "not valid YAML"


def _independent(errors: list[Any]) -> list[Any]:
    """Drop errors that only echo another one (a list that is "too short" because its one
    item failed), so "(and N more problems)" counts real problems."""
    real = [e for e in errors if e["type"] != "too_short"]
    return real or errors


def _describe(error: Any, data: dict[str, Any]) -> tuple[str | None, str]:
    ctx = error.get("ctx") or {}
    original = ctx.get("error")
    prefix = _dotted(error["loc"], data)
    if isinstance(original, SpecProblem):
        field = f"{prefix}.{original.field}" if prefix else original.field
        return field, original.problem
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if error["type"] == "string_pattern_mismatch" and prefix.endswith(".target"):
        message = "must look like package.module:function"
    elif error["type"] == "string_pattern_mismatch" and ".steps[" in prefix:
        message = "step ids must be identifiers (letters, digits, _), usable in conditions"
    if error["type"] == "enum" or error["type"] == "literal_error":
        message = f"{message} (got {_echo(error.get('input'))})"
    return prefix or None, message


def _dotted(loc: tuple[Any, ...], data: Any) -> str:
    out = ""
    for i, part in enumerate(loc):
        if i == 2 and loc[0] == "agents" and part in AGENT_KINDS:
            continue  # the tag pydantic adds for the agent's kind: not a field of the file
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or part in ("[key]",):
            continue
        else:
            # A key that failed validation may be anything the file holds.
            text = str(part) if _PLAIN_KEY.fullmatch(str(part)) else _echo(part)
            out += f".{text}" if out else text
    return out


def _echo(value: Any) -> str:
    text = _ECHO.repr(value)
    return text if len(text) <= _ECHO_CHARS else text[: _ECHO_CHARS - 1] + "…"
