"""The raw Celery counterpart of Troupe's embedded mode: in-memory transport polled every
10 ms, cache+memory results, JSON only, and a threads WorkController inside the process,
set up as workers/embedded.py sets up Troupe's. Its tasks call the example team's agent
functions directly, or do nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

app = Celery("bench_raw_embedded")
app.conf.update(
    broker_url="memory://localhost/",
    result_backend="cache+memory://",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="bench-raw-embedded",
    broker_transport_options={"polling_interval": 0.01},
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)

SCANNERS = ("syntax", "todos", "secrets")


def _call(step_id: str, folder: str, outputs: dict[str, Any]) -> Any:
    from orchestration.agents.call import AgentCall

    return AgentCall(
        execution_id="raw",
        step_id=step_id,
        agent=step_id,
        task=None,
        input=folder,
        outputs=outputs,
        attempt=1,
    )


@app.task(name="bench.raw_embedded.noop")
def noop(*_: Any) -> None:
    return None


@app.task(name="bench.raw_embedded.scan")
def scan(kind: str, folder: str) -> Any:
    from examples.agents import audit

    function = {
        "syntax": audit.scan_syntax,
        "todos": audit.scan_todos,
        "secrets": audit.scan_secrets,
    }[kind]
    return function(_call(kind, folder, {}))


@app.task(name="bench.raw_embedded.fix")
def fix(scans: list[Any], folder: str) -> dict[str, Any]:
    """The conditional step: plan fixes only when the scanners found something."""
    from examples.agents import audit

    outputs = dict(zip(SCANNERS, scans, strict=True))
    issues = sum(int(output.get("issues", 0)) for output in outputs.values())
    planned = audit.plan_fixes(_call("fix", folder, outputs)) if issues > 0 else None
    return {"outputs": outputs, "fix": planned}


@app.task(name="bench.raw_embedded.report")
def report(state: dict[str, Any], folder: str) -> Any:
    from examples.agents import audit

    outputs = dict(state["outputs"])
    if state["fix"] is not None:
        outputs["fix"] = state["fix"]
    return audit.report(_call("report", folder, outputs))


def example_canvas(folder: str) -> Signature:
    scans = group(scan.si(kind, folder) for kind in SCANNERS)
    return chain(chord(scans, fix.s(folder)), report.s(folder))


def noop_chain(count: int) -> Signature:
    return chain(*(noop.si() for _ in range(count)))


def start_worker(concurrency: int, timeout: float = 10.0) -> Any:
    """A WorkController on threads in a daemon thread; returns once it consumes."""
    ready = threading.Event()
    app.set_default()

    class Controller(app.WorkController):  # type: ignore[name-defined,misc]
        def on_consumer_ready(self, consumer: object) -> None:
            ready.set()

    controller = Controller(
        pool="threads",
        concurrency=concurrency,
        queues=["bench-raw-embedded"],
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        hostname=f"bench-raw-embedded@{threading.get_native_id()}",
    )
    thread = threading.Thread(target=controller.start, name="raw-embedded-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the raw embedded worker did not start")
    return controller
