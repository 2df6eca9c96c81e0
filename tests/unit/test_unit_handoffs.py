"""The handoff rules' matching and confidence (workflows/handoffs.py), on the examples
of the documents the product grew from."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from workflows.handoffs import confidence, detect, matched_triggers, normalize, refusal
from workflows.runtime_steps import Added, ask_id, handoff_path, origin_of, plan_step_of


@dataclass(frozen=True)
class Rule:
    from_agent: str
    to: str
    triggers: tuple[str, ...]
    threshold: float = 0.5
    reason: str | None = None


# The documents' business and technical patterns.
RULES = (
    Rule("marketing", "copywriting", ("copy", "texto", "conteúdo", "landing page")),
    Rule("marketing", "finance", ("ROI", "orçamento", "budget", "custo")),
    Rule("sales", "finance", ("preço", "pricing", "margem", "contrato")),
    Rule("dev", "architect", ("arquitetura", "design", "escalabilidade")),
    Rule("dev", "validation", ("teste", "validação", "QA", "qualidade")),
)


def test_the_documents_example_goes_to_copywriting_with_high_confidence() -> None:
    match = detect("marketing", "Criar copy para landing page", RULES)
    assert match is not None
    assert (match.to, match.confidence, match.matched) == (
        "copywriting",
        0.85,
        ("copy", "landing page"),
    )
    assert match.confidence > 0.7  # the documents' "high confidence"


@pytest.mark.parametrize(
    ("agent", "task", "to", "score"),
    [
        ("marketing", "Calcular o ROI e o orçamento da campanha", "finance", 0.85),
        ("sales", "Revisar o PREÇO do contrato", "finance", 0.85),
        ("dev", "Plan a QA pass", "validation", 0.5),
        ("dev", "Teste de qualidade e validacao com QA", "validation", 0.9865),
        ("dev", "Rever a arquitetura para escalabilidade", "architect", 0.85),
    ],
)
def test_confidence_grows_with_each_trigger_found(
    agent: str, task: str, to: str, score: float
) -> None:
    match = detect(agent, task, RULES)
    assert match is not None and (match.to, match.confidence) == (to, score)


def test_no_trigger_no_handoff_and_other_agents_rules_do_not_apply() -> None:
    assert detect("marketing", "Plan the launch party", RULES) is None
    assert detect("sales", "Criar copy para landing page", RULES) is None
    assert detect("marketing", None, RULES) is None


def test_a_threshold_above_one_trigger_needs_two() -> None:
    strict = (Rule("dev", "validation", ("teste", "QA"), threshold=0.8),)
    assert detect("dev", "Run the QA suite", strict) is None
    match = detect("dev", "QA: teste everything", strict)
    assert match is not None and match.confidence == 0.85


def test_matching_ignores_case_and_accents_and_wants_whole_words() -> None:
    assert normalize("Criação de CONTEÚDO!") == "criacao de conteudo"
    assert matched_triggers("CONTEUDO novo", ("conteúdo",)) == ("conteúdo",)
    # "copy" is not found inside "copyright", nor "QA" inside "QAnon".
    assert matched_triggers("copyright notice for QAnon", ("copy", "QA")) == ()
    assert [confidence(m) for m in range(5)] == [0.0, 0.5, 0.85, 0.955, pytest.approx(0.9865)]


def test_loops_and_depth_are_refused() -> None:
    assert refusal(["lead", "editor"], "lead", 3) == "handoff loop: lead → editor → lead"
    assert refusal(["a", "b"], "c", 1) == "handoff depth 2 would exceed max_handoff_depth 1"
    assert refusal(["a"], "b", 1) is None


def test_run_time_step_ids_say_what_added_them() -> None:
    nested = "review[3]~to~critic~ask~legal~0f0f0f0f"
    origin = origin_of(nested)
    assert origin is not None
    assert (origin.parent, origin.kind, origin.agent) == ("review[3]~to~critic", Added.ASK, "legal")
    assert plan_step_of(nested) == "review"
    assert handoff_path("s~to~b~to~c", "a") == ["a", "b", "c"]
    first = ask_id("s", "oracle", {"q": 1}, 1)
    assert first == ask_id("s", "oracle", {"q": 1}, 1)  # a retry finds it
    assert first != ask_id("s", "oracle", {"q": 1}, 2)  # asking again is a new question
    assert origin_of(first) is not None
