"""Every bound a team file must keep, in one place (the README's "Limits" lists them).

A team file is user input: whatever it holds, loading and validating it must end within
about two seconds and a bounded amount of memory, with one short line when it is refused.
Each limit is checked before the work it protects: the file's size before it is read, the
YAML's nodes and nesting while it is composed (before any value is built), numbers before
they are converted, expressions before cel-python parses them. Names stop at the width of
the database columns that hold them (orchestration/store/models.py).
"""

from __future__ import annotations

from workflows.conditions import (
    MAX_EXPRESSION_CHARS,
    MAX_EXPRESSION_DEPTH,
    MAX_EXPRESSION_NESTING,
    MAX_TEAM_EXPRESSION_CHARS,
    MAX_TEAM_EXPRESSIONS,
)

__all__ = [
    "MAX_AGENTS",
    "MAX_AGENT_NAME",
    "MAX_EXCEPTION_NAME",
    "MAX_EXCEPTION_NAMES",
    "MAX_EXPRESSION_CHARS",
    "MAX_EXPRESSION_DEPTH",
    "MAX_EXPRESSION_NESTING",
    "MAX_FILE_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE",
    "MAX_MODEL",
    "MAX_NUMBER_CHARS",
    "MAX_SCHEMA_KEYS",
    "MAX_SECONDS",
    "MAX_STEPS",
    "MAX_STEP_ID",
    "MAX_TARGET",
    "MAX_TEAM_EXPRESSIONS",
    "MAX_TEAM_EXPRESSION_CHARS",
    "MAX_TEAM_NAME",
    "MAX_TEXT",
    "MAX_TOOLS",
    "MAX_URL",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
]

# --- the file and its YAML --------------------------------------------------------------

MAX_FILE_BYTES = 1024 * 1024
# Nodes as the document would be once expanded: an alias counts as the whole node it
# repeats, so a kilobyte of nested aliases ("billion laughs") is refused while composing.
# A 10,000-step team of one agent is about 50,000.
MAX_YAML_NODES = 100_000
# A team file nests six levels deep at most (workflow.steps[i].after[j]).
MAX_YAML_DEPTH = 32
# Digits, sign, point and exponent of one number: no setting needs more, and Python
# refuses to convert decimal integers of more than 4,300 digits.
MAX_NUMBER_CHARS = 50

# --- names, to the width of the columns that store them ---------------------------------

MAX_TEAM_NAME = 200  # troupe_executions.team, troupe_agents.team
MAX_AGENT_NAME = 200  # troupe_steps.agent, troupe_attempts.agent, troupe_agents.name
# troupe_steps.step_id; kept below the column's width since map items add a suffix.
MAX_STEP_ID = 100
MAX_TARGET = 200  # package.module:function
MAX_URL = 2_000
MAX_MODEL = 200  # an openai agent's model name
MAX_HEADERS = 50  # an http agent's headers
MAX_HEADER_VALUE = 4_000
MAX_TOOLS = 64  # an openai agent's tools
# An output schema's top-level keys; the YAML node bound holds the rest of it.
MAX_SCHEMA_KEYS = 1_000
MAX_EXCEPTION_NAME = 200  # an entry of retry_on / no_retry_on
MAX_EXCEPTION_NAMES = 100
MAX_TEXT = 20_000  # a description or a task (an instruction for the agent)

# --- sizes and durations ----------------------------------------------------------------

MAX_AGENTS = 1_000
MAX_STEPS = 10_000
# Any duration in seconds (a deadline, a heartbeat timeout, a slow call): 30 days. Beyond
# it a date computed from the setting may overflow, and no step can mean it.
MAX_SECONDS = 30 * 24 * 3600
