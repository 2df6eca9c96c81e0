"""Commands about what an execution's agents shared: context (input, outputs, memory,
a key's history) and messages."""

from __future__ import annotations

import json

import click
from rich.console import Console

from orchestration.cli import exit_codes
from orchestration.cli.render_context import print_context, print_history, print_messages
from orchestration.client.team import execution


@click.command()
@click.argument("execution_id")
@click.option("--at", "at_step", metavar="STEP", help="As this step saw it.")
@click.option("--history", "key", metavar="KEY", help="Every write of this memory key.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON value.")
def context(execution_id: str, at_step: str | None, key: str | None, as_json: bool) -> int:
    """Show an execution's input, the outputs of its finished steps and its shared memory."""
    if at_step is not None and key is not None:
        raise click.UsageError("give --at or --history, not both")
    handle = execution(execution_id)
    if key is not None:
        writes = handle.memory_history(key)
        if as_json:
            click.echo(json.dumps([write.model_dump() for write in writes], ensure_ascii=False))
        else:
            print_history(Console(highlight=False), key, writes)
        return exit_codes.COMPLETED
    report = handle.context(at=at_step)
    if as_json:
        click.echo(report.model_dump_json())
    else:
        print_context(Console(highlight=False), report)
    return exit_codes.COMPLETED


@click.command()
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
def messages(execution_id: str, as_json: bool) -> int:
    """Show the messages an execution's agents sent, oldest first."""
    found = execution(execution_id).messages()
    if as_json:
        click.echo(json.dumps([message.model_dump() for message in found], ensure_ascii=False))
    else:
        print_messages(Console(highlight=False), found)
    return exit_codes.COMPLETED
