"""Human-readable output: live step progress, the plan, and the final table (rich)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestration.client.report import ApprovalReport, AttemptReport, ExecutionReport
from orchestration.spec import TeamSpec
from workflows.aggregation import JoinRule
from workflows.plan import ExecutionPlan

_STYLE = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "skipped": "dim",
    "running": "cyan",
    "retrying": "magenta",
    "pending": "dim",
    "waiting_approval": "bold yellow",
    "approved": "green",
    "rejected": "yellow",
    # An attempt's outcome.
    "success": "green",
    "error": "red",
    "timeout": "red",
    "lost": "yellow",
}


class ProgressPrinter:
    """Prints each step's transitions as the execution advances (called on every poll)."""

    def __init__(self, console: Console, *, embedded: bool = False) -> None:
        self._console = console
        self._seen: dict[str, tuple[str, int]] = {}
        # How a waiting approval can be decided depends on where the worker lives.
        self._embedded = embedded
        self._decided: set[str] = set()

    def __call__(self, report: ExecutionReport) -> None:
        for step in report.steps:
            approval = step.approval
            if approval is not None and approval.decision and step.id not in self._decided:
                # Said once, whatever the poll saw next (the step may have run already).
                self._decided.add(step.id)
                self._console.print(self._decision(step.id, step.agent, approval))
            state = (step.status, step.attempts)
            if self._seen.get(step.id) == state:
                continue
            previous = self._seen.get(step.id)
            self._seen[step.id] = state
            if step.status == "pending" and (previous is None or approval is not None):
                continue  # not started yet, or decided and on its way to run
            self._console.print(
                self._line(
                    step.id,
                    step.agent,
                    step.status,
                    step.attempts,
                    step.duration_ms,
                    step.error,
                    report.reasons.get(step.id),
                    step.approval,
                )
            )
            if step.status == "waiting_approval":
                self._console.print(self._how_to_decide(report.execution_id, step.id))

    @staticmethod
    def _decision(step_id: str, agent: str, approval: ApprovalReport) -> Text:
        text = Text()
        decision = approval.decision or ""
        text.append(f"{decision:>9} ", style=_STYLE.get(decision, ""))
        text.append(step_id, style="bold")
        text.append(f" ({agent}) ", style="dim")
        text.append(approval_text(approval))
        return text

    def _how_to_decide(self, execution_id: str, step_id: str) -> Text:
        if self._embedded:
            # The in-memory broker lives in this process: no other can send the step on.
            hint = (
                "          embedded run: only this process can decide it "
                "(ExecutionHandle.approve), so it takes its timeout here; with a broker "
                "(TROUPE_BROKER_URL), decide with `manage.py approve`"
            )
        else:
            hint = (
                f"          decide: python manage.py approve {execution_id} {step_id} "
                "[--reject] [--comment TEXT] [--as NAME]"
            )
        return Text(hint, style="dim")

    @staticmethod
    def _line(
        step_id: str,
        agent: str,
        status: str,
        attempts: int,
        duration_ms: int | None,
        error: str | None,
        reason: str | None,
        approval: ApprovalReport | None = None,
    ) -> Text:
        text = Text()
        text.append(f"{status:>9} ", style=_STYLE.get(status, ""))
        text.append(step_id, style="bold")
        text.append(f" ({agent})", style="dim")
        if status == "running" and attempts > 1:
            text.append(f" attempt {attempts}")
        elif status == "retrying" and reason and reason.startswith(WAITING):
            text.append(f": {reason}", style="dim")
        elif status == "retrying":
            text.append(f" attempt {attempts} failed: {error}; retrying")
        elif status == "completed":
            text.append(f" in {duration_ms} ms" if duration_ms is not None else "")
            if attempts > 1:
                text.append(f" after {attempts} attempts")
        elif status == "failed":
            text.append(f" after {attempts} attempt{'s' if attempts != 1 else ''}: {error}")
        elif status in ("skipped", "cancelled") and reason:
            text.append(f": {reason}", style="dim")
        elif status == "waiting_approval" and approval is not None:
            text.append(f": {approval_text(approval)}")
        return text


def approval_text(approval: ApprovalReport) -> str:
    """A step's approval in one line: what it waits for, or what was decided."""
    if approval.decision is None:
        then = f"; then {approval.on_timeout}" if approval.on_timeout else ""
        return f"{approval.prompt} (waiting until {_moment(approval.timeout_at)}{then})"
    said = f": {approval.comment}" if approval.comment else ""
    return f"{approval.decision} by {approval.decided_by}{said}"


def _moment(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# How a step waiting for capacity explains itself (workers/delegation.py).
WAITING = "waiting for capacity"


def print_result(console: Console, report: ExecutionReport) -> None:
    table = Table(title=f"{report.team} · {report.execution_id}", title_justify="left")
    for column in ("step", "agent", "status", "attempts", "ms", "error / reason"):
        table.add_column(column)
    for step in report.steps:
        reason = report.reasons.get(step.id)
        waiting = step.status == "retrying" and reason and reason.startswith(WAITING)
        table.add_row(
            step.id,
            step.agent,
            Text(step.status, style=_STYLE.get(step.status, "")),
            str(step.attempts),
            "" if step.duration_ms is None else str(step.duration_ms),
            (reason if waiting else step.error or reason)
            or (approval_text(step.approval) if step.approval else ""),
        )
    console.print(table)
    if report.handoffs:
        print_handoffs(console, report)
    if report.usage is not None:
        print_usage(console, report)
    style = _STYLE.get(report.status, "")
    console.print(Text(f"execution {report.status}", style=f"bold {style}"))
    if report.error:
        console.print(Text(report.error, style="red"))
    console.print("output:")
    console.print_json(json.dumps(report.output, ensure_ascii=False, default=str))


def print_attempts(console: Console, attempts: list[AttemptReport]) -> None:
    """The audit trail, one row per attempt; tool calls under their attempt."""
    table = Table(title="attempts", title_justify="left")
    for column in ("step", "#", "agent", "outcome", "ms", "tokens", "error / tool calls"):
        table.add_column(column)
    for attempt in attempts:
        usage = attempt.usage or {}
        # A failed call may record only where it went (its endpoint).
        counted = "tokens_in" in usage
        tokens = f"{usage.get('tokens_in', 0):,}/{usage.get('tokens_out', 0):,}" if counted else ""
        table.add_row(
            attempt.step,
            str(attempt.attempt),
            attempt.agent,
            Text(attempt.outcome or "running", style=_STYLE.get(attempt.outcome or "", "")),
            "" if attempt.duration_ms is None else str(attempt.duration_ms),
            tokens,
            attempt.error or "",
        )
        for call in attempt.tool_calls or ():
            arguments = json.dumps(call.get("arguments"), ensure_ascii=False, default=str)
            detail = f"↳ {call.get('tool')}({arguments[:80]}) {call.get('outcome')}"
            if call.get("error"):
                detail += f": {call['error']}"
            table.add_row("", "", "", "", str(call.get("duration_ms", "")), "", detail)
    console.print(table)


def print_handoffs(console: Console, report: ExecutionReport) -> None:
    """Every handoff taken or refused, with why."""
    table = Table(title="handoffs", title_justify="left")
    for column in ("step", "path", "outcome", "confidence", "reason / refused because"):
        table.add_column(column)
    for handoff in report.handoffs:
        table.add_row(
            handoff.step,
            " → ".join(handoff.path),
            Text(handoff.outcome, style="green" if handoff.outcome == "taken" else "yellow"),
            "" if handoff.confidence is None else f"{handoff.confidence:.0%}",
            handoff.detail or handoff.reason or "",
        )
    console.print(table)


def print_usage(console: Console, report: ExecutionReport) -> None:
    """Tokens and cost per agent, then the total."""
    table = Table(title="usage", title_justify="left")
    for column in ("agent", "tokens in", "tokens out", "cost (USD)"):
        table.add_column(column, justify="left" if column == "agent" else "right")
    rows = [*report.usage_by_agent.items()]
    if report.usage is not None:
        rows.append(("total", report.usage))
    for name, usage in rows:
        table.add_row(
            Text(name, style="bold" if name == "total" else ""),
            f"{usage.tokens_in:,}",
            f"{usage.tokens_out:,}",
            _cost(usage.cost_usd),
        )
    console.print(table)


def _cost(value: float | None) -> str:
    # Unknown (a model with no price) is not free: say so rather than print 0.
    return "unknown" if value is None else f"{value:.6f}"


def print_plan(console: Console, spec: TeamSpec, plan: ExecutionPlan, source: str) -> None:
    console.print(Text(f"{source}: team {spec.name!r} is valid", style="green"))
    # Depth: the longest chain of dependencies before a step. Steps start when their own
    # dependencies are decided, not a depth at a time.
    console.print(
        f"strategy: {plan.strategy.value}; {len(plan.steps)} steps, critical path "
        f"{len(plan.levels)} step{'s' if len(plan.levels) != 1 else ''} long"
    )
    table = Table(show_lines=False)
    for column in (
        "depth",
        "step",
        "agent",
        "after",
        "when / for each / join / approval",
        "time limit",
        "retry",
    ):
        table.add_column(column)
    approvals = {s.id: s.approval for s in spec.steps if s.approval is not None}
    for step in sorted(plan.steps, key=lambda s: (s.level, s.position)):
        agent = spec.agents.get(step.agent)
        approval = approvals.get(step.id)
        limits = ("", "")
        if agent is not None:
            policy = agent.retry
            limits = (
                f"{agent.timeout:g}s",
                f"{policy.max_attempts}× {policy.initial_delay:g}→{policy.max_delay:g}s "
                f"{policy.jitter.value}",
            )
        table.add_row(
            str(step.level),
            step.id,
            step.agent,
            ", ".join(step.deps),
            " ".join(
                part
                for part in (
                    step.when or "",
                    f"for each {step.map.for_each}" if step.map is not None else "",
                    f"approval: {approval.timeout:g}s, then {approval.on_timeout}"
                    if approval is not None
                    else "",
                    join_text(step.join) if step.join is not None else "",
                )
                if part
            ),
            *limits,
        )
    console.print(table)
    outputs = ", ".join(plan.outputs_from)
    console.print(f"output from: {outputs}")
    if spec.handoffs:
        rules = Table(title=f"handoff rules (at most {spec.max_handoff_depth} in a row)")
        for column in ("from", "to", "triggers", "threshold", "passes"):
            rules.add_column(column)
        for rule in spec.handoffs:
            rules.add_row(
                rule.from_agent,
                rule.to,
                ", ".join(rule.triggers),
                f"{rule.threshold:g}",
                ", ".join(rule.pass_context),
            )
        console.print(rules)


def join_text(join: JoinRule) -> str:
    """A join's rule in a few words: "join majority of 'verdict', quorum 2, deadline 5s"."""
    parts = [f"join {join.aggregate}"]
    if join.field is not None:
        parts[0] += f" of {join.field!r}"
    if join.priority:
        parts[0] += f" ({' > '.join(join.priority)})"
    if join.reducer is not None:
        parts[0] += f" by {join.reducer!r}"
    if join.quorum is not None:
        parts.append(f"quorum {join.quorum}")
    if join.deadline is not None:
        parts.append(f"deadline {join.deadline:g}s")
    if join.tolerate_failures:
        parts.append("tolerates failures")
    return ", ".join(parts)


def json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
