"""docker-compose.yml and the Dockerfile, checked as far as a machine without Docker
can: the file parses; it runs Redis, PostgreSQL, the migration, two workers, one beat
and Flower with auth, each long-running service with a health check and every port on
127.0.0.1; every command is a real `troupe`/`manage.py` command whose options parse
(and whose `--help` runs); every TROUPE_* variable is a setting; the health checks'
commands parse; the Dockerfile copies what exists and runs `troupe` from the wheel.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Any

import click
import pytest
import yaml

from orchestration.cli.main import cli
from orchestration.settings import Settings
from tests.support.services import MANAGE, PYTHON, ROOT, subprocess_env

pytestmark = pytest.mark.timeout(120)

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SETTINGS = {f"TROUPE_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    found: dict[str, dict[str, Any]] = data["services"]
    return found


def troupe_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the Troupe image (whose command is Troupe's CLI)."""
    return {name: spec for name, spec in services.items() if "build" in spec}


def parse_cli(args: list[str]) -> tuple[str, ...]:
    """Parse ``args`` as Troupe's command line without running anything: the names of
    the command they run (e.g. ("db", "upgrade")), or click's usage error. Troupe's
    groups take no options of their own: a group's first argument names its command."""
    command: click.Command = cli
    names: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group):
        name, *rest = rest
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"no command {name!r} in {args}"
        names.append(name)
        command = found
    command.make_context(" ".join(names), rest)
    return tuple(names)


def test_the_set_of_services(services: dict[str, dict[str, Any]]) -> None:
    troupe = troupe_services(services)
    assert {"redis", "postgres"} <= set(services)
    by_command = {name: spec["command"][0] for name, spec in troupe.items()}
    assert sorted(by_command.values()) == ["beat", "db", "flower", "worker"], by_command
    worker = next(spec for spec in troupe.values() if spec["command"][0] == "worker")
    assert worker["deploy"]["replicas"] == 2
    beat = next(spec for spec in troupe.values() if spec["command"][0] == "beat")
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    migrate = next(spec for spec in troupe.values() if spec["command"][:2] == ["db", "upgrade"])
    assert migrate["restart"] == "no"
    assert {"redis", "postgres"} <= set(migrate["depends_on"])
    for spec in (worker, beat):
        assert spec["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_flower_has_basic_auth_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    flower = next(
        spec for spec in troupe_services(services).values() if spec["command"][0] == "flower"
    )
    auth = flower["environment"]["TROUPE_FLOWER_BASIC_AUTH"]
    # Required: compose refuses to start without it, instead of serving Flower open.
    assert auth.startswith("${TROUPE_FLOWER_BASIC_AUTH:?"), auth


def test_ports_are_on_loopback_and_services_have_health_checks(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        if spec.get("restart") == "no":
            continue  # a one-shot: the migration
        test = spec.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), (name, spec.get("healthcheck"))


def test_every_troupe_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    environments = [spec.get("environment", {}) for spec in troupe_services(services).values()]
    environments.append(data["x-troupe"]["environment"])
    names = {name for environment in environments for name in environment}
    assert names, "no environment at all"
    assert {name for name in names if name.startswith("TROUPE_")} == names, names
    assert names <= SETTINGS, names - SETTINGS


def test_every_command_is_a_real_command(services: dict[str, dict[str, Any]]) -> None:
    commands = [spec["command"] for spec in troupe_services(services).values()]
    for spec in services.values():
        test = spec.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "troupe"]:
            commands.append(test[2:])
    # Their options parse, without running anything.
    paths = {parse_cli(list(args)) for args in commands}
    assert paths == {("db", "upgrade"), ("worker",), ("beat",), ("flower",)}, paths
    # And each runs as `manage.py COMMAND --help`, as a user would type it.
    env = subprocess_env()
    running = {
        path: subprocess.Popen(
            [PYTHON, str(MANAGE), *path, "--help"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in paths
    }
    for path, process in running.items():
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, (path, stderr)
        assert stdout.startswith(f"Usage: manage.py {' '.join(path)} "), (path, stdout)


def test_the_health_checks_parse(services: dict[str, dict[str, Any]]) -> None:
    checks = {
        name: spec["healthcheck"]["test"]
        for name, spec in services.items()
        if "healthcheck" in spec
    }
    worker = shlex.split(checks["worker"][1].replace("$$HOSTNAME", "nowhere"))
    assert worker[:3] == ["celery", "-A", "workers.app"], worker
    # Celery's own command line parses them; with no broker (the in-memory one, here)
    # nobody answers: exit 69, not 2 (a usage error).
    assert worker[-2] == "--timeout"
    quick = [*worker[1:-1], "0.5"]
    result = subprocess.run(
        [sys.executable, "-m", "celery", *quick],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 69, result
    flower = checks["flower"]
    assert flower[1:3] == ["python", "-c"]
    compile(flower[3], "<flower healthcheck>", "exec")
    assert "/healthcheck" in flower[3]


def test_the_dockerfile_installs_the_wheel_and_runs_troupe() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    for line in instructions:
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _target = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), line
    assert 'ENTRYPOINT ["troupe"]' in instructions
    assert any(line.startswith("RUN pip wheel --no-deps") for line in instructions)
    assert any(line.startswith("RUN pip install /dist/") for line in instructions)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] != "root"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "tests"} <= set(ignored)
