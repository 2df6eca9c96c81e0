"""Troupe: run teams of AI agents reliably on Celery."""

from orchestration.agents.call import AgentCall, AgentResult, Usage
from orchestration.client.handle import ExecutionHandle
from orchestration.client.report import ExecutionReport, StepReport
from orchestration.client.runtime import Runtime, configure
from orchestration.client.team import Team, execution
from orchestration.errors import (
    PermanentAgentError,
    TeamFileError,
    TransientAgentError,
    TroupeError,
)
from orchestration.settings import Settings

__all__ = [
    "AgentCall",
    "AgentResult",
    "ExecutionHandle",
    "ExecutionReport",
    "PermanentAgentError",
    "Runtime",
    "Settings",
    "StepReport",
    "Team",
    "TeamFileError",
    "TransientAgentError",
    "TroupeError",
    "Usage",
    "configure",
    "execution",
]
