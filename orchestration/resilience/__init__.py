"""Policies that keep delegations' promises: backoff, time limits (breakers come next)."""
