"""A config document that remembers where each key came from.

Validation errors must name the line of the offending key (or the `--set` that put it
there), so the YAML is composed into nodes first and their marks are kept beside the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuimon.errors import ConfigError

KeyPath = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` as a float (YAML 1.1 wants `3.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml_value(text: str) -> Any:
    """One YAML value, e.g. the right-hand side of `--set optimizer.lr=3e-4`."""
    return yaml.load(text, Loader=_Loader)


@dataclass
class ConfigSource:
    """Parsed config data plus a map from key paths to human-readable locations."""

    data: dict[str, Any]
    origin: str
    locations: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        """The location of `path`, or of its nearest ancestor that has one."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.locations:
                return self.locations[path[:cut]]
        return self.origin

    def apply_override(self, text: str) -> None:
        """Apply one `--set key.path=value`, the value parsed as YAML (so typed)."""
        where = f"--set {text}"
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError([f"{where}: expected KEY.PATH=VALUE, e.g. optimizer.lr=0.01"])
        parts = key.split(".")
        if any(not part for part in parts):
            raise ConfigError([f"{where}: empty key segment in {key!r}"])
        try:
            value = load_yaml_value(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{where}: value is not valid YAML: {exc}"]) from None
        node: dict[str, Any] = self.data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
                self.locations[tuple(parts[: depth + 1])] = where  # a section the --set made
            elif not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError([f"{where}: {prefix} is {child!r}, not a section"])
            node = child
        node[parts[-1]] = value
        path: KeyPath = tuple(parts)
        self.locations[path] = where
        # Everything below an overridden key now comes from the override too.
        for known in [p for p in self.locations if p[: len(path)] == path and p != path]:
            self.locations[known] = where


def load_source(path: str | Path) -> ConfigSource:
    """Read a YAML config file, keeping the line and column of every key."""
    file = Path(path)
    if not file.exists():
        raise ConfigError([f"{file}: config file not found"])
    if file.is_dir():
        raise ConfigError([f"{file}: is a directory, not a config file"])
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read config file: {exc}"]) from None
    return parse_source(text, str(file))


def parse_source(text: str, origin: str) -> ConfigSource:
    """Parse YAML text; syntax errors and duplicate keys name their line and column."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        place = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{place}: YAML syntax error: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{origin}: YAML error: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{origin}: the config must be a mapping of sections, not a {type(data).__name__}"]
        )
    source = ConfigSource(data=data, origin=origin)
    if node is not None:
        _collect_locations(node, (), source, origin)
    return source


def _collect_locations(node: yaml.Node, path: KeyPath, source: ConfigSource, origin: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            here = (*path, key)
            if key in seen:
                dotted = ".".join(str(p) for p in here)
                raise ConfigError(
                    [
                        f"{origin}:{line}:{key_node.start_mark.column + 1}: {dotted}: "
                        f"duplicate key (first given at line {seen[key]})"
                    ]
                )
            seen[key] = line
            source.locations[here] = f"{origin}:{line}:{key_node.start_mark.column + 1}"
            _collect_locations(value_node, here, source, origin)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            here = (*path, index)
            mark = item.start_mark
            source.locations[here] = f"{origin}:{mark.line + 1}:{mark.column + 1}"
            _collect_locations(item, here, source, origin)
