"""Human-readable output of an execution's context, a memory key's history and its
messages (rich). Values are shown as JSON on one line, cut short; ``--json`` has them
whole."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestration.client.context import ContextReport, MemoryWriteReport, MessageReport

# The characters of a value a table shows.
_SHOWN = 120


def shown(value: Any) -> Text:
    """A value as one line of JSON, cut at _SHOWN characters (never read as markup)."""
    line = json.dumps(value, ensure_ascii=False, default=str)
    return Text(line if len(line) <= _SHOWN else line[: _SHOWN - 1] + "…")


def print_context(console: Console, report: ContextReport) -> None:
    if report.at is None:
        title = f"execution {report.execution_id} · memory version {report.memory_version}"
    else:
        seen = report.at
        attempt = "never ran" if seen.attempt is None else f"attempt {seen.attempt}"
        version = (
            "read no memory"
            if seen.context_version is None
            else f"memory version {seen.context_version}"
        )
        title = f"execution {report.execution_id} as step {seen.step} saw it ({attempt}, {version})"
    console.print(Text(title, style="bold"))
    console.print(Text("input: ") + shown(report.input))
    outputs = Table(title="outputs", title_justify="left")
    outputs.add_column("step")
    outputs.add_column("output")
    for step_id, output in report.outputs.items():
        outputs.add_row(Text(step_id), shown(output))
    console.print(outputs)
    if report.memory is None:
        console.print(Text("memory: not read by this step", style="dim"))
        return
    memory = Table(title="memory", title_justify="left")
    if report.keys:
        for column in ("key", "value", "version", "rule", "last writer", "at"):
            memory.add_column(column)
        for key in report.keys:
            memory.add_row(
                Text(key.key),
                shown(key.value),
                str(key.version),
                key.rule,
                Text(f"{key.writer_step} #{key.writer_attempt}"),
                key.updated_at,
            )
    else:
        memory.add_column("key")
        memory.add_column("value")
        for name, value in report.memory.items():
            memory.add_row(Text(name), shown(value))
    console.print(memory)


def print_history(console: Console, key: str, writes: list[MemoryWriteReport]) -> None:
    table = Table(title=f"history of {key!r}", title_justify="left")
    for column in ("version", "memory version", "writer", "at", "rule", "value", "previous"):
        table.add_column(column)
    for write in writes:
        table.add_row(
            str(write.version),
            str(write.memory_version),
            Text(f"{write.writer_step} #{write.writer_attempt}"),
            write.at,
            write.rule,
            shown(write.value),
            shown(write.previous),
        )
    console.print(table)
    if not writes:
        console.print(Text(f"{key!r} was never written", style="dim"))


def print_messages(console: Console, messages: list[MessageReport]) -> None:
    table = Table(title="messages", title_justify="left")
    for column in ("id", "at", "from", "to", "type", "content", "reply to"):
        table.add_column(column)
    for message in messages:
        table.add_row(
            str(message.id),
            message.at,
            Text(f"{message.sender} ({message.sender_step})"),
            Text(message.to if message.to is not None else "everyone"),
            Text(message.type),
            shown(message.content),
            "" if message.reply_to is None else str(message.reply_to),
        )
    console.print(table)
