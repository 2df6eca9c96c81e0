"""Agents of the pull-request reviewer (examples/pr_review): split a unified diff into
one patch per file, and collect the model's findings per file into one review."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestration import AgentCall, PermanentAgentError

# A model reads a patch, not a whole change set: longer ones are cut, and say so.
MAX_PATCH_CHARS = 12_000


def split_diff(call: AgentCall) -> dict[str, Any]:
    """The input names a unified diff file (or is {"path": ...}); the output lists each
    changed file with its patch."""
    source = call.input.get("path") if isinstance(call.input, dict) else call.input
    if not isinstance(source, str):
        raise PermanentAgentError('input must be a diff file path or {"path": ...}')
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise PermanentAgentError(f"cannot read {source}: {exc.strerror}") from None
    files: list[dict[str, Any]] = []
    for block in text.split("\ndiff --git "):
        block = block.removeprefix("diff --git ")
        if not block.strip():
            continue
        header, _, _ = block.partition("\n")
        path = header.split(" b/", 1)[-1].strip()
        patch = "diff --git " + block
        files.append(
            {
                "path": path,
                "patch": patch[:MAX_PATCH_CHARS],
                "truncated": len(patch) > MAX_PATCH_CHARS,
                "added_lines": sum(
                    1
                    for line in block.splitlines()
                    if line.startswith("+") and not line.startswith("+++")
                ),
            }
        )
    return {"files": files}


def collect(call: AgentCall) -> dict[str, Any]:
    """One review: every finding with its file, the worst severity, and a verdict."""
    files = call.outputs["split"]["files"]
    reviews = call.outputs["review"]
    order = {"info": 0, "warning": 1, "error": 2}
    findings = []
    for changed, review in zip(files, reviews, strict=True):
        for finding in (review or {}).get("findings", []):
            findings.append({"file": changed["path"], **finding})
    findings.sort(key=lambda f: (-order.get(f.get("severity", "info"), 0), f["file"]))
    worst = max((order.get(f.get("severity", "info"), 0) for f in findings), default=-1)
    verdict = "request-changes" if worst == 2 else "comment" if worst == 1 else "approve"
    return {
        "files_reviewed": len(files),
        "findings": findings,
        "verdict": verdict,
    }


# Weakness classes a reviewer may cite (a small excerpt of MITRE's CWE list).
_WEAKNESSES = {
    "sql injection": (
        "CWE-89",
        "Improper Neutralization of Special Elements used in an SQL Command",
    ),
    "hard-coded credential": ("CWE-798", "Use of Hard-coded Credentials"),
    "command injection": (
        "CWE-78",
        "Improper Neutralization of Special Elements used in an OS Command",
    ),
    "path traversal": ("CWE-22", "Improper Limitation of a Pathname to a Restricted Directory"),
    "missing error handling": ("CWE-755", "Improper Handling of Exceptional Conditions"),
    "cross-site scripting": (
        "CWE-79",
        "Improper Neutralization of Input During Web Page Generation",
    ),
}


def lookup_weakness(keyword: str) -> dict[str, str]:
    """The CWE entry for a kind of weakness, e.g. "sql injection" or "hard-coded credential"."""
    wanted = keyword.strip().lower()
    for name, (cwe, title) in _WEAKNESSES.items():
        if name in wanted or wanted in name:
            return {"cwe": cwe, "title": title}
    known = ", ".join(sorted(_WEAKNESSES))
    raise KeyError(f"no weakness matches {keyword!r}; known: {known}")
