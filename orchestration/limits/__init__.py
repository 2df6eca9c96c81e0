"""Capacity: routing an agent's calls among its endpoints, and the cluster-wide limits
of agents, endpoints and a team's keys, kept in Redis (or, embedded, in the process).

- ``demand``: what one call asks of the limiter, and what it answers (pure data);
- ``plan``: an agent spec's endpoints and limits, as the limiter counts them;
- ``redis_limiter`` (its Lua in ``scripts``) and ``local_limiter``: the two limiters;
- ``gate``: a delegation's admission: breakers first, then the limiter;
- ``connect``: which limiter a deployment's settings give.
"""
