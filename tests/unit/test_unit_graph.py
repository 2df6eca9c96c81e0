"""Dependency graphs: levels, cycles, sinks and ancestors. deps maps node -> what it runs after."""

from itertools import pairwise

import pytest

from workflows.graph import CycleError, ancestors, find_cycle, sinks, topological_levels

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


@pytest.mark.parametrize(
    ("order", "deps", "levels"),
    [
        ("abc", {}, (("a", "b", "c"),)),
        ("abc", {"b": ["a"], "c": ["b"]}, (("a",), ("b",), ("c",))),
        ("abcd", DIAMOND, (("a",), ("b", "c"), ("d",))),
        # Longest path decides the level: d waits for c even though a is earlier.
        ("abcd", {"b": ["a"], "c": ["b"], "d": ["a", "c"]}, (("a",), ("b",), ("c",), ("d",))),
        # Declared order is kept inside a level, whatever order deps are listed in.
        ("zyx", {"x": ["z", "y"]}, (("z", "y"), ("x",))),
        ("", {}, ()),
    ],
)
def test_topological_levels(order, deps, levels):
    assert topological_levels(list(order), deps) == levels


def test_levels_refuse_a_cycle():
    with pytest.raises(CycleError) as info:
        topological_levels(["a", "b"], {"a": ["b"], "b": ["a"]})
    assert str(info.value) in ("dependency cycle: a -> b -> a", "dependency cycle: b -> a -> b")


@pytest.mark.parametrize(
    ("order", "deps"),
    [
        ("a", {"a": ["a"]}),
        ("ab", {"a": ["b"], "b": ["a"]}),
        ("abc", {"a": ["c"], "b": ["a"], "c": ["b"]}),
        ("abcd", {"b": ["a", "d"], "c": ["b"], "d": ["c"]}),
    ],
)
def test_find_cycle_returns_a_closed_path_in_run_order(order, deps):
    cycle = find_cycle(list(order), deps)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    # Each node in the path runs before the next one: the next depends on it.
    for before, after in pairwise(cycle):
        assert before in deps[after]


def test_find_cycle_example_order():
    deps = {"x": ["z"], "y": ["x"], "z": ["y"]}
    assert find_cycle(["x", "y", "z"], deps) == ["x", "y", "z", "x"]


@pytest.mark.parametrize("deps", [{}, DIAMOND, {"b": ["a"], "c": ["a"]}])
def test_find_cycle_none_for_acyclic_graphs(deps):
    assert find_cycle(list("abcd"), deps) is None


@pytest.mark.parametrize(
    ("order", "deps", "expected"),
    [
        ("abcd", DIAMOND, ("d",)),
        ("abc", {"b": ["a"], "c": ["a"]}, ("b", "c")),
        ("abc", {}, ("a", "b", "c")),
        ("abc", {"b": ["a"], "c": ["b"]}, ("c",)),
    ],
)
def test_sinks(order, deps, expected):
    assert sinks(list(order), deps) == expected


@pytest.mark.parametrize(
    ("node", "expected"),
    [("a", set()), ("b", {"a"}), ("c", {"a"}), ("d", {"a", "b", "c"})],
)
def test_ancestors(node, expected):
    assert ancestors(node, DIAMOND) == frozenset(expected)


def test_ancestors_are_transitive_and_exclude_unrelated_nodes():
    deps = {"b": ["a"], "c": ["b"], "x": [], "y": ["x"]}
    assert ancestors("c", deps) == {"a", "b"}
    assert ancestors("y", deps) == {"x"}
