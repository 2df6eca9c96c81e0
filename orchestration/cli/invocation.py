"""What one run of `manage.py` hands its commands: the settings, and a runtime made from
them when a command first needs one."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from orchestration.client.runtime import Runtime
from orchestration.settings import Settings


@dataclass
class Invocation:
    """The click context's object: made at the entry (``main``, or the group when it is
    invoked another way) from the settings read there, once."""

    settings: Settings
    _runtime: Runtime | None = field(default=None, init=False, repr=False)

    @property
    def runtime(self) -> Runtime:
        # Made on first use: `validate` and `db upgrade` need no state database or app.
        if self._runtime is None:
            self._runtime = Runtime.from_settings(self.settings)
        return self._runtime

    @property
    def embedded_worker_running(self) -> bool:
        runtime = self._runtime
        return runtime is not None and runtime.worker is not None and runtime.worker.running


# Commands take the invocation as their first argument.
pass_invocation = click.make_pass_decorator(Invocation)
