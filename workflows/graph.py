"""Dependency graphs: topological levels and cycle detection. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class CycleError(ValueError):
    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__("dependency cycle: " + " -> ".join(self.cycle))


def find_cycle(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as a closed path (first node repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(order, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for dep in deps.get(node, ()):
            if colour.get(dep) == grey:
                return [*stack[stack.index(dep) :], dep]
            if colour.get(dep) == white:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for node in order:
        if colour[node] == white:
            found = visit(node)
            if found:
                # Report the cycle in dependency order (a runs after b -> b before a).
                return list(reversed(found))
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
    level: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in level:
            level[node] = 1 + max((depth(d) for d in deps.get(node, ())), default=-1)
        return level[node]

    for node in order:
        depth(node)
    count = 1 + max(level.values(), default=-1)
    return tuple(tuple(n for n in order if level[n] == i) for i in range(count))


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
