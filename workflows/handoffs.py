"""Handoffs: when a step's task calls for another agent, and what that agent is told.

A rule names an agent (``from``), a target (``to``) and triggers: words and phrases.
Each trigger found in the task counts once, matched as whole words, ignoring case and
accents ("Criar copy para landing page" matches "copy" and "landing page"). With ``m``
triggers found, the confidence is

    confidence = 1 - 0.5 × 0.3^(m - 1)        (0 when none is found)

so one trigger gives 0.50, two 0.85, three 0.96, four 0.99: a single word is a weak
sign, each further one makes a stray match less likely. A rule fires when its
confidence reaches its threshold (0.5 by default); of several rules that fire, the
most confident wins, then the first declared.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Rule(Protocol):
    """What matching needs of a declared rule (``orchestration.spec.HandoffRule``)."""

    @property
    def from_agent(self) -> str: ...
    @property
    def to(self) -> str: ...
    @property
    def triggers(self) -> tuple[str, ...]: ...
    @property
    def threshold(self) -> float: ...
    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True)
class Match:
    rule_index: int
    to: str
    confidence: float
    matched: tuple[str, ...]
    reason: str


def normalize(text: str) -> str:
    """Lower case, accents removed, runs of anything but letters and digits as one
    space: "Criação de Conteúdo!" → "criacao de conteudo"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.findall(r"[^\W_]+", plain))


def confidence(matches: int) -> float:
    if matches <= 0:
        return 0.0
    return 1.0 - 0.5 * 0.3 ** (matches - 1)


def matched_triggers(task: str, triggers: Iterable[str]) -> tuple[str, ...]:
    padded = f" {normalize(task)} "
    return tuple(t for t in triggers if (n := normalize(t)) and f" {n} " in padded)


def detect(agent: str, task: str | None, rules: Sequence[Rule]) -> Match | None:
    """The handoff the rules call for when ``agent`` gets ``task``, if any."""
    if not task:
        return None
    best: Match | None = None
    for index, rule in enumerate(rules):
        if rule.from_agent != agent:
            continue
        found = matched_triggers(task, rule.triggers)
        score = confidence(len(found))
        if found and score >= rule.threshold and (best is None or score > best.confidence):
            reason = rule.reason or f"the task mentions {', '.join(found)}"
            best = Match(index, rule.to, round(score, 4), found, reason)
    return best


def refusal(path: Sequence[str], target: str, max_depth: int) -> str | None:
    """Why a handoff from the last agent of ``path`` to ``target`` is refused, if it is:
    a loop (the target is on the path already) or one handoff too many."""
    if target in path:
        return f"handoff loop: {' → '.join([*path, target])}"
    if len(path) > max_depth:
        return f"handoff depth {len(path)} would exceed max_handoff_depth {max_depth}"
    return None


def handoff_prompt(
    *, caller: str, target: str, reason: str, confidence: float | None, task: str | None
) -> str:
    """The structured prompt the target gets as its task."""
    lines = [
        "## Handoff",
        "",
        f"**From agent:** {caller}",
        f"**To agent:** {target}",
        f"**Reason:** {reason}",
    ]
    if confidence is not None:
        lines.append(f"**Confidence:** {confidence:.0%}")
    lines += [
        "",
        "**Original task:**",
        task or "(none)",
        "",
        "---",
        "",
        f"Agent {caller} passed this task to you, agent {target}, for your specialism. "
        "Carry it out and give the result it asks for.",
    ]
    return "\n".join(lines)


def handoff_item(task: str, value: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """What a handoff step's row keeps as its item: its task, its input, and the record
    of the handoff (caller, target, reason, confidence, path, context passed)."""
    return {"task": task, "input": value, "handoff": meta}
