"""Following an execution until it ends: on a terminal, a table of its steps redrawn in
place (rich Live); elsewhere, a plain line per change of a step (render.ProgressPrinter),
which logs and pipes read better."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestration.cli.render import _STYLE, ProgressPrinter
from orchestration.client.handle import ExecutionHandle
from orchestration.client.report import ExecutionReport, StepReport

# Steps still to be decided come first when the table is longer than the screen.
_ACTIVE = ("running", "retrying")
_UNDECIDED = ("running", "retrying", "pending")
# Tokens and cost need every attempt read: at most once a second, when a step ended.
_USAGE_EVERY = 1.0


class LiveSteps:
    """The live table: step, state, attempt, agent, duration and cost of each step.

    Called with the report of every poll. A running step's duration counts from when it
    started (``started``: the moments known when the view was opened; a step seen
    starting later counts from then)."""

    def __init__(
        self,
        console: Console,
        handle: ExecutionHandle,
        *,
        started: Mapping[str, datetime] | None = None,
    ) -> None:
        self._console = console
        self._handle = handle
        self._started = dict(started or {})
        self._costs: dict[str, float | None] = {}
        self._decided: set[str] = set()
        self._usage_read = 0.0
        self._report: ExecutionReport | None = None
        self.live: Live | None = None

    def __call__(self, report: ExecutionReport) -> None:
        stamp = _now()
        decided = {step.id for step in report.steps if step.status not in _UNDECIDED}
        for step in report.steps:
            if step.status in _ACTIVE:
                self._started.setdefault(step.id, stamp)
        if decided - self._decided and time.monotonic() - self._usage_read >= _USAGE_EVERY:
            self._usage_read = time.monotonic()
            self._decided = decided
            self._costs = {
                step.id: step.usage.cost_usd
                for step in self._handle.report().steps
                if step.usage is not None
            }
        self._report = report
        if self.live is not None:
            self.live.update(self.render(), refresh=True)

    def render(self) -> RenderableType:
        report = self._report
        if report is None:
            return Text(f"execution {self._handle.execution_id}: waiting for its first step")
        room = max(8, self._console.size.height - 6)
        shown = _chosen(report.steps, room)
        table = Table(title=f"{report.team} · {report.execution_id}", title_justify="left")
        for column in ("step", "state", "attempt", "agent", "duration", "cost (USD)"):
            table.add_column(column, justify="right" if column == "cost (USD)" else "left")
        for step in report.steps:
            if step.id in shown:
                table.add_row(
                    step.id,
                    Text(step.status, style=_STYLE.get(step.status, "")),
                    str(step.attempts) if step.attempts else "",
                    step.agent,
                    self._duration(step),
                    _cost(self._costs[step.id]) if step.id in self._costs else "",
                )
        hidden = len(report.steps) - len(shown)
        if not hidden:
            return table
        counts: dict[str, int] = {}
        for step in report.steps:
            if step.id not in shown:
                counts[step.status] = counts.get(step.status, 0) + 1
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        return Group(table, Text(f"… and {hidden} more steps: {summary}", style="dim"))

    def _duration(self, step: StepReport) -> str:
        if step.duration_ms is not None and step.status not in _UNDECIDED:
            return f"{step.duration_ms / 1000:.2f}s"
        started = self._started.get(step.id)
        if started is None or step.status not in _ACTIVE:
            return ""
        return f"{max(0.0, (_now() - started).total_seconds()):.1f}s…"


def _now() -> datetime:
    return datetime.now(UTC)


def _chosen(steps: list[StepReport], room: int) -> set[str]:
    """Which steps fit: every one if they all do, else the running ones, then the failed,
    then the latest decided, then the pending, up to ``room``."""
    if len(steps) <= room:
        return {step.id for step in steps}

    def rank(indexed: tuple[int, StepReport]) -> tuple[int, int]:
        index, step = indexed
        if step.status in _ACTIVE:
            return (0, index)
        if step.status == "failed":
            return (1, index)
        if step.status == "pending":
            return (3, index)
        return (2, -index)

    return {step.id for _, step in sorted(enumerate(steps), key=rank)[:room]}


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.6f}"


def follow(
    handle: ExecutionHandle,
    console: Console,
    *,
    timeout: float | None,
    quiet: bool = False,
    started: Mapping[str, datetime] | None = None,
    embedded: bool = False,
) -> ExecutionReport:
    """Wait for the execution to end and return its report, showing its steps as it
    goes: a live table on a terminal, a line per change elsewhere, nothing if
    ``quiet``. WaitTimeout after ``timeout`` seconds."""
    if quiet:
        return handle.wait(timeout=timeout)
    if not console.is_terminal or console.is_dumb_terminal:
        printer = ProgressPrinter(console, embedded=embedded)
        return handle.wait(timeout=timeout, on_progress=printer)
    view = LiveSteps(console, handle, started=started)
    # Transient: once it ends, the final table printed after it says it all.
    with Live(view.render(), console=console, auto_refresh=False, transient=True) as live:
        view.live = live
        return handle.wait(timeout=timeout, on_progress=view)
