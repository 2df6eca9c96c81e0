"""A user's project folder, as most Celery projects have one: its own ``celeryconfig.py``
next to its agents and its team file. Troupe run from there must use its own settings.

The folder's ``celeryconfig.py`` leaves a marker file when imported, and would, if used,
switch off late acknowledgement and point Celery at another broker.
"""

from __future__ import annotations

from pathlib import Path

import yaml

MARKER = "celeryconfig-was-imported"
AGENTS_MODULE = "project_agents"

_CELERYCONFIG = f'''"""This project's own Celery settings (not Troupe's)."""

from pathlib import Path

Path(__file__).with_name({MARKER!r}).write_text("imported\\n")

broker_url = "memory://localhost/"
task_acks_late = False
task_default_queue = "this-project"
'''

_AGENTS = '''"""This project's agents."""


def greet(call):
    return f"hello {call.input}"
'''


def write_project(folder: Path, steps: int = 4) -> Path:
    """Fill ``folder`` with celeryconfig.py, an agent module and a parallel team of
    ``steps`` greetings; return the team file's path."""
    (folder / "celeryconfig.py").write_text(_CELERYCONFIG, encoding="utf-8")
    (folder / f"{AGENTS_MODULE}.py").write_text(_AGENTS, encoding="utf-8")
    team = {
        "name": "project-greetings",
        "agents": {"greeter": {"kind": "python", "target": f"{AGENTS_MODULE}:greet"}},
        "workflow": {
            "strategy": "parallel",
            "steps": [{"id": f"g{i}", "agent": "greeter"} for i in range(steps)],
        },
    }
    path = folder / "team.yaml"
    path.write_text(yaml.safe_dump(team, sort_keys=False), encoding="utf-8")
    return path


def expected_output(steps: int = 4, name: str = "world") -> dict[str, str]:
    return {f"g{i}": f"hello {name}" for i in range(steps)}
