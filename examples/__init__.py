"""Example teams, shipped in the wheel with the inputs they run on, so an installed
Troupe runs them from any folder: ``troupe run-team --example code_audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent

# Each example: its folder here holds team.yaml, and this is the input it runs on when
# given none (a path in that folder).
SAMPLE_INPUTS: Final = {
    "code_audit": "sample_project",
    "pr_review": "sample.diff",
}


def team_file(name: str) -> Path:
    """The team file of the example ``name`` (one of ``SAMPLE_INPUTS``)."""
    return HERE / name / "team.yaml"


def sample_input(name: str) -> str:
    """The input the example ``name`` runs on by default: an absolute path, so it names
    the same file whatever folder the command runs from."""
    return str(HERE / name / SAMPLE_INPUTS[name])
