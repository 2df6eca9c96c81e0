"""The `manage.py` command line."""

from orchestration.cli.main import cli, main

__all__ = ["cli", "main"]
