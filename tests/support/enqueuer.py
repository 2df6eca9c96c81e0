"""A client process that enqueues executions on request, so a distributed test pays for
one client's start, not one per batch.

Reads one JSON object per line on stdin, ``{"team": PATH, "inputs": [...], "gap": S}``,
enqueues one execution per input (``gap`` seconds apart, 0 by default) on the deployment
its TROUPE_* environment names, and answers one line: ``{"ids": [...]}`` (or
``{"error": "..."}``). Prints ``{"ready": true}`` once it can take requests.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    from orchestration import Team

    teams: dict[str, Team] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            path = request["team"]
            team = teams.get(path) or teams.setdefault(path, Team.load(path))
            ids = []
            for i, value in enumerate(request["inputs"]):
                if i and request.get("gap"):
                    time.sleep(float(request["gap"]))
                ids.append(team.enqueue(value, check_worker=False).execution_id)
            print(json.dumps({"ids": ids}), flush=True)
        except Exception as exc:  # the test reads it and fails saying so
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
