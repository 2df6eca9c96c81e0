"""Secrets named in team files, read from the worker's environment at call time.

A team file names a variable (``api_key_env: OPENAI_API_KEY``, a header
``Bearer ${API_TOKEN}``); only the name is stored, sent or shown. The value is read
when a call is made, and every value read is remembered by this process so that
anything Troupe writes down (an attempt's error, a log line) can be scrubbed of it:
an HTTP library's exception may echo the request's headers.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping

from orchestration.errors import SecretMissing

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Shorter values would scrub ordinary words out of messages; no real key is this short.
_MIN_SECRET = 6
MASK = "[redacted]"

_seen: set[str] = set()
_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of environment variable ``name``; SecretMissing if unset or empty."""
    value = (os.environ if environ is None else environ).get(name)
    if not value:
        raise SecretMissing(f"environment variable {name} is not set in the worker")
    _remember(value)
    return value


def expand(template: str, environ: Mapping[str, str] | None = None) -> str:
    """``template`` with each ``${NAME}`` replaced by that variable's value."""
    return _PLACEHOLDER.sub(lambda match: read_secret(match.group(1), environ), template)


def names_in(template: str) -> list[str]:
    """The variables ``template`` names."""
    return _PLACEHOLDER.findall(template)


def redact(text: str) -> str:
    """``text`` with every secret value this process has read masked."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def _remember(value: str) -> None:
    global _pattern
    if len(value) < _MIN_SECRET or value in _seen:
        return
    with _lock:
        _seen.add(value)
        # Longest first, so a value that contains another is masked whole.
        ordered = sorted(_seen, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))


class RedactingFilter(logging.Filter):
    """Masks secret values in a log record's final message (installed on the worker's
    handlers: a library's log line may quote a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        message = record.getMessage()
        scrubbed = redact(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            text = redact(str(record.exc_info[1]))
            if text != str(record.exc_info[1]):
                # The traceback would print the message again: keep the type and the
                # masked message only.
                record.msg = f"{record.msg} ({type(record.exc_info[1]).__name__}: {text})"
                record.exc_info = None
                record.exc_text = None
        return True
