"""Troupe: run teams of AI agents reliably on Celery."""

from orchestration.agents.call import AgentCall, AgentResult, Usage
from orchestration.errors import (
    PermanentAgentError,
    TeamFileError,
    TransientAgentError,
    TroupeError,
)
from orchestration.handle import ExecutionHandle
from orchestration.report import ExecutionReport, StepReport
from orchestration.team import Team, execution

__all__ = [
    "AgentCall",
    "AgentResult",
    "ExecutionHandle",
    "ExecutionReport",
    "PermanentAgentError",
    "StepReport",
    "Team",
    "TeamFileError",
    "TransientAgentError",
    "TroupeError",
    "Usage",
    "execution",
]
