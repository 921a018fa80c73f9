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
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tuimon.config.shown_values import clipped, dotted_key, shown_value
from tuimon.errors import ConfigError

KeyPath = tuple[str | int, ...]

# A config is a page of settings: anything far larger is a mistake or an attack, and
# reading it whole (then parsing it in pure Python) would cost memory and seconds.
MAX_CONFIG_BYTES = 1 << 20
# Sections nest three or four levels deep; PyYAML composes and constructs recursively,
# so a list nested 10,000 deep would end in a RecursionError without this bound.
MAX_DEPTH = 40
# Aliases are allowed (sharing a value with `&lr` / `*lr` is ordinary YAML) but every use
# counts as a copy: a "billion laughs" file of 1 KB expands to 9^10 nodes, which tuimon's
# own walks and validation would each visit. Real configs have a few hundred nodes.
MAX_EXPANDED_NODES = 20_000
# Python refuses to parse integers past 4300 digits (with an error about its own limits);
# no setting needs more than a 64-bit integer, which the loader checks with the key.
MAX_INT_DIGITS = 100


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `3e-4` as a float (YAML 1.1 wants `3.0e-4`), refuses nesting
    beyond MAX_DEPTH while composing, and turns any value it cannot construct (a
    5000-digit integer, a 13th month) into an error at that value's line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[Any] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if len(self._path) >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise _LocatedError(
                _outer_key(self._path), mark, f"nested more than {MAX_DEPTH} levels deep"
            )
        if parent is None:  # the document itself
            return super().compose_node(parent, index)
        # A mapping value's index is its key node; a sequence item's index is its position.
        self._path.append(index.value if isinstance(index, ScalarNode) else index)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError, MemoryError) as exc:
            raise ConstructorError(None, None, clipped(str(exc)), node.start_mark) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:
        digits = sum(char.isdigit() for char in node.value)
        if digits > MAX_INT_DIGITS:
            raise ConstructorError(
                None,
                None,
                f"an integer of {digits} digits; no setting takes a number that large",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _outer_key(path: list[Any]) -> KeyPath:
    """The key a too-deep value hangs from: its path up to the first list index, at most
    three keys (`model.hidden`, not `model.hidden.0.0.0…`)."""
    keys: list[str | int] = []
    for part in path:
        if not isinstance(part, str) or len(keys) == 3:
            break
        keys.append(part)
    return tuple(keys)


class _LocatedError(Exception):
    """A problem found while composing, at a known key path and mark."""

    def __init__(self, path: KeyPath, mark: Any, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.mark = mark
        self.message = message


def load_yaml_value(text: str, origin: str = "value") -> Any:
    """One YAML value, e.g. the right-hand side of `--set optimizer.lr=3e-4`, under the
    same bounds as a config file; a ConfigError when it cannot be read."""
    _node, data, _paths = _compose(text, origin, in_file=False)
    return data


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
        where = f"--set {clipped(text)}"
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError([f"{where}: expected KEY.PATH=VALUE, e.g. optimizer.lr=0.01"])
        parts = key.split(".")
        if any(not part for part in parts):
            raise ConfigError([f"{where}: empty key segment in {key!r}"])
        value = load_yaml_value(raw, where) if raw.strip() else None
        node: dict[str, Any] = self.data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
                self.locations[tuple(parts[: depth + 1])] = where  # a section the --set made
            elif not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(
                    [f"{where}: {dotted_key([prefix])} is {shown_value(child)}, not a section"]
                )
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
        with file.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read config file: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [f"{file}: larger than {MAX_CONFIG_BYTES // 1024} KiB; this is not a tuimon config"]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [
                f"{file}:{line}:{column}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                "a config file is YAML in UTF-8"
            ]
        ) from None
    return parse_source(text, str(file))


def parse_source(text: str, origin: str) -> ConfigSource:
    """Parse YAML text; syntax errors and duplicate keys name their line and column."""
    node, data, _paths = _compose(text, origin)
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


def _compose(
    text: str, origin: str, in_file: bool = True
) -> tuple[Node | None, Any, dict[tuple[int, int], KeyPath]]:
    """The node tree, the data and the key path at each value's (line, column), or a
    ConfigError naming the line (and the key, where one is known). Not `in_file` (a
    `--set` value), a problem names the `--set` and says the value is not valid YAML."""

    def place(mark: Any) -> str:
        if not in_file:
            return f"{origin}: value is not valid YAML"
        return f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin

    paths: dict[tuple[int, int], KeyPath] = {}
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, None, paths
            _check_expansion(node, origin, paths)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except _LocatedError as exc:
        key = dotted_key(exc.path)
        where = place(exc.mark)
        message = f"{where}: {key}: {exc.message}" if key else f"{where}: {exc.message}"
        raise ConfigError([message]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = clipped(exc.problem or exc.context or "invalid YAML")
        path = paths.get((mark.line, mark.column)) if mark else None
        if isinstance(exc, ConstructorError) and path:
            raise ConfigError([f"{place(mark)}: {dotted_key(path)}: {problem}"]) from None
        syntax = "YAML syntax error: " if in_file else ""
        raise ConfigError([f"{place(mark)}: {syntax}{problem}"]) from None
    except yaml.reader.ReaderError as exc:  # a control character, e.g. NUL: no mark
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        where = f"{origin}:{line}:{column}" if in_file else place(None)
        raise ConfigError(
            [f"{where}: character #x{exc.character:04x} is not allowed in YAML"]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{place(None)}: YAML error: {clipped(str(exc))}"]) from None
    except RecursionError:  # a backstop: MAX_DEPTH should make this unreachable
        raise ConfigError([f"{place(None)}: nested too deeply to read"]) from None
    return node, data, paths


def _check_expansion(root: Node, origin: str, paths: dict[tuple[int, int], KeyPath]) -> None:
    """Refuse a document whose aliases expand beyond MAX_EXPANDED_NODES, or refer to
    themselves; record the key path of every node on the way.

    The expanded size is counted with each shared node's size memoized, so the count
    itself costs one visit per distinct node however many times aliases repeat it.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node, path: KeyPath) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            where = paths.get((node.start_mark.line, node.start_mark.column), path)
            raise _LocatedError(where, node.start_mark, "an alias refers to a value that holds it")
        paths.setdefault((node.start_mark.line, node.start_mark.column), path)
        open_nodes.add(key)
        total = 1
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, ScalarNode) else "?"
                total += size(key_node, path) + size(value_node, (*path, name))
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                total += size(item, (*path, index))
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_EXPANDED_NODES:
            raise _LocatedError(
                path,
                node.start_mark,
                f"aliases expand this value to {total:,} entries; a config may hold at "
                f"most {MAX_EXPANDED_NODES:,} (is this a YAML alias bomb?)",
            )
        return total

    size(root, ())


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
