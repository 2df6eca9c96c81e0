"""Agents of the ``code-audit`` example team.

Three scanners look at the same folder of Python files independently, so the
workflow can run them in parallel; a fixer turns their findings into suggested
actions, and a reporter joins everything into one summary.  Every agent is a
plain function of one ``call`` argument and returns plain JSON data, so the
results survive any result backend unchanged.

The scanners only read files.  Nothing here writes to the audited folder.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "AgentCallLike",
    "plan_fixes",
    "report",
    "scan_secrets",
    "scan_syntax",
    "scan_todos",
]

SCANNERS = ("syntax", "todos", "secrets")

_SKIPPED_DIRS = frozenset({".venv", "__pycache__"})

# Upper case only: these are conventions, and "hack" or "xxx" in ordinary prose
# would otherwise drown the real markers.
_MARKER_RE = re.compile(r"\b(TODO|FIXME|XXX|HACK)\b")

# Matched anywhere in the name so that DB_PASSWORD, self.api_key and
# GITHUB_TOKEN are all caught.
_SECRET_NAME_RE = re.compile(r"password|passwd|secret|token|api_?key|private_?key", re.IGNORECASE)

# Values that people leave in code precisely because they are *not* secrets.
_PLACEHOLDERS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "dummy",
        "example",
        "fake",
        "none",
        "null",
        "password",
        "placeholder",
        "redacted",
        "secret",
        "test",
        "todo",
        "token",
        "your-api-key",
        "your_api_key",
    }
)
# Template syntax (<...>, ${...}, {{...}}) means the value is filled in elsewhere.
_TEMPLATE_RE = re.compile(r"^(<.*>|\$\{.*\}|\{\{.*\}\}|%\(.*\)s)$", re.DOTALL)

# Well-known credential shapes; these are worth reporting whatever the
# variable is called, and even in files that do not parse.
_KEY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("aws-access-key-id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("private-key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")),
    ("github-token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("slack-token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("stripe-secret-key", re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}")),
    # After Stripe's pattern: "sk-" with a hyphen is the OpenAI-style shape.
    ("sk-api-key", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")),
)


class AgentCallLike(Protocol):
    """What the agents read from the call object the runtime passes in.

    Read-only properties rather than plain attributes so that frozen
    dataclasses and other immutable stand-ins satisfy the protocol too.
    """

    @property
    def step_id(self) -> str: ...

    @property
    def task(self) -> str | None: ...

    @property
    def input(self) -> Any: ...

    @property
    def outputs(self) -> Mapping[str, Any]: ...

    @property
    def attempt(self) -> int: ...


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------


def _target_folder(call: AgentCallLike) -> Path:
    """Resolve the folder to audit from the execution input.

    A missing folder is an error rather than an empty result: an audit that
    silently scans nothing would report a clean bill of health.
    """
    raw = call.input
    if isinstance(raw, Mapping):
        raw = raw.get("path")
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(
            "code-audit input must be a folder path string or a mapping "
            f'{{"path": "<folder>"}}; got {call.input!r}'
        )
    folder = Path(raw)
    if not folder.is_dir():
        raise ValueError(
            f"code-audit input path {raw!r} is not a directory "
            f"(relative paths are resolved against {Path.cwd()})"
        )
    return folder


def _python_files(folder: Path) -> list[tuple[str, Path]]:
    """Every ``*.py`` under *folder* as ``(posix relative path, path)``, sorted.

    Sorted so that findings come out in the same order on every machine,
    which keeps reports diffable and tests deterministic.
    """
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # Pruning in place stops os.walk from descending into virtualenvs,
        # caches and VCS metadata, which are not the project's own code.
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS and not d.startswith(".")]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = Path(dirpath, name)
            # Broken symlinks and sockets named *.py cannot be read.
            if path.is_file():
                found.append((path.relative_to(folder).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return found


def _parse(source: bytes, rel: str) -> ast.Module:
    """Parse *source* as the scanners need it.

    Bytes rather than text so that PEP 263 encoding cookies are honoured.
    Warnings are silenced because the parser reports things like invalid
    escape sequences through them: noise in a worker's log, and a spurious
    SyntaxError wherever warnings are turned into errors.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source, filename=rel)


def _parse_or_none(source: bytes, rel: str) -> ast.Module | None:
    try:
        return _parse(source, rel)
    except (SyntaxError, ValueError):
        # ValueError: null bytes in the source on Python < 3.12.
        return None


def _result(files: int, findings: list[dict[str, Any]]) -> dict[str, Any]:
    return {"files": files, "issues": len(findings), "findings": findings}


# --------------------------------------------------------------------------
# Scanners
# --------------------------------------------------------------------------


def scan_syntax(call: AgentCallLike) -> dict[str, Any]:
    """Report every Python file under the target folder that does not parse."""
    files = _python_files(_target_folder(call))
    findings: list[dict[str, Any]] = []
    for rel, path in files:
        try:
            _parse(path.read_bytes(), rel)
        except SyntaxError as exc:
            findings.append({"file": rel, "line": exc.lineno or 0, "message": exc.msg})
        except ValueError as exc:
            findings.append({"file": rel, "line": 0, "message": str(exc)})
    return _result(len(files), findings)


def _comment_markers(source: bytes) -> list[tuple[int, str, str]]:
    """``(line, marker, comment)`` for each marker in *source*'s comments.

    Raises whatever tokenize raises on source it cannot lex.
    """
    found: list[tuple[int, str, str]] = []
    for tok in tokenize.tokenize(io.BytesIO(source).readline):
        # Only COMMENT tokens: a marker inside a string literal is data,
        # not a note left for the maintainers.
        if tok.type != tokenize.COMMENT:
            continue
        for match in _MARKER_RE.finditer(tok.string):
            found.append((tok.start[0], match.group(1), tok.string.strip()))
    return found


def scan_todos(call: AgentCallLike) -> dict[str, Any]:
    """Count TODO / FIXME / XXX / HACK markers in comments."""
    files = _python_files(_target_folder(call))
    findings: list[dict[str, Any]] = []
    for rel, path in files:
        try:
            markers = _comment_markers(path.read_bytes())
        except (tokenize.TokenError, SyntaxError, ValueError):
            # A file that cannot even be lexed is already reported by the
            # syntax scanner; half a token stream would give misleading lines.
            continue
        findings.extend(
            {"file": rel, "line": line, "marker": marker, "message": comment}
            for line, marker, comment in markers
        )
    return _result(len(files), findings)


def _mask(value: str) -> str:
    """A preview that identifies a secret to its owner without leaking it.

    At most four characters are shown, and never more than a quarter of the
    value, so short secrets are not effectively printed in full.
    """
    if len(value) >= 16:
        return f"{value[:2]}…{value[-2:]}"
    if len(value) >= 8:
        return f"{value[:1]}…{value[-1:]}"
    return "…"


def _is_placeholder(value: str) -> bool:
    stripped = value.strip()
    if not stripped:
        return True
    if stripped.lower() in _PLACEHOLDERS or _TEMPLATE_RE.match(stripped):
        return True
    # "****", "xxxxxxxx", "..." and the like are masks, not values.
    return len(set(stripped)) == 1


def _target_name(target: ast.expr) -> str | None:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        # self.api_key = "..." leaks as surely as a module-level constant.
        return target.attr
    return None


def _named_secret_assignments(
    tree: ast.Module,
) -> Iterator[tuple[str, ast.Constant, str]]:
    """``(name, literal node, value)`` for each string bound to a secret-like name."""
    for node in ast.walk(tree):
        pairs: list[tuple[str | None, ast.expr]] = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs.append((_target_name(target), node.value))
                if isinstance(target, (ast.Tuple, ast.List)) and isinstance(
                    node.value, (ast.Tuple, ast.List)
                ):
                    # user, password = "admin", "..." pairs up positionally.
                    pairs.extend(
                        (_target_name(t), v)
                        for t, v in zip(target.elts, node.value.elts, strict=False)
                    )
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs.append((_target_name(node.target), node.value))
        elif isinstance(node, ast.keyword):
            # connect(password="...") hard-codes a secret just as surely.
            pairs.append((node.arg, node.value))
        for name, value in pairs:
            # Only literals count: os.environ["TOKEN"] or a config lookup
            # is exactly what the fix should look like.
            if (
                name is not None
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
                and _SECRET_NAME_RE.search(name)
                and not _is_placeholder(value.value)
            ):
                yield name, value, value.value


def _pattern_hits(text: str) -> Iterator[tuple[str, str]]:
    """``(pattern name, matched text)`` for each well-known key shape in *text*."""
    claimed: list[tuple[int, int]] = []
    for name, pattern in _KEY_PATTERNS:
        for match in pattern.finditer(text):
            # One credential should produce one finding even when two
            # patterns overlap on it.
            if any(match.start() < end and start < match.end() for start, end in claimed):
                continue
            claimed.append(match.span())
            yield name, match.group(0)


def _secret_finding(rel: str, line: int, kind: str, name: str, value: str) -> dict[str, Any]:
    what = f"string assigned to {name}" if kind == "assignment" else f"{name} pattern"
    return {
        "file": rel,
        "line": line,
        "kind": kind,
        "name": name,
        "preview": _mask(value),
        "message": f"possible hard-coded secret: {what}",
    }


def _secrets_in_tree(rel: str, tree: ast.Module) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    reported: set[int] = set()
    for name, literal, value in _named_secret_assignments(tree):
        if id(literal) in reported:
            continue
        reported.add(id(literal))
        findings.append(_secret_finding(rel, literal.lineno, "assignment", name, value))
    for node in ast.walk(tree):
        # A literal already reported by its variable name would otherwise
        # be counted twice when it also has a recognisable shape.
        if id(node) in reported:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            findings.extend(
                _secret_finding(rel, node.lineno, "pattern", pattern, matched)
                for pattern, matched in _pattern_hits(node.value)
            )
    return findings


def _secrets_in_text(rel: str, text: str) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, matched in _pattern_hits(line):
            findings.append(_secret_finding(rel, number, "pattern", pattern, matched))
    return findings


def scan_secrets(call: AgentCallLike) -> dict[str, Any]:
    """Find string literals that look like hard-coded credentials.

    The secret values never appear in the output, only a masked preview: the
    report is likely to end up in logs and result backends.
    """
    files = _python_files(_target_folder(call))
    findings: list[dict[str, Any]] = []
    for rel, path in files:
        source = path.read_bytes()
        tree = _parse_or_none(source, rel)
        if tree is not None:
            found = _secrets_in_tree(rel, tree)
        else:
            # A file with a syntax error can still leak a key; the shapes
            # are distinctive enough to search for in the raw text.
            found = _secrets_in_text(rel, source.decode("utf-8", errors="replace"))
        found.sort(key=lambda finding: finding["line"])
        findings.extend(found)
    return _result(len(files), findings)


# --------------------------------------------------------------------------
# Fixer and reporter
# --------------------------------------------------------------------------


def _findings(outputs: Mapping[str, Any], step: str) -> list[Mapping[str, Any]]:
    """The findings of one scanner step, or none if it is missing or malformed.

    A scanner that failed or was skipped leaves no usable output; the fixer
    and the reporter should still work with what the others produced.
    """
    output = outputs.get(step)
    if not isinstance(output, Mapping):
        return []
    findings = output.get("findings")
    if not isinstance(findings, list):
        return []
    return [f for f in findings if isinstance(f, Mapping)]


def _action(step: str, finding: Mapping[str, Any]) -> str:
    if step == "syntax":
        return f"fix the syntax error: {finding.get('message', 'unknown error')}"
    if step == "todos":
        marker = finding.get("marker", "TODO")
        return f"resolve the {marker} or move it to a ticket and delete the comment"
    name = finding.get("name", "secret")
    if finding.get("kind") == "assignment":
        return f"move the value of {name} to an environment variable or secret store, and rotate it"
    return f"remove the {name} from the source, rotate it, and load it from the environment"


def plan_fixes(call: AgentCallLike) -> dict[str, Any]:
    """Suggest one concrete action per finding.  It does not modify files."""
    fixes: list[dict[str, Any]] = []
    for step in SCANNERS:
        for finding in _findings(call.outputs, step):
            fixes.append(
                {
                    "file": finding.get("file"),
                    "line": finding.get("line"),
                    "scanner": step,
                    "action": _action(step, finding),
                }
            )
    # Grouped by file so that whoever applies them can work one file at a time.
    fixes.sort(key=lambda fix: (str(fix["file"]), _int(fix["line"])))
    return {"fixes": fixes, "count": len(fixes)}


def _int(value: Any) -> int:
    # bool is an int subclass, but True is not a count.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0


def report(call: AgentCallLike) -> dict[str, Any]:
    """Join all available step outputs into one summary.

    Works when the fixer was skipped (nothing to fix) or when a scanner left
    no output; a missing scanner makes the verdict "needs-attention", since
    nothing can be said about what it would have found.
    """
    outputs = call.outputs
    by_scanner: dict[str, int] = {}
    files_scanned = 0
    missing: list[str] = []
    for step in SCANNERS:
        output = outputs.get(step)
        if not isinstance(output, Mapping):
            missing.append(step)
            by_scanner[step] = 0
            continue
        issues = output.get("issues")
        by_scanner[step] = _int(issues) if issues is not None else len(_findings(outputs, step))
        # All scanners walk the same folder; max() tolerates one that failed.
        files_scanned = max(files_scanned, _int(output.get("files")))
    fix = outputs.get("fix")
    fixes_planned = _int(fix.get("count")) if isinstance(fix, Mapping) else 0
    total = sum(by_scanner.values())
    return {
        "files_scanned": files_scanned,
        "total_issues": total,
        "by_scanner": by_scanner,
        "fixes_planned": fixes_planned,
        "missing_scanners": missing,
        "verdict": "clean" if total == 0 and not missing else "needs-attention",
    }
