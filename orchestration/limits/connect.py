"""Which limiter a deployment's settings give: Redis (the broker's, or TROUPE_REDIS_URL);
embedded without Redis, one in the process; otherwise none (an agent with limits is
then refused, saying why)."""

from __future__ import annotations

import threading

from orchestration.limits.demand import Limiter
from orchestration.limits.local_limiter import LocalLimiter
from orchestration.settings import Settings

_local: LocalLimiter | None = None
_lock = threading.Lock()


def limiter_for(settings: Settings) -> Limiter | None:
    url = settings.effective_redis_url
    if url is not None:
        from orchestration.limits.redis_limiter import RedisLimiter

        return RedisLimiter(url)
    if settings.embedded:
        return process_limiter()
    return None


def process_limiter() -> LocalLimiter:
    """The process's own limiter: every embedded runtime of a process shares it, as they
    share one worker."""
    global _local
    with _lock:
        if _local is None:
            _local = LocalLimiter()
        return _local
