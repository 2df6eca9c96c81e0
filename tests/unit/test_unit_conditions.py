"""`when` conditions: CEL over input and finished steps, false on missing data, no Python."""

import pytest

from workflows.conditions import ConditionSyntaxError, compile_condition, referenced_steps

INPUT = {"count": 3, "ratio": 0.75, "lang": "en", "tags": ["a", "b"]}
STEPS = {
    "scan": {"status": "completed", "output": {"issues": 2, "verdict": "dirty", "ok": False}},
    "fix": {"status": "skipped", "output": None},
}


def evaluate(expression):
    return compile_condition(expression).evaluate(INPUT, STEPS)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("input.count > 2", True),
        ("input.count >= 4", False),
        ("input.ratio < 1.0", True),
        ("input.ratio > 1", False),
        ("input.lang == 'en'", True),
        ('input.lang != "en"', False),
        ("steps.scan.output.issues == 2", True),
        ("steps.scan.output.issues > 0 && steps.scan.output.verdict == 'dirty'", True),
        ("steps.scan.output.issues > 5 && input.count > 0", False),
        ("steps.scan.output.ok || input.count == 3", True),
        ("steps.scan.output.ok || input.count == 4", False),
        ("!steps.scan.output.ok", True),
        ("steps.fix.status == 'skipped'", True),
        ("size(input.tags) == 2 && 'b' in input.tags", True),
        ("input.count + steps.scan.output.issues > 4", True),
    ],
)
def test_evaluates_against_input_and_step_outputs(expression, expected):
    outcome = evaluate(expression)
    assert outcome.value is expected
    assert outcome.reason == f"`{expression}` is {str(expected).lower()}"


@pytest.mark.parametrize(
    "expression",
    ["input.missing > 1", "steps.nosuch.output.issues > 0", "steps.scan.output.absent == 'x'"],
)
def test_missing_data_is_false_with_a_reason(expression):
    outcome = evaluate(expression)
    assert outcome.value is False
    assert f"`{expression}` could not be evaluated" in outcome.reason


@pytest.mark.parametrize("expression", ["input.count + 1", "'yes'", "input.tags"])
def test_non_boolean_result_is_false(expression):
    outcome = evaluate(expression)
    assert outcome.value is False
    assert outcome.reason.startswith(f"`{expression}` gave ")
    assert "not a boolean" in outcome.reason


@pytest.mark.parametrize(
    "expression", ["input.count >", "(input.count", "input.count = 1", "&& true", "", "a b"]
)
def test_malformed_expressions_fail_at_compile(expression):
    with pytest.raises(ConditionSyntaxError, match="malformed expression"):
        compile_condition(expression)


def test_syntax_error_names_the_column():
    with pytest.raises(ConditionSyntaxError, match="column 9"):
        compile_condition("input.x >")


@pytest.mark.parametrize(
    "template",
    [
        "__import__('os').system('touch {path}')",
        "open('{path}', 'w') == null",
        "input.__class__.__init__ != null",
    ],
)
def test_python_is_never_reached(tmp_path, template):
    marker = tmp_path / "pwned"
    outcome = compile_condition(template.format(path=marker)).evaluate(INPUT, STEPS)
    assert outcome.value is False
    assert not marker.exists()


@pytest.mark.parametrize(
    ("expression", "steps"),
    [
        ("steps.a.output > 1", {"a"}),
        ("steps.a.output > steps.b.output && steps . c.status == 'x'", {"a", "b", "c"}),
        ("steps.a.output == 'steps.b' || \"steps.c.output\" == input.x", {"a"}),
        ("input.text == 'it\\'s steps.d'", set()),
        ("mysteps.e == 1 && input.count > 0", set()),
    ],
)
def test_referenced_steps(expression, steps):
    assert referenced_steps(expression) == steps


def test_compiled_conditions_are_reusable():
    condition = compile_condition("input.count > 2")
    assert condition.evaluate({"count": 3}, {}).value is True
    assert condition.evaluate({"count": 1}, {}).value is False
