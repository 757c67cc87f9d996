"""YAML configuration files: PyYAML's SafeLoader, bounded (engine/config.py reads the files).

A module of its own so that a run whose files are all JSON (image-syncer's default names, images.json and
auth.json) never imports PyYAML: it is one of the slowest imports of ``imagesync sync`` (issue 13 point 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from imagesync.engine.config import MAX_ALIAS_NODES, MAX_NESTING
from imagesync.engine.errors import ConfigError


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader with bounded nesting, bounded alias expansion and duplicate keys refused.

    Errors are ``MarkedYAMLError`` subclasses, so they are reported like syntax errors, with a line.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_budget = MAX_ALIAS_NODES
        self._open_anchors: set[str] = set()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        anchor: str | None = event.anchor  # every event a node starts with has an anchor and a mark
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            if anchor in self._open_anchors:
                raise ComposerError(None, None, f"alias *{anchor} refers to a node that contains it", mark)
            node = super().compose_node(parent, index)
            if node is not None:
                self._charge_alias(node, anchor, mark)
            return node
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise ComposerError(None, None, f"nested more than {MAX_NESTING} levels deep", mark)
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            if anchor:
                self._open_anchors.discard(anchor)
            self._depth -= 1

    def _charge_alias(self, node: yaml.Node, anchor: str | None, mark: Any) -> None:
        """Count the nodes an alias stands for (stopping once over budget) and their depth where it sits."""
        stack = [(node, self._depth + 1)]
        while stack:
            current, depth = stack.pop()
            self._alias_budget -= 1
            if self._alias_budget < 0:
                raise ComposerError(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes", mark)
            if depth > MAX_NESTING:
                raise ComposerError(None, None, f"alias *{anchor} nests more than {MAX_NESTING} levels deep", mark)
            if isinstance(current, yaml.SequenceNode):
                stack.extend((child, depth + 1) for child in current.value)
            elif isinstance(current, yaml.MappingNode):
                stack.extend((part, depth + 1) for pair in current.value for part in pair)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys: a second rule for the same source would silently
        # replace the first. Merge keys (<<) may legitimately be overridden, so only explicit keys count.
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # an unhashable key: SafeConstructor reports it
                if duplicate:
                    raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(file: Path, text: str) -> Any:
    """The document in ``text`` (read from ``file``); bad YAML is a ConfigError naming the file and line."""
    loader: _ConfigLoader | None = None
    try:
        loader = _ConfigLoader(text)  # the reader refuses control characters here already
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        # ReaderError (a control character) has a reason, not a problem.
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "syntax error"
        hint = " (list several targets under one key)" if str(problem).startswith("duplicate key") else ""
        raise ConfigError(f"{file}: invalid YAML{where}: {problem}{hint}") from None
    except ValueError as exc:  # an integer of more than 4300 digits: the first clause says so
        raise ConfigError(f"{file}: invalid YAML: {str(exc).split(':')[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()
