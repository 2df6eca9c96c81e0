"""Team-file validation: every rejection is one line naming the file, the field and the problem."""

from pathlib import Path

import pytest
import yaml

from orchestration.errors import TeamFileError
from orchestration.spec import Strategy
from orchestration.team_file import load_team, parse_team

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "code_audit" / "team.yaml"


def step(step_id, **fields):
    return {"id": step_id, "agent": "writer", **fields}


def team_yaml(strategy="dag", steps=None, agent=None, **top):
    data = {
        "name": "t",
        "agents": {"writer": {"target": "json:dumps", **(agent or {})}},
        "workflow": {"strategy": strategy, "steps": steps or [step("a")]},
        **top,
    }
    return yaml.safe_dump(data, sort_keys=False)


def rejection(text, **kwargs):
    with pytest.raises(TeamFileError) as info:
        parse_team(text, source="team.yaml", **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("team.yaml: "), message
    return message


def drop(path, text):
    """Remove one key (dotted path) from a team file."""
    data = yaml.safe_load(text)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[last]
    return yaml.safe_dump(data, sort_keys=False)


REJECTIONS = {
    "unknown agent": (
        team_yaml(steps=[step("a", agent="ghost")]),
        "workflow.steps[0].agent",
        "unknown agent 'ghost'",
    ),
    "duplicate id": (
        team_yaml(steps=[step("a"), step("a")]),
        "workflow.steps[1].id",
        "duplicate step id 'a'",
    ),
    "unknown after": (
        team_yaml(steps=[step("a", after=["zz"])]),
        "workflow.steps[0].after",
        "unknown step 'zz'",
    ),
    "self dependency": (
        team_yaml(steps=[step("a", after=["a"])]),
        "workflow.steps[0].after",
        "depends on itself",
    ),
    "malformed when": (
        team_yaml("conditional", [step("a", when="input.x >")]),
        "workflow.steps[0].when",
        "malformed expression `input.x >`",
    ),
    "when names unknown step": (
        team_yaml("conditional", [step("a", when="steps.zz.output > 1")]),
        "workflow.steps[0].when",
        "unknown step 'zz'",
    ),
    "when reads own result": (
        team_yaml("conditional", [step("a", when="steps.a.output > 1")]),
        "workflow.steps[0].when",
        "own result",
    ),
    "when reads later sequential step": (
        team_yaml("sequential", [step("a", when="steps.b.output > 1"), step("b")]),
        "workflow.steps[0].when",
        "step 'b' runs later",
    ),
    "when reads later pipeline step": (
        team_yaml("pipeline", [step("a", when="steps.b.output > 1"), step("b")]),
        "workflow.steps[0].when",
        "step 'b' runs later",
    ),
    "when reads a parallel step": (
        team_yaml("parallel", [step("a"), step("b", when="steps.a.output > 1")]),
        "workflow.steps[1].when",
        "step 'a' has no result yet",
    ),
    "target not module:function": (
        team_yaml(agent={"target": "json.dumps"}),
        "agents.writer.target",
        "must look like package.module:function",
    ),
    "max_attempts 0": (
        team_yaml(agent={"retry": {"max_attempts": 0}}),
        "agents.writer.retry.max_attempts",
        "greater than or equal to 1",
    ),
    "negative initial_delay": (
        team_yaml(agent={"retry": {"initial_delay": -0.5}}),
        "agents.writer.retry.initial_delay",
        "greater than or equal to 0",
    ),
    "negative max_delay": (
        team_yaml(agent={"retry": {"initial_delay": 0, "max_delay": -1}}),
        "agents.writer.retry.max_delay",
        "greater than or equal to 0",
    ),
    "backoff below 1": (
        team_yaml(agent={"retry": {"backoff": 0.5}}),
        "agents.writer.retry.backoff",
        "greater than or equal to 1",
    ),
    "max_delay below initial_delay": (
        team_yaml(agent={"retry": {"initial_delay": 5, "max_delay": 1}}),
        "agents.writer.retry.max_delay",
        "1 is below initial_delay 5",
    ),
    "timeout 0": (team_yaml(agent={"timeout": 0}), "agents.writer.timeout", "greater than 0"),
    "negative timeout": (
        team_yaml(agent={"timeout": -3}),
        "agents.writer.timeout",
        "greater than 0",
    ),
    "unknown top-level field": (team_yaml(colour="red"), "colour", "unknown field"),
    "unknown agent field": (
        team_yaml(agent={"model": "x"}),
        "agents.writer.model",
        "unknown field",
    ),
    "unknown step field": (
        team_yaml(steps=[step("a", colour="red")]),
        "workflow.steps[0].colour",
        "unknown field",
    ),
    "unknown retry field": (
        team_yaml(agent={"retry": {"tries": 3}}),
        "agents.writer.retry.tries",
        "unknown field",
    ),
    "missing name": (drop("name", team_yaml()), "name", "required field is missing"),
    "missing workflow": (drop("workflow", team_yaml()), "workflow", "required field is missing"),
    "missing target": (
        drop("agents.writer.target", team_yaml()),
        "agents.writer.target",
        "required field is missing",
    ),
    "missing step agent": (
        drop("workflow.steps.0.agent", team_yaml()),
        "workflow.steps[0].agent",
        "required field is missing",
    ),
    "bad strategy": (team_yaml("zigzag"), "workflow.strategy", "(got 'zigzag')"),
    "bad jitter": (
        team_yaml(agent={"retry": {"jitter": "wild"}}),
        "agents.writer.retry.jitter",
        "(got 'wild')",
    ),
}


@pytest.mark.parametrize(("text", "field", "problem"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_rejection_names_file_field_and_problem(text, field, problem):
    message = rejection(text)
    assert message.startswith(f"team.yaml: {field}: "), message
    assert problem in message


@pytest.mark.parametrize("strategy", ["sequential", "parallel", "pipeline"])
def test_after_needs_dag_or_conditional(strategy):
    message = rejection(team_yaml(strategy, [step("a"), step("b", after=["a"])]))
    assert message.startswith("team.yaml: workflow.steps[1].after: "), message
    assert f"not {strategy}" in message


def test_cycle_message_shows_the_cycle_path():
    steps = [step("a", after=["c"]), step("b", after=["a"]), step("c", after=["b"])]
    message = rejection(team_yaml(steps=steps))
    assert message == "team.yaml: workflow.steps: dependency cycle: a -> b -> c -> a"


def test_cycle_through_a_condition_is_rejected():
    steps = [step("a", when="steps.b.output > 1"), step("b", after=["a"])]
    message = rejection(team_yaml("conditional", steps))
    assert "dependency cycle:" in message
    assert "a -> b" in message or "b -> a" in message


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("nosuch.module:fn", "cannot import 'nosuch.module'"),
        ("json:nosuch", "module 'json' has no attribute 'nosuch'"),
    ],
)
def test_unimportable_target(target, problem):
    message = rejection(team_yaml(agent={"target": target}))
    assert message.startswith("team.yaml: agents.writer.target: "), message
    assert problem in message


def test_unimportable_target_passes_when_imports_are_skipped():
    spec = parse_team(team_yaml(agent={"target": "nosuch.module:fn"}), import_targets=False)
    assert spec.agents["writer"].target == "nosuch.module:fn"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: t\nagents: [a\n  b: c\n", "line 3, column 4"),
        ("name: t\n  bad: : x\n", "line 2, column 6"),
    ],
)
def test_invalid_yaml_gives_line_and_column(text, where):
    message = rejection(text)
    assert message.startswith(f"team.yaml: {where}: invalid YAML: "), message


@pytest.mark.parametrize("text", ["- name: t\n- agents: {}\n", "just a string\n", ""])
def test_document_must_be_a_mapping(text):
    assert "expected a mapping" in rejection(text)


def test_load_team_on_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(TeamFileError) as info:
        load_team(path)
    assert str(info.value) == f"{path}: file not found"


def test_load_team_reads_a_file(tmp_path):
    path = tmp_path / "team.yaml"
    path.write_text(team_yaml("pipeline", [step("a"), step("b")]), encoding="utf-8")
    spec = load_team(path)
    assert spec.strategy is Strategy.PIPELINE
    assert [s.id for s in spec.workflow.steps] == ["a", "b"]


def test_load_team_reports_the_path_it_was_given(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(team_yaml(steps=[step("a", agent="ghost")]), encoding="utf-8")
    with pytest.raises(TeamFileError) as info:
        load_team(path)
    assert str(info.value).startswith(f"{path}: workflow.steps[0].agent: ")


# timeout 8 + largest retry delay 2 * 2**(3 - 2) = 4 -> 12s; timeout 5 + 4 -> 9s.
RETRY = {"max_attempts": 3, "initial_delay": 2, "backoff": 2, "max_delay": 30, "jitter": "full"}


def test_visibility_bound_rejects_an_agent_that_could_outlive_the_message():
    message = rejection(team_yaml(agent={"timeout": 8, "retry": RETRY}), visibility_timeout=10)
    assert message.startswith("team.yaml: agents.writer.timeout: "), message
    assert "visibility timeout (10s)" in message
    assert "8s" in message and "4s" in message


def test_visibility_bound_accepts_an_agent_within_it():
    spec = parse_team(team_yaml(agent={"timeout": 5, "retry": RETRY}), visibility_timeout=10)
    assert spec.agents["writer"].timeout == 5


def test_consumer_timeout_bound_rejects_an_agent_that_could_outlive_the_message():
    message = rejection(team_yaml(agent={"timeout": 8, "retry": RETRY}), consumer_timeout=10)
    assert message.startswith("team.yaml: agents.writer.timeout: "), message
    assert "RabbitMQ's consumer timeout (10s)" in message
    assert "TROUPE_CONSUMER_TIMEOUT" in message


def test_consumer_timeout_bound_accepts_an_agent_within_it():
    spec = parse_team(team_yaml(agent={"timeout": 5, "retry": RETRY}), consumer_timeout=10)
    assert spec.agents["writer"].timeout == 5


def test_visibility_bound_is_not_applied_without_a_timeout():
    spec = parse_team(team_yaml(agent={"timeout": 500, "retry": RETRY}))
    assert spec.agents["writer"].timeout == 500


@pytest.mark.parametrize(
    ("strategy", "steps"),
    [
        ("sequential", [step("a"), step("b", when="steps.a.output > 1")]),
        ("pipeline", [step("a"), step("b", when="steps.a.output > 1")]),
        ("parallel", [step("a", when="input.go == true"), step("b")]),
        ("dag", [step("a"), step("b", after=["a"]), step("c", after=["a", "b"])]),
        ("conditional", [step("b", when="steps.a.output == 'x'"), step("a")]),
    ],
)
def test_valid_teams_load(strategy, steps):
    spec = parse_team(team_yaml(strategy, steps), source="team.yaml")
    assert spec.strategy == strategy
    assert [s.id for s in spec.workflow.steps] == [s["id"] for s in steps]


def test_example_code_audit_team_loads():
    spec = load_team(EXAMPLE)
    assert spec.name == "code-audit"
    assert spec.strategy is Strategy.CONDITIONAL
    assert [s.id for s in spec.workflow.steps] == ["syntax", "todos", "secrets", "fix", "report"]
