"""Safe YAML loading with bounds, checked event by event, before any value is built.

PyYAML's safe loader never runs code, but it trusts the document's shape: a kilobyte of
nested aliases ("billion laughs") becomes a small graph that anything walking it as a tree
(validation, an error message) expands into billions of nodes; nesting deep enough exhausts
the stack; a number of thousands of digits makes the constructor raise an error that is not
a YAML error. And its Python composer and constructor cost about ten times what libyaml's
parser does, so the node limit a 10,000-step team needs would take seconds to reach.

So this module builds plain data straight from libyaml's events: the same values as
``yaml.safe_load`` for what a team file holds (scalars resolved as YAML 1.1, anchors,
aliases and ``<<`` merge keys), counting every node (an alias as all it repeats) and every
level of nesting as it goes. Tags that build sets or ordered pairs are refused: a team file
has no use for them. Every refusal is a ``yaml.MarkedYAMLError`` that names the line.
"""

from __future__ import annotations

from typing import Any

from yaml.composer import ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import YAMLError
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from orchestration.team_limits import MAX_NUMBER_CHARS, MAX_YAML_DEPTH, MAX_YAML_NODES

_Parser: Any
try:
    # libyaml's scanner and parser: fast, and they keep their own stack, not Python's.
    from yaml._yaml import CParser as _Parser
except ImportError:  # PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _MERGE_TAG = _TAG + "str", _TAG + "int", _TAG + "float", _TAG + "merge"
_COLLECTION_TAGS = frozenset({None, "!", _TAG + "seq", _TAG + "map"})
# Scalars other than strings, built by PyYAML's own safe constructor.
_SCALAR_BUILDERS = {
    _TAG + "null": SafeConstructor.construct_yaml_null,
    _TAG + "bool": SafeConstructor.construct_yaml_bool,
    _INT: SafeConstructor.construct_yaml_int,
    _FLOAT: SafeConstructor.construct_yaml_float,
    _TAG + "timestamp": SafeConstructor.construct_yaml_timestamp,
    _TAG + "binary": SafeConstructor.construct_yaml_binary,
}
# What those raise on a malformed value, e.g. `!!int abc`, `!!bool maybe`.
_VALUE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError)


class _Merge:
    """The ``<<`` key: its value's mappings are merged into the mapping that holds it."""


_MERGE = _Merge()


class _Collection:
    """A sequence or mapping being read: its items so far, and what is known of it."""

    __slots__ = ("anchor", "first_node", "is_mapping", "items", "key", "key_mark", "mark")

    def __init__(self, is_mapping: bool, anchor: str | None, mark: Any, first_node: int) -> None:
        self.is_mapping = is_mapping
        self.anchor = anchor
        self.mark = mark
        self.first_node = first_node
        self.items: list[Any] = []
        self.key: Any = None
        self.key_mark: Any = None


def load_bounded(text: str) -> Any:
    """The one document in ``text`` as plain data (None if empty); ``yaml.YAMLError`` for
    anything wrong or beyond the limits in orchestration/team_limits.py."""
    parser = _Parser(text)
    try:
        return _Builder().build(parser)
    finally:
        parser.dispose()


class _Builder:
    def __init__(self) -> None:
        self.resolver: Any = Resolver()
        self.constructor = SafeConstructor()
        self.nodes = 0
        self.open: list[_Collection] = []
        # Anchor -> (value, how many nodes it stands for); None while it is still being read.
        self.anchors: dict[str, tuple[Any, int] | None] = {}
        self.documents = 0
        self.root: Any = None

    def build(self, parser: Any) -> Any:
        while parser.check_event():
            event = parser.get_event()
            kind = type(event)
            if kind is ScalarEvent:
                self.count(1, event.start_mark)
                value = self.scalar(event)
                if event.anchor is not None:
                    self.anchor(event.anchor, event.start_mark)
                    self.anchors[event.anchor] = (value, 1)
                self.add(value, event.start_mark)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                self.start(event, is_mapping=kind is MappingStartEvent)
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                self.end()
            elif kind is AliasEvent:
                self.alias(event)
            elif kind is DocumentStartEvent:
                self.documents += 1
                if self.documents > 1:
                    raise _refused("more than one document", event.start_mark)
        return self.root

    def count(self, nodes: int, mark: Any) -> None:
        self.nodes += nodes
        if self.nodes > MAX_YAML_NODES:
            raise _refused(
                f"more than {MAX_YAML_NODES:,} nodes (an alias counts as all it repeats)", mark
            )

    def anchor(self, name: str, mark: Any) -> None:
        if name in self.anchors:
            raise _refused(f"anchor &{name} defined twice", mark)

    def start(self, event: Any, *, is_mapping: bool) -> None:
        mark = event.start_mark
        if event.tag not in _COLLECTION_TAGS:
            raise ConstructorError(None, None, f"unsupported tag {_short(event.tag)}", mark)
        if len(self.open) >= MAX_YAML_DEPTH:
            raise _refused(f"nested more than {MAX_YAML_DEPTH} levels deep", mark)
        self.count(1, mark)
        if event.anchor is not None:
            self.anchor(event.anchor, mark)
            self.anchors[event.anchor] = None
        self.open.append(_Collection(is_mapping, event.anchor, mark, self.nodes))

    def end(self) -> None:
        done = self.open.pop()
        value = _mapping(done) if done.is_mapping else done.items
        if done.anchor is not None:
            self.anchors[done.anchor] = (value, self.nodes - done.first_node + 1)
        self.add(value, done.mark)

    def alias(self, event: Any) -> None:
        mark = event.start_mark
        if event.anchor not in self.anchors:
            raise _refused(f"alias *{event.anchor} names no anchor before it", mark)
        known = self.anchors[event.anchor]
        if known is None:
            raise _refused("an alias inside the node it names", mark)
        value, size = known
        self.count(size, mark)
        self.add(value, mark)

    def add(self, value: Any, mark: Any) -> None:
        if not self.open:
            self.root = value
            return
        into = self.open[-1]
        if not into.is_mapping:
            into.items.append(value)
        elif into.key_mark is None:
            if value is not _MERGE and not _hashable(value):
                raise ConstructorError(
                    "while constructing a mapping", into.mark, "found unhashable key", mark
                )
            into.key, into.key_mark = value, mark
        else:
            into.items.append((into.key, value, into.key_mark))
            into.key = into.key_mark = None

    def scalar(self, event: Any) -> Any:
        value: str = event.value
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(ScalarNode, value, event.implicit)
        if tag == _STR:
            return value
        if tag == _MERGE_TAG:
            open_mapping = self.open and self.open[-1].is_mapping
            return _MERGE if open_mapping and self.open[-1].key_mark is None else value
        if tag in (_INT, _FLOAT) and len(value) > MAX_NUMBER_CHARS:
            raise _refused(
                f"a number of {len(value):,} characters; at most {MAX_NUMBER_CHARS}",
                event.start_mark,
            )
        builder = _SCALAR_BUILDERS.get(tag)
        if builder is None:
            raise ConstructorError(None, None, f"unsupported tag {_short(tag)}", event.start_mark)
        try:
            return builder(self.constructor, ScalarNode(tag, value))
        except YAMLError:
            raise
        except _VALUE_ERRORS:
            raise ConstructorError(
                None, None, f"not a valid {_short(tag)} value", event.start_mark
            ) from None


def _mapping(collection: _Collection) -> dict[Any, Any]:
    """Merged as PyYAML does: the mapping's own keys win, then the earliest merged one."""
    merged: list[dict[Any, Any]] = []
    own: dict[Any, Any] = {}
    for key, value, mark in collection.items:
        if key is not _MERGE:
            own[key] = value
        elif isinstance(value, dict):
            merged.append(value)
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            merged.extend(value)
        else:
            raise ConstructorError(
                "while constructing a mapping",
                collection.mark,
                "<< needs a mapping or a list of mappings",
                mark,
            )
    if not merged:
        return own
    result: dict[Any, Any] = {}
    for source in reversed(merged):
        result.update(source)
    result.update(own)
    return result


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _short(tag: str | None) -> str:
    return str(tag).replace(_TAG, "!!")


def _refused(problem: str, mark: Any) -> ComposerError:
    return ComposerError(None, None, problem, mark)
