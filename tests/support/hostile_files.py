"""Hostile team files too big to commit, and mutants of the example team.

The small hostile files live in tests/corpus/hostile/; these are made at run time.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus" / "hostile"
EXAMPLE = ROOT / "examples" / "code_audit" / "team.yaml"
TARGET = "examples.agents.audit:report"


def _team(steps: list[dict[str, object]], strategy: str = "dag", **top: object) -> str:
    data = {
        "name": "hostile",
        "agents": {"a": {"target": TARGET}},
        "workflow": {"strategy": strategy, "steps": steps},
        **top,
    }
    # JSON is YAML too, and the json module writes megabytes in milliseconds.
    return json.dumps(data)


def generated() -> dict[str, bytes]:
    """Name -> content of each hostile file made at run time."""
    files: dict[str, str | bytes] = {
        # The 5 MB `when` of nested parentheses: a minute and 3.9 GB, once.
        "when_5mb_parentheses": _team(
            [{"id": "a", "agent": "a", "when": "(" * 2_500_000 + "1" + ")" * 2_500_000}]
        ),
        # The same within the file size limit.
        "when_900kb_parentheses": _team(
            [{"id": "a", "agent": "a", "when": "(" * 450_000 + "1" + ")" * 450_000}]
        ),
        "integer_of_5000_digits": _team([{"id": "a", "agent": "a", "deadline": 0}]).replace(
            '"deadline": 0', '"deadline": ' + "9" * 5_000
        ),
        "hex_integer_of_100k_digits": _team([{"id": "a", "agent": "a", "deadline": 0}]).replace(
            '"deadline": 0', '"deadline": 0x' + "f" * 100_000
        ),
        # Once a 17 KB error line.
        "cycle_of_2000_steps": _team(
            [{"id": f"s{i}", "agent": "a", "after": [f"s{(i + 1) % 2000}"]} for i in range(2000)]
        ),
        "list_of_200k_items": _team([{"id": "a", "agent": "a", "after": ["a"]}]).replace(
            '["a"]', "[" + ", ".join(["a"] * 200_000) + "]"
        ),
        "10001_steps": _team([{"id": f"s{i}", "agent": "a"} for i in range(10_001)], "parallel"),
        "600_distinct_conditions": _team(
            [{"id": "a", "agent": "a"}]
            + [{"id": f"s{i}", "agent": "a", "when": f"input.n == {i}"} for i in range(600)]
        ),
        "conditions_of_24k_characters": _team(
            [{"id": "a", "agent": "a"}]
            + [
                {"id": f"s{i}", "agent": "a", "when": f"steps.a.output.n{i} > 0" + " " * 1_970}
                for i in range(12)
            ]
        ),
        "long_strategy": _team([{"id": "a", "agent": "a"}], strategy="x" * 100_000),
        "long_task": _team([{"id": "a", "agent": "a", "task": "do it " * 10_000}]),
        "larger_than_1mib": "# padding\n" * 110_000 + _team([{"id": "a", "agent": "a"}]),
        "not_utf8": b"name: caf\xe9\n",
        "nul_character": "name: a\x00b\n",
    }
    return {name: text.encode() if isinstance(text, str) else text for name, text in files.items()}


def code_running_tags(marker: Path) -> dict[str, str]:
    """Tags that would create ``marker`` under an unsafe loader."""
    return {
        "python_apply": f"name: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n",
        "python_object_new": (
            f"name: !!python/object/new:builtins.open [{str(marker)!r}, w]\n"
            "agents: {a: {target: 'examples.agents.audit:report'}}\n"
        ),
        "python_name": f"name: !!python/name:os.system\nx: {str(marker)!r}\n",
    }


_PUNCTUATION = b"&*!<>[]{}:,-? \n'\"|#%@`~0123456789.eE+"


def mutants(count: int, seed: int = 11) -> Iterator[tuple[str, str]]:
    """(label, text): ``count`` mutations of the example team, of five kinds in turn."""
    rng = random.Random(seed)
    base = EXAMPLE.read_text(encoding="utf-8")
    lines = base.splitlines(keepends=True)
    kinds = [_flip_bytes, _nest_deeply, _huge_number, _long_name, _splice_lines]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        yield f"{kind.__name__.strip('_')} #{i}", kind(rng, base, lines)


def _flip_bytes(rng: random.Random, base: str, lines: list[str]) -> str:
    raw = bytearray(base.encode())
    for _ in range(rng.randint(1, 8)):
        raw[rng.randrange(len(raw))] = rng.choice(_PUNCTUATION)
    return raw.decode("utf-8", "replace")


def _nest_deeply(rng: random.Random, base: str, lines: list[str]) -> str:
    depth = rng.choice([20, 40, 200, 5_000, 100_000])
    opening, closing = rng.choice([("[", "]"), ("{a: ", "}"), ("(", ")")])
    nested = opening * depth + "1" + closing * depth
    if opening == "(":  # inside a condition, where brackets mean CEL nesting
        return base.replace('when: "', f'when: "{nested} > 0 && ', 1)
    return base.replace("timeout: 30", f"timeout: {nested}", rng.randint(1, 5))


def _huge_number(rng: random.Random, base: str, lines: list[str]) -> str:
    digits = rng.choice([20, 400, 4_301, 50_000])
    number = rng.choice(
        [
            "9" * digits,
            "-" + "1" * digits,
            "0x" + "f" * digits,
            "1e" + "9" * min(digits, 30),
            "0." + "3" * digits,
            "!!int " + "x" * 5,
            "!!float " + "1e" * 3,
            ".inf",
            "-.inf",
            ".nan",
            "1e308",
            "190:20:30:" + "59:" * 100 + "1",
        ]
    )
    field = rng.choice(["timeout", "max_attempts", "initial_delay", "max_delay", "backoff"])
    pattern = re.compile(rf"({field}: )[^,}}\n]+")
    return pattern.sub(lambda m: m.group(1) + number, base, count=rng.randint(1, 3))


def _long_name(rng: random.Random, base: str, lines: list[str]) -> str:
    length = rng.choice([101, 201, 5_000, 200_000])
    name = rng.choice(["syntax-scanner", "syntax", "code-audit", "examples.agents.audit"])
    filler = rng.choice(["a", "é", "_", "x-"])
    return base.replace(name, name + filler * length, rng.randint(1, 3))


def _splice_lines(rng: random.Random, base: str, lines: list[str]) -> str:
    out = list(lines)
    for _ in range(rng.randint(1, 4)):
        action = rng.choice(["drop", "repeat", "swap", "cut"])
        i = rng.randrange(len(out))
        if action == "drop":
            del out[i]
        elif action == "repeat":
            out[i:i] = [out[i]] * rng.choice([2, 50, 5_000])
        elif action == "swap":
            j = rng.randrange(len(out))
            out[i], out[j] = out[j], out[i]
        else:
            out[i] = out[i][: rng.randrange(len(out[i]) + 1)]
        if not out:
            break
    return "".join(out)
