"""The code-audit example's agents, called directly as the runtime would call them."""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from examples.agents.audit import plan_fixes, report, scan_secrets, scan_syntax, scan_todos

ROOT = Path(__file__).resolve().parents[2]
AUDIT_DIR = ROOT / "examples" / "code_audit"
SAMPLE = AUDIT_DIR / "sample_project"
CLEAN = AUDIT_DIR / "clean_project"

# Built from pieces so that this test file does not itself look like a leaked key.
FAKE_AWS_KEY = "AKIA" + "TESTONLYFAKE0001"
FAKE_PRIVATE_KEY = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIfake\n-----END RSA PRIVATE KEY-----"
FAKE_SK_KEY = "sk-" + "abcdefghijklmnopqrstuvwxyz123456"


@dataclass(frozen=True)
class Call:
    """Stands in for the runtime's call object: the documented calling convention."""

    input: Any
    outputs: Mapping[str, Any] = field(default_factory=dict)
    step_id: str = "step"
    task: str | None = None
    attempt: int = 1


def write(folder: Path, rel: str, source: str) -> Path:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def scan_all(target: Any) -> dict[str, Any]:
    return {
        "syntax": scan_syntax(Call(target, step_id="syntax")),
        "todos": scan_todos(Call(target, step_id="todos")),
        "secrets": scan_secrets(Call(target, step_id="secrets")),
    }


def locations(result: Mapping[str, Any]) -> list[tuple[str, int]]:
    return [(f["file"], f["line"]) for f in result["findings"]]


# --- input ----------------------------------------------------------------------------


@pytest.mark.parametrize("agent", [scan_syntax, scan_todos, scan_secrets])
def test_input_may_be_a_path_string_or_a_path_mapping(agent: Any, tmp_path: Path) -> None:
    write(tmp_path, "one.py", "x = 1\n")
    assert agent(Call(str(tmp_path)))["files"] == 1
    assert agent(Call({"path": str(tmp_path)}))["files"] == 1


def test_relative_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "proj", "a.py", "def f(:\n")
    monkeypatch.chdir(tmp_path)
    assert locations(scan_syntax(Call("proj"))) == [("a.py", 1)]
    assert scan_syntax(Call({"path": "proj"}))["issues"] == 1


@pytest.mark.parametrize(
    "bad",
    [None, 42, ["a"], {}, {"folder": "x"}, {"path": 3}, "", "   "],
    ids=repr,
)
@pytest.mark.parametrize("agent", [scan_syntax, scan_todos, scan_secrets])
def test_input_that_is_not_a_path_is_a_value_error(agent: Any, bad: Any) -> None:
    with pytest.raises(ValueError, match="folder path"):
        agent(Call(bad))


def test_a_missing_folder_is_an_error_not_a_clean_audit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        scan_syntax(Call(str(tmp_path / "nope")))
    afile = write(tmp_path, "f.py", "x = 1\n")
    with pytest.raises(ValueError, match="not a directory"):
        scan_todos(Call({"path": str(afile)}))


def test_walk_is_sorted_recursive_and_skips_venvs_caches_and_hidden_dirs(tmp_path: Path) -> None:
    for rel in [
        "z.py",
        "a.py",
        "pkg/sub/m.py",
        "pkg/b.py",
        ".venv/lib/bad.py",
        "__pycache__/bad.py",
        ".git/hooks/bad.py",
        "pkg/.hidden/bad.py",
    ]:
        write(tmp_path, rel, "def broken(:\n" if "bad" in rel else "x = (\n")
    write(tmp_path, "notes.txt", "def broken(:\n")
    result = scan_syntax(Call(str(tmp_path)))
    assert result["files"] == 4
    assert [f for f, _ in locations(result)] == ["a.py", "pkg/b.py", "pkg/sub/m.py", "z.py"]


# --- scan_syntax ----------------------------------------------------------------------


def test_scan_syntax_reports_each_unparseable_file_with_its_line(tmp_path: Path) -> None:
    write(tmp_path, "good.py", "def ok() -> int:\n    return 1\n")
    write(tmp_path, "colon.py", "import os\n\n\ndef f(x)\n    return x\n")
    write(tmp_path, "indent.py", "def f():\n    x = 1\n      y = 2\n")
    result = scan_syntax(Call(str(tmp_path)))
    assert result["files"] == 3
    assert result["issues"] == 2
    assert locations(result) == [("colon.py", 4), ("indent.py", 3)]
    assert all(f["message"] for f in result["findings"])
    assert "indent" in result["findings"][1]["message"]


def test_scan_syntax_does_not_mistake_parser_warnings_for_errors(tmp_path: Path) -> None:
    # An invalid escape is a warning; with warnings as errors, ast.parse would
    # turn it into a SyntaxError unless the scanner silences it.
    write(tmp_path, "escape.py", 'import re\nPATTERN = re.compile("\\d+")\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = scan_syntax(Call(str(tmp_path)))
    assert result == {"files": 1, "issues": 0, "findings": []}


def test_scan_syntax_reports_null_bytes(tmp_path: Path) -> None:
    (tmp_path / "nul.py").write_bytes(b"x = 1\x00\n")
    result = scan_syntax(Call(str(tmp_path)))
    assert result["issues"] == 1
    assert result["findings"][0]["file"] == "nul.py"


# --- scan_todos -----------------------------------------------------------------------


def test_scan_todos_counts_comment_markers_with_kind_and_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        "m.py",
        """\
        # TODO: first
        x = 1  # FIXME later
        def f():
            # XXX and also a HACK in one comment
            return 2
        # todo in lower case is prose, and TODOS is another word
        """,
    )
    result = scan_todos(Call(str(tmp_path)))
    assert result["files"] == 1
    assert result["issues"] == 4
    assert [(f["line"], f["marker"]) for f in result["findings"]] == [
        (1, "TODO"),
        (2, "FIXME"),
        (4, "XXX"),
        (4, "HACK"),
    ]
    assert result["findings"][0]["message"] == "# TODO: first"


def test_scan_todos_ignores_markers_inside_string_literals(tmp_path: Path) -> None:
    write(
        tmp_path,
        "strings.py",
        '''\
        """Module docstring: TODO FIXME XXX HACK."""
        A = "TODO: not a comment"
        B = f"FIXME {A}"
        C = """
        # HACK this looks like a comment but is inside a string
        """
        ''',
    )
    result = scan_todos(Call(str(tmp_path)))
    assert result == {"files": 1, "issues": 0, "findings": []}


def test_scan_todos_skips_files_that_cannot_be_tokenized(tmp_path: Path) -> None:
    write(tmp_path, "a_ok.py", "# TODO: counted\n")
    write(tmp_path, "b_unlexable.py", '# TODO: lost with the file\nx = """never closed\n')
    result = scan_todos(Call(str(tmp_path)))
    assert result["files"] == 2
    assert locations(result) == [("a_ok.py", 1)]


def test_scan_todos_still_reads_files_that_tokenize_but_do_not_parse(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", "def f(x)\n    # FIXME: add the colon\n    return x\n")
    result = scan_todos(Call(str(tmp_path)))
    assert [(f["line"], f["marker"]) for f in result["findings"]] == [(2, "FIXME")]


# --- scan_secrets ---------------------------------------------------------------------


def test_scan_secrets_flags_literals_assigned_to_secret_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        "conf.py",
        """\
        API_KEY = "live-3f9a8c7d6e5b4a39"
        db_password: str = "correct-horse-battery"
        class Client:
            def __init__(self):
                self.auth_token = "tok-998877665544"
        user, passwd = "admin", "s3cr3t-value"
        connect(host="db", private_key="pk-1234567890")
        """,
    )
    result = scan_secrets(Call(str(tmp_path)))
    assert [(f["line"], f["kind"], f["name"]) for f in result["findings"]] == [
        (1, "assignment", "API_KEY"),
        (2, "assignment", "db_password"),
        (5, "assignment", "auth_token"),
        (6, "assignment", "passwd"),
        (7, "assignment", "private_key"),
    ]
    assert result["issues"] == 5
    assert {f["file"] for f in result["findings"]} == {"conf.py"}


def test_scan_secrets_ignores_env_lookups_placeholders_and_other_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        "conf.py",
        """\
        import os
        API_KEY = os.environ["API_KEY"]
        TOKEN = os.getenv("TOKEN", "")
        PASSWORD = ""
        SECRET = "changeme"
        api_key = "<your-api-key>"
        db_password = "${DB_PASSWORD}"
        auth_token = "********"
        password_hash: str = ""
        max_tokens = 256
        USERNAME = "admin-user-name"
        GREETING = "hello, this is not a secret at all"
        """,
    )
    assert scan_secrets(Call(str(tmp_path))) == {"files": 1, "issues": 0, "findings": []}


def test_scan_secrets_flags_well_known_key_shapes_under_any_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        "keys.py",
        f"""\
        region = "eu-west-1"
        aws_id = {FAKE_AWS_KEY!r}
        pem = {FAKE_PRIVATE_KEY!r}
        client = make(key={FAKE_SK_KEY!r})
        """,
    )
    result = scan_secrets(Call(str(tmp_path)))
    assert [(f["line"], f["kind"], f["name"]) for f in result["findings"]] == [
        (2, "pattern", "aws-access-key-id"),
        (3, "pattern", "private-key"),
        (4, "pattern", "sk-api-key"),
    ]


def test_a_secret_named_and_shaped_is_reported_once(tmp_path: Path) -> None:
    write(tmp_path, "k.py", f"OPENAI_API_KEY = {FAKE_SK_KEY!r}\n")
    result = scan_secrets(Call(str(tmp_path)))
    assert result["issues"] == 1
    assert result["findings"][0]["name"] == "OPENAI_API_KEY"


def test_scan_secrets_finds_key_shapes_in_files_that_do_not_parse(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", f"def f(x)\n    return {FAKE_AWS_KEY!r}\n")
    result = scan_secrets(Call(str(tmp_path)))
    assert [(f["line"], f["name"]) for f in result["findings"]] == [(2, "aws-access-key-id")]


@pytest.mark.parametrize(
    ("value", "issues"),
    [
        # Named only: found once, through the assignment to `token`.
        ("hunter2-example", 1),
        ("abcd", 1),
        ("a-rather-long-and-very-secret-value", 1),
        # Key shapes: found again in the list, where no name gives them away.
        (FAKE_AWS_KEY, 2),
        (FAKE_SK_KEY, 2),
        (FAKE_PRIVATE_KEY, 2),
    ],
)
def test_secret_values_never_appear_in_the_output(tmp_path: Path, value: str, issues: int) -> None:
    write(tmp_path, "s.py", f"token = {value!r}\nother = [{value!r}]\n")
    result = scan_secrets(Call(str(tmp_path)))
    assert result["issues"] == issues
    plan = plan_fixes(Call(str(tmp_path), outputs={"secrets": result}))
    dumped = json.dumps([result, plan], ensure_ascii=False)
    # Nor any line of a multi-line key.
    for part in [value, *value.splitlines()]:
        assert part not in dumped
    for finding in result["findings"]:
        shown = finding["preview"].replace("…", "")
        assert len(shown) <= 4
        assert len(shown) <= len(value) // 4


def test_secret_preview_shows_the_ends_of_long_values(tmp_path: Path) -> None:
    write(tmp_path, "s.py", 'password = "ab-0123456789-yz"\n')
    assert scan_secrets(Call(str(tmp_path)))["findings"][0]["preview"] == "ab…yz"


# --- plan_fixes -----------------------------------------------------------------------


def test_plan_fixes_suggests_one_action_per_finding(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "def f(x)\n    return x\n")
    write(tmp_path, "b.py", "# TODO: tidy\nAPI_KEY = 'k-0123456789abcdef'\n")
    write(tmp_path, "c.py", f"KEY_ID = {FAKE_AWS_KEY!r}  # HACK\n")
    outputs = scan_all(str(tmp_path))
    result = plan_fixes(Call(str(tmp_path), outputs=outputs, step_id="fix"))
    assert result["count"] == 5
    assert [(f["file"], f["line"], f["scanner"]) for f in result["fixes"]] == [
        ("a.py", 1, "syntax"),
        ("b.py", 1, "todos"),
        ("b.py", 2, "secrets"),
        ("c.py", 1, "todos"),
        ("c.py", 1, "secrets"),
    ]
    actions = [f["action"] for f in result["fixes"]]
    assert actions[0].startswith("fix the syntax error: ")
    assert "expected ':'" in actions[0]
    assert "TODO" in actions[1] and "ticket" in actions[1]
    assert "API_KEY" in actions[2] and "environment variable" in actions[2]
    assert "HACK" in actions[3]
    assert "aws-access-key-id" in actions[4] and "rotate" in actions[4]
    # It only suggests: the audited files are untouched.
    assert (tmp_path / "a.py").read_text() == "def f(x)\n    return x\n"


def test_plan_fixes_works_with_missing_or_malformed_outputs() -> None:
    assert plan_fixes(Call("x")) == {"fixes": [], "count": 0}
    todos = {
        "files": 1,
        "issues": 1,
        "findings": [{"file": "m.py", "line": 3, "marker": "FIXME", "message": "# FIXME"}],
    }
    result = plan_fixes(Call("x", outputs={"syntax": None, "todos": todos, "secrets": "oops"}))
    assert result["count"] == 1
    assert result["fixes"][0]["file"] == "m.py"
    assert "FIXME" in result["fixes"][0]["action"]


# --- report ---------------------------------------------------------------------------


def test_report_joins_all_outputs(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "# TODO one\n# FIXME two\n")
    write(tmp_path, "b.py", "password = 'pw-not-a-placeholder'\n")
    outputs = scan_all(str(tmp_path))
    outputs["fix"] = plan_fixes(Call(str(tmp_path), outputs=outputs))
    assert report(Call(str(tmp_path), outputs=outputs)) == {
        "files_scanned": 2,
        "total_issues": 3,
        "by_scanner": {"syntax": 0, "todos": 2, "secrets": 1},
        "fixes_planned": 3,
        "missing_scanners": [],
        "verdict": "needs-attention",
    }


def test_report_handles_a_skipped_fixer(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "x = 1\n")
    outputs = scan_all(str(tmp_path))
    assert "fix" not in outputs
    result = report(Call(str(tmp_path), outputs=outputs))
    assert result["fixes_planned"] == 0
    assert result["total_issues"] == 0
    assert result["files_scanned"] == 1
    assert result["verdict"] == "clean"


def test_report_with_a_missing_scanner_is_not_clean() -> None:
    outputs = {
        "syntax": {"files": 3, "issues": 0, "findings": []},
        "todos": {"files": 3, "issues": 0, "findings": []},
    }
    result = report(Call("x", outputs=outputs))
    assert result["missing_scanners"] == ["secrets"]
    assert result["by_scanner"] == {"syntax": 0, "todos": 0, "secrets": 0}
    assert result["files_scanned"] == 3
    assert result["verdict"] == "needs-attention"


# --- the shipped samples and team file ------------------------------------------------


def test_sample_project_findings() -> None:
    outputs = scan_all(str(SAMPLE))
    assert {name: out["files"] for name, out in outputs.items()} == {
        "syntax": 5,
        "todos": 5,
        "secrets": 5,
    }
    assert outputs["syntax"]["findings"] == [
        {"file": "broken.py", "line": 4, "message": "expected ':'"}
    ]
    assert [(f["file"], f["line"], f["marker"]) for f in outputs["todos"]["findings"]] == [
        ("app.py", 11, "TODO"),
        ("utils.py", 5, "FIXME"),
        ("utils.py", 10, "HACK"),
        ("utils.py", 19, "XXX"),
    ]
    assert [(f["file"], f["line"], f["name"]) for f in outputs["secrets"]["findings"]] == [
        ("config.py", 8, "API_KEY"),
        ("config.py", 9, "password"),
        ("utils.py", 20, "aws-access-key-id"),
    ]
    outputs["fix"] = plan_fixes(Call(str(SAMPLE), outputs=outputs, step_id="fix"))
    assert outputs["fix"]["count"] == 8
    summary = report(Call(str(SAMPLE), outputs=outputs, step_id="report"))
    assert summary["by_scanner"] == {"syntax": 1, "todos": 4, "secrets": 3}
    assert summary["total_issues"] == 8
    assert summary["verdict"] == "needs-attention"

    everything = json.dumps({**outputs, "report": summary}, ensure_ascii=False, allow_nan=False)
    sample_config = (SAMPLE / "config.py").read_text()
    for secret in ("sk-test-0000000000000000000000fake", "hunter2-example"):
        assert secret in sample_config  # the sample really contains it...
        assert secret not in everything  # ...and no output repeats it
    assert "AKIAEXAMPLEFAKE00000" not in everything


def test_clean_project_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    outputs = scan_all("examples/code_audit/clean_project")
    for out in outputs.values():
        assert out == {"files": 2, "issues": 0, "findings": []}
    assert report(Call({"path": str(CLEAN)}, outputs=outputs)) == {
        "files_scanned": 2,
        "total_issues": 0,
        "by_scanner": {"syntax": 0, "todos": 0, "secrets": 0},
        "fixes_planned": 0,
        "missing_scanners": [],
        "verdict": "clean",
    }


def test_agents_accept_the_runtimes_own_call_object() -> None:
    from orchestration.agents.call import AgentCall

    call = AgentCall(
        execution_id="e1",
        step_id="syntax",
        agent="syntax-scanner",
        task=None,
        input={"path": str(SAMPLE)},
        outputs={},
        attempt=1,
    )
    assert scan_syntax(call)["issues"] == 1


def test_team_file_wires_the_agents_and_skips_the_fixer_on_clean_folders() -> None:
    from orchestration.agents.python_callable import load_target
    from orchestration.team_file import load_team
    from workflows.conditions import compile_condition

    team = load_team(AUDIT_DIR / "team.yaml")
    assert team.name == "code-audit"
    targets = {name: load_target(agent.target) for name, agent in team.agents.items()}
    assert targets == {
        "syntax-scanner": scan_syntax,
        "todo-scanner": scan_todos,
        "secret-scanner": scan_secrets,
        "fixer": plan_fixes,
        "reporter": report,
    }
    steps = {step.id: step for step in team.workflow.steps}
    assert list(steps) == ["syntax", "todos", "secrets", "fix", "report"]
    deps = team.workflow.dependencies()
    assert deps["syntax"] == deps["todos"] == deps["secrets"] == ()
    assert set(deps["report"]) == {"syntax", "todos", "secrets", "fix"}

    when = steps["fix"].when
    assert when is not None
    condition = compile_condition(when)
    for folder, expected in [(SAMPLE, True), (CLEAN, False)]:
        outputs = scan_all(str(folder))
        state = {sid: {"output": out, "status": "succeeded"} for sid, out in outputs.items()}
        assert condition.evaluate(str(folder), state).value is expected, folder


def test_outputs_are_plain_json(tmp_path: Path) -> None:
    write(tmp_path, "a.py", f"# TODO\nAPI_KEY = {FAKE_SK_KEY!r}\ndef f(:\n")
    outputs = scan_all(str(tmp_path))
    outputs["fix"] = plan_fixes(Call(str(tmp_path), outputs=outputs))
    outputs["report"] = report(Call(str(tmp_path), outputs=outputs))
    assert json.loads(json.dumps(outputs, allow_nan=False)) == outputs
    assert os.listdir(tmp_path) == ["a.py"]
