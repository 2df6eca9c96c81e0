"""Troupe: run teams of AI agents reliably on Celery."""

from orchestration.agents.call import AgentCall, AgentResult, ToolCall, Usage
from orchestration.agents.team_channel import Handoff, Message
from orchestration.client.handle import ExecutionHandle
from orchestration.client.report import ExecutionReport, StepReport
from orchestration.client.runtime import Runtime, configure
from orchestration.client.team import Team, execution
from orchestration.errors import (
    BudgetExceeded,
    PermanentAgentError,
    TeamFileError,
    TransientAgentError,
    TroupeError,
)
from orchestration.settings import Settings
from orchestration.spec import Budget

__all__ = [
    "AgentCall",
    "AgentResult",
    "Budget",
    "BudgetExceeded",
    "ExecutionHandle",
    "ExecutionReport",
    "Handoff",
    "Message",
    "PermanentAgentError",
    "Runtime",
    "Settings",
    "StepReport",
    "Team",
    "TeamFileError",
    "ToolCall",
    "TransientAgentError",
    "TroupeError",
    "Usage",
    "configure",
    "execution",
]
