"""Pure parts of the worker metrics and of `manage.py flower`'s guard."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestration.cli.process_commands import _authenticated, _credential, _loopback
from workers.metrics import queued_since


def test_a_message_waits_from_its_send_or_from_its_eta_if_later() -> None:
    assert queued_since(100.0, None) == 100.0
    eta = datetime.fromtimestamp(130.5, tz=UTC).isoformat()
    assert queued_since(100.0, eta) == 130.5
    early = datetime.fromtimestamp(90.0, tz=UTC).isoformat()
    assert queued_since(100.0, early) == 100.0
    assert queued_since(100.0, "not a date") == 100.0


def test_a_message_without_the_header_has_no_wait() -> None:
    assert queued_since(None, None) is None
    assert queued_since("100", None) is None


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("10.1.2.3", False),
        ("flower.example.com", False),
    ],
)
def test_which_addresses_count_as_loopback(address: str, loopback: bool) -> None:
    assert _loopback(address) is loopback


def test_authentication_comes_from_flower_options_or_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    monkeypatch.delenv("FLOWER_AUTH", raising=False)
    assert not _authenticated(())
    assert not _authenticated(("--persistent=True",))
    assert _authenticated(("--basic-auth=a:b",))
    assert _authenticated(("--auth", ".*@example.com"))
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "a:b")
    assert _authenticated(())


def test_credentials_are_user_password_pairs() -> None:
    assert _credential("user:pass")
    assert _credential("user:pa:ss")
    assert not _credential("user")
    assert not _credential(":pass")
    assert not _credential("user:")
