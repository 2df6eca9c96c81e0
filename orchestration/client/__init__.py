"""The client: Team, ExecutionHandle and reports, and the process runtime behind them.

It sits on top: it uses the core of ``orchestration`` and the Celery app of ``workers``,
and nothing below imports it.
"""
