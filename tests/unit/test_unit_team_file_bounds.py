"""Hostile team files: whatever a file holds, loading and validating it ends quickly, in
bounded memory, with exit 2 and one short line; never an internal error or a traceback.

The corpus is tests/corpus/hostile/ (small files) and tests/support/hostile_files.py (big
ones, made at run time, and mutants of the example team)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from orchestration.bounded_yaml import load_bounded
from orchestration.errors import TeamFileError
from orchestration.team_file import load_team, parse_team
from tests.support.hostile_files import CORPUS, code_running_tags, generated, mutants
from tests.support.services import MANAGE, PYTHON, ROOT

SECONDS = 2.0  # CPU time to load and validate any one file
# The line's length besides the file's own path (which the user chose, not the file).
LINE_CHARS = 340
PEAK_MEMORY_MB = 256  # a `manage.py validate` process; about 70 MB at rest

SEEDS = sorted(CORPUS.glob("*.yaml"))
GENERATED = generated()

# Why each file is refused: the line must say so.
SEED_PROBLEMS = {
    "alias_bomb": "invalid YAML: more than 100,000 nodes (an alias counts as all it repeats)",
    "merge_bomb": "invalid YAML: more than 100,000 nodes",
    "recursive_alias": "invalid YAML: an alias inside the node it names",
    "deep_flow_nesting": "invalid YAML: nested more than 32 levels deep",
    "deep_block_nesting": "invalid YAML: nested more than 32 levels deep",
    "bad_int_tag": "invalid YAML: not a valid !!int value",
    "bad_float_tag": "invalid YAML: not a valid !!float value",
    "bad_bool_tag": "invalid YAML: not a valid !!bool value",
    "bad_timestamp_tag": "invalid YAML: not a valid !!timestamp value",
    "python_tag": "invalid YAML: unsupported tag !!python/object/apply:os.system",
    "set_tag": "invalid YAML: unsupported tag !!set",
    "long_agent_name": "String should have at most 200 characters",
    "long_team_name": ": name: String should have at most 200 characters",
    "long_step_id": "workflow.steps[0].id: String should have at most 100 characters",
    "long_target": "agents.a.target: String should have at most 200 characters",
    "deadline_inf": "workflow.steps[0].deadline: Input should be a finite number",
    "deadline_huge": "workflow.steps[0].deadline: Input should be less than or equal to 2592000",
    "timeout_nan": "agents.a.timeout: Input should be a finite number",
    "heartbeat_inf": "agents.a.breaker.slow_call_seconds: Input should be less than or equal",
    "when_nested_brackets": "when: expression nested 20 brackets deep; at most 16",
    "when_chained_operators": "is nested too deeply to evaluate",
    "when_long_sum": "is nested too deeply to evaluate",
    "two_documents": "invalid YAML: more than one document",
    "not_a_mapping": "expected a mapping with name, agents and workflow",
    "control_characters_in_key": (
        r"agents.'line one\nline two\x1b[31m': String should match pattern"
    ),
}
GENERATED_PROBLEMS = {
    "when_5mb_parentheses": "larger than 1,048,576 bytes, the most a team file may hold",
    "when_900kb_parentheses": "expressions of 900,001 characters in all; at most 20,000",
    "integer_of_5000_digits": "invalid YAML: a number of 5,000 characters; at most 50",
    "hex_integer_of_100k_digits": "invalid YAML: a number of 100,002 characters; at most 50",
    "cycle_of_2000_steps": "(2,000 steps)",
    "list_of_200k_items": "invalid YAML: more than 100,000 nodes",
    "10001_steps": "workflow.steps: Tuple should have at most 10000 items",
    "600_distinct_conditions": "600 distinct expressions; at most 500 a team",
    "conditions_of_24k_characters": "characters in all; at most 20,000 a team",
    "long_strategy": "workflow.strategy: Input should be",
    "long_task": "task: String should have at most 20000 characters",
    "larger_than_1mib": "larger than 1,048,576 bytes, the most a team file may hold",
    "not_utf8": "cannot read: 'utf-8' codec can't decode byte 0xe9",
    "nul_character": "invalid YAML: character #x0000 at position 7 is not allowed",
}


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, content in GENERATED.items():
        (folder / f"{name}.yaml").write_bytes(content)
    return folder


def refusal(path: Path) -> tuple[str, float]:
    """Load ``path`` in this process: its TeamFileError's message and the CPU time taken."""
    started = time.process_time()
    with pytest.raises(TeamFileError) as info:
        load_team(path)
    return str(info.value), time.process_time() - started


def assert_one_short_line(message: str, path: str) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert len(message) - len(path) <= LINE_CHARS, f"{len(message)} characters: {message}"


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_a_hostile_file_is_refused_quickly_with_one_line(path: Path) -> None:
    message, seconds = refusal(path)
    assert message.startswith(f"{path}: "), message
    assert SEED_PROBLEMS[path.stem] in message, message
    assert_one_short_line(message, str(path))
    assert seconds <= SECONDS, f"{seconds:.2f}s of CPU for {path.name}"


def test_every_hostile_file_says_why_it_is_refused() -> None:
    assert sorted(SEED_PROBLEMS) == sorted(p.stem for p in SEEDS)
    assert sorted(GENERATED_PROBLEMS) == sorted(GENERATED)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_a_big_hostile_file_is_refused_quickly_with_one_line(
    name: str, generated_dir: Path
) -> None:
    path = generated_dir / f"{name}.yaml"
    message, seconds = refusal(path)
    assert GENERATED_PROBLEMS[name] in message, message
    assert_one_short_line(message, str(path))
    assert seconds <= SECONDS, f"{seconds:.2f}s of CPU for {name}"


def test_mutants_of_the_example_are_valid_or_refused_with_one_line() -> None:
    refused = 0
    for label, text in mutants(300):
        started = time.process_time()
        try:
            parse_team(text, source="mutant.yaml", import_targets=False)
        except TeamFileError as exc:
            refused += 1
            assert_one_short_line(str(exc), "mutant.yaml")
        except Exception as exc:  # what this test is for: never anything but TeamFileError
            pytest.fail(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
        seconds = time.process_time() - started
        assert seconds <= SECONDS, f"{seconds:.2f}s of CPU for {label}"
    assert refused > 150  # most mutants are broken; the test must not be vacuous


@pytest.mark.parametrize("name", ["python_apply", "python_object_new", "python_name"])
def test_no_tag_runs_code(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "team.yaml"
    path.write_text(code_running_tags(marker)[name], encoding="utf-8")
    message, _ = refusal(path)
    assert "unsupported tag !!python/" in message, message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ("(" * 17 + "steps.a.output" + ")" * 17 + " > 0", "nested 17 brackets deep"),
        ("!" * 300 + "true", "nested too deeply to evaluate"),
        ("x" * 2_001, "expression of 2,001 characters; at most 2,000"),
    ],
    ids=["brackets", "operators", "length"],
)
def test_an_expression_is_bounded_before_it_is_evaluated(when: str, problem: str) -> None:
    text = (
        "name: t\nagents: {a: {target: 'examples.agents.audit:report'}}\n"
        "workflow: {strategy: conditional, steps: [{id: a, agent: a}, "
        f"{{id: b, agent: a, when: '{when}'}}]}}\n"
    )
    with pytest.raises(TeamFileError) as info:
        parse_team(text, source="t.yaml", import_targets=False)
    assert str(info.value).startswith("t.yaml: workflow.steps[1].when: "), info.value
    assert problem in str(info.value)


def test_expressions_within_the_bounds_still_validate() -> None:
    when = "(" * 16 + "steps.a.output.n" + ")" * 16 + " > 0 && " + "!" * 20 + "true"
    text = (
        "name: t\nagents: {a: {target: 'examples.agents.audit:report'}}\n"
        f"workflow: {{strategy: conditional, steps: [{{id: a, agent: a}}, "
        f"{{id: b, agent: a, when: '{when}'}}]}}\n"
    )
    spec = parse_team(text, source="t.yaml", import_targets=False)
    assert spec.workflow.steps[1].when == when


def test_anchors_aliases_and_merge_keys_still_work() -> None:
    target = "target: 'examples.agents.audit:report'"
    text = (
        "name: t\nagents:\n"
        f"  a: {{{target}, retry: &retry {{max_attempts: 5, initial_delay: 0.1}}}}\n"
        f"  b: {{{target}, retry: {{<<: *retry, max_attempts: 2}}}}\n"
        f"  c: {{{target}, retry: *retry}}\n"
        "workflow: {strategy: dag, steps: [{id: a, agent: a}]}\n"
    )
    agents = parse_team(text, source="t.yaml", import_targets=False).agents
    assert (agents["b"].retry.max_attempts, agents["b"].retry.initial_delay) == (2, 0.1)
    assert agents["c"].retry == agents["a"].retry
    assert agents["c"].retry.max_attempts == 5


def test_the_bounded_loader_reads_what_the_safe_loader_reads() -> None:
    rng = random.Random(5)
    scalars = ["yes", "off", "~", "", "0x1F", "0o17", "1_000", "190:20:30", "-.inf", "1.5e3"]
    scalars += ["2001-12-14", "2001-12-14t21:59:43.10-05:00", "'quoted'", "!!str 12", "x y"]

    def value(depth: int) -> object:
        roll = rng.random()
        if depth > 3 or roll < 0.4:
            return rng.choice([rng.randint(-99, 99), rng.random(), True, None, "s", "a: b"])
        if roll < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice("abcde"): value(depth + 1) for _ in range(rng.randint(0, 4))}

    documents: list[str] = []
    for _ in range(150):
        data = value(0)
        documents += [yaml.safe_dump(data), yaml.safe_dump(data, default_flow_style=True)]
    documents += [f"k: {scalar}\n" for scalar in scalars]
    documents += [
        "base: &b {a: 1, b: 2}\nx: {<<: *b, b: 3}\n",
        "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc: {<<: [*a, *b]}\nd: {<<: *a, <<: *b}\n",
        "a: &s hi\nb: [*s, *s]\n",
        "? [1, 2]\n: x\n",
    ]
    for text in documents:
        try:
            expected = yaml.load(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            with pytest.raises(yaml.YAMLError):
                load_bounded(text)
            continue
        assert load_bounded(text) == expected, text


def test_a_10000_step_team_still_validates_within_the_bound() -> None:
    steps = "".join(f"  - {{id: s{i}, agent: a, task: do it}}\n" for i in range(10_000))
    text = (
        "name: big\nagents: {a: {target: 'examples.agents.audit:report'}}\n"
        f"workflow:\n  strategy: parallel\n  steps:\n{steps}"
    )
    started = time.process_time()
    spec = parse_team(text, source="big.yaml", import_targets=False)
    seconds = time.process_time() - started
    assert len(spec.workflow.steps) == 10_000
    assert seconds <= SECONDS, f"{seconds:.2f}s of CPU"


# The child's own peak memory, reported by a small Python that starts it. Measured from
# this process, wait4 would report this test process's peak instead whenever that is
# higher: Linux keeps, as a child's peak, that of the memory its exec replaced, which is a
# copy of this process's (or, under vfork, this process's itself).
_MEASURED = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as peak:
    peak.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def manage(path: Path, env: dict[str, str], *args: str) -> tuple[int, str, str, float]:
    """Run ``manage.py ARGS... PATH``: exit code, stdout, stderr and peak memory in MB."""
    command = args or ("validate",)
    out, err = path.parent / f"{path.stem}.out", path.parent / f"{path.stem}.err"
    peak = path.parent / f"{path.stem}.peak"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [PYTHON, "-c", _MEASURED, str(peak), PYTHON, str(MANAGE), *command, str(path)],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"manage.py {' '.join(command)} hung on {path.name}")
    return (
        process.returncode,
        out.read_text(encoding="utf-8", errors="replace"),
        err.read_text(encoding="utf-8", errors="replace"),
        int(peak.read_text()) / 1024,
    )


# A few in real processes (each starts Python and Troupe: about 2 s); the rest in-process.
@pytest.mark.parametrize("name", ["alias_bomb", "bad_int_tag", "when_5mb_parentheses"])
def test_validate_exits_2_with_one_line_in_bounded_memory(
    name: str, generated_dir: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    source = CORPUS / f"{name}.yaml"
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(
        source.read_bytes() if source.exists() else (generated_dir / path.name).read_bytes()
    )
    code, stdout, stderr, memory = manage(path, cli_env)
    assert code == 2, (code, stdout, stderr)
    assert stdout == ""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    line = stderr.rstrip("\n")
    assert line.startswith(f"error: invalid team file: {path}: "), line
    assert "internal error" not in line and "Traceback" not in stderr
    assert_one_short_line(line, str(path))
    assert memory <= PEAK_MEMORY_MB, f"{memory:.0f} MB"


def test_run_team_json_with_a_hostile_file_prints_the_line_and_exits_2(
    generated_dir: Path, cli_env: dict[str, str]
) -> None:
    path = generated_dir / "integer_of_5000_digits.yaml"
    code, stdout, stderr, _ = manage(path, cli_env, "run-team", "--json")
    assert code == 2, (code, stdout, stderr)
    assert stdout == ""
    assert stderr.count("\n") == 1, stderr
    assert "invalid YAML: a number of 5,000 characters; at most 50" in stderr, stderr
