"""An agent goes down; how long until its breaker rejects a dispatch (shared by the
breaker benchmark and the recovery script)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.env import BenchError
from bench.teams import switchable_team
from bench.troupe_client import TroupeClient, stamp


@dataclass(frozen=True)
class BreakerTrip:
    agent: str
    # From the moment the agent went down (its flag file appeared) to the start of the
    # first dispatch rejected with CircuitOpen.
    down_to_rejection: float
    # From the end of the failed call that opened the breaker to that rejection.
    open_to_rejection: float
    # Failed calls before the first rejection (the threshold, if all went as designed).
    failures: int


def switchable_input(workdir: Path, agent: str) -> dict[str, str]:
    return {"down": str(workdir / f"{agent}.down"), "calls": str(workdir / f"{agent}.calls")}


def trip(
    troupe: TroupeClient,
    workdir: Path,
    agent: str,
    *,
    threshold: int,
    timeout: float,
    reset_timeout: float = 3600.0,
) -> BreakerTrip:
    """Sequential traffic (one single-step execution at a time): two successful calls,
    then the agent goes down and executions go on until one is rejected."""
    team = troupe.team(switchable_team(agent, threshold, reset_timeout))
    work = switchable_input(workdir, agent)
    for _ in range(2):
        troupe.run(team, work, timeout=timeout)
    went_down = time.time()
    Path(work["down"]).touch()
    for _ in range(threshold + 5):
        timing = troupe.run(team, work, timeout=timeout, expect="failed")
        if "CircuitOpen" in troupe.step_errors(timing.execution_ids[0]):
            break
    else:
        raise BenchError(f"agent {agent}: no dispatch rejected after {threshold + 5} failures")
    rows = troupe.attempts(agent=agent)
    first = next(i for i, row in enumerate(rows) if row["outcome"] == "rejected")
    opening = rows[first - 1]
    rejected_at = stamp(rows[first]["started_at"])
    return BreakerTrip(
        agent=agent,
        down_to_rejection=rejected_at - went_down,
        open_to_rejection=rejected_at - stamp(opening["finished_at"]),
        failures=sum(1 for row in rows[:first] if row["outcome"] != "success"),
    )
