"""YAML for configs: the same documents as `yaml.safe_load`, fast enough for 100,000 tenants.

A config with 100,000 tenants is ~12 MB of YAML, one million parser events. libyaml's parser
(PyYAML's `CSafeLoader`) reads it in C, but PyYAML then builds a node per value and constructs
Python objects from the nodes in Python: ~2.5 s. `load` builds the objects straight from the
parser's events instead (~1 s) for plain documents: mappings, sequences and scalars without
anchors, aliases, explicit tags or merge keys. A document with any of those is loaded again the
usual way, so the result is always exactly what `safe_load` returns (the unit tests compare).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml import events
from yaml.nodes import ScalarNode

__all__ = ["LOADER", "load"]

LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when this PyYAML has it."""

_STR = "tag:yaml.org,2002:str"
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("int", "float", "bool", "null", "timestamp")
)


class _Unusual(Exception):
    """The document uses a feature the fast path leaves to PyYAML's constructor."""


def load(text: str) -> Any:
    """`yaml.safe_load(text)`, faster; raises yaml.YAMLError as it does."""
    loader = LOADER(text)
    try:
        return _build(loader)
    except _Unusual:
        pass
    finally:
        loader.dispose()
    return yaml.load(text, Loader=LOADER)


def _build(loader: yaml.SafeLoader) -> Any:
    by_first_character = loader.yaml_implicit_resolvers
    if None in by_first_character or loader.yaml_path_resolvers:
        raise _Unusual  # resolvers of every value: let PyYAML apply them
    constructors = loader.yaml_constructors
    get_event = loader.get_event
    stack: list[list[Any]] = []  # [container, key waiting for its value]
    nokey = object()
    root: Any = None
    documents = 0
    scalar, mapping, sequence = (
        events.ScalarEvent,
        events.MappingStartEvent,
        events.SequenceStartEvent,
    )
    while True:
        event = get_event()
        kind = type(event)
        value: Any
        if kind is scalar:
            if event.anchor is not None or (event.tag is not None and event.tag != "!"):
                raise _Unusual
            value = event.value
            if event.implicit[0] and (not value or value[0] in by_first_character):
                tag = loader.resolve(ScalarNode, value, event.implicit)
                if tag in _PLAIN_TAGS:
                    value = constructors[tag](loader, ScalarNode(tag, value))
                elif tag != _STR:
                    raise _Unusual  # merge keys, `=`
        elif kind is mapping or kind is sequence:
            if event.anchor is not None or (event.tag is not None and event.tag != "!"):
                raise _Unusual
            stack.append([{} if kind is mapping else [], nokey])
            continue
        elif kind is events.MappingEndEvent or kind is events.SequenceEndEvent:
            value = stack.pop()[0]
        elif kind is events.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise _Unusual  # PyYAML says why a config cannot have two documents
            continue
        elif kind is events.StreamEndEvent:
            return root
        elif kind is events.StreamStartEvent or kind is events.DocumentEndEvent:
            continue
        else:  # an alias
            raise _Unusual
        if not stack:
            root = value
            continue
        top = stack[-1]
        container = top[0]
        if type(container) is list:
            container.append(value)
        elif top[1] is nokey:
            if isinstance(value, dict | list) or value == "<<":
                raise _Unusual  # unhashable keys and quoted "<<": PyYAML's words
            top[1] = value
        else:
            container[top[1]] = value
            top[1] = nokey
