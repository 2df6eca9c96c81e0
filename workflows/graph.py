"""Dependency graphs: topological levels and cycle detection. Pure, iterative functions
(a 10,000-step sequential team is a 10,000-deep chain: no recursion)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class CycleError(ValueError):
    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__("dependency cycle: " + " -> ".join(self.cycle))


def find_cycle(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as a closed path in run order (first node repeated), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(order, white)
    for root in order:
        if colour[root] != white:
            continue
        path: list[str] = [root]
        branches = [iter(deps.get(root, ()))]
        colour[root] = grey
        while branches:
            dep = next(branches[-1], None)
            if dep is None:
                colour[path.pop()] = black
                branches.pop()
                continue
            state = colour.get(dep)
            if state == grey:
                cycle = [*path[path.index(dep) :], dep]
                # Edges point from a step to what it needs: reverse for run order.
                return list(reversed(cycle))
            if state == white:
                colour[dep] = grey
                path.append(dep)
                branches.append(iter(deps.get(dep, ())))
    return None


def topological_levels(
    order: Sequence[str], deps: Mapping[str, Sequence[str]]
) -> tuple[tuple[str, ...], ...]:
    """Group nodes into levels: every node's dependencies sit in earlier levels.

    A node's level is the length of the longest dependency path leading to it, so
    independent work shares a level. Within a level, nodes keep their declared order.
    """
    cycle = find_cycle(order, deps)
    if cycle:
        raise CycleError(cycle)
    dependents: dict[str, list[str]] = {node: [] for node in order}
    waiting = {node: len(deps.get(node, ())) for node in order}
    for node in order:
        for dep in deps.get(node, ()):
            dependents[dep].append(node)
    level = dict.fromkeys(order, 0)
    ready = [node for node in order if waiting[node] == 0]
    while ready:
        node = ready.pop()
        for child in dependents[node]:
            level[child] = max(level[child], level[node] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    count = 1 + max(level.values(), default=-1)
    buckets: list[list[str]] = [[] for _ in range(count)]
    for node in order:
        buckets[level[node]].append(node)
    return tuple(tuple(bucket) for bucket in buckets)


def sinks(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Nodes nothing depends on, in declared order."""
    depended_on = {d for node in order for d in deps.get(node, ())}
    return tuple(n for n in order if n not in depended_on)


def ancestors(node: str, deps: Mapping[str, Sequence[str]]) -> frozenset[str]:
    seen: set[str] = set()
    todo = list(deps.get(node, ()))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(deps.get(current, ()))
    return frozenset(seen)
