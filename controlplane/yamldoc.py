"""YAML documents (policies, drills) read with bounds and validated by a pydantic model, every problem
reported at the FILE:LINE:COL where a person can fix it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import yaml
from pydantic import BaseModel, ValidationError

from controlplane.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)

# Far above any real document (the demo policy is 1.6 KB; 10,000 regions written like the demo are 1.4 MB
# and 120,000 nodes) yet low enough that a hostile file costs at most a few seconds and ~150 MB to refuse.
MAX_DOCUMENT_BYTES = 4 << 20
MAX_NODES = 250_000
MAX_ALIAS_NODES = 100_000
MAX_DEPTH = 32
MAX_PROBLEMS = 100
_SHOWN = 80  # characters of a value from the file that a message quotes
_SAID = 200  # characters of a reason (a library's message, which may quote the value itself)
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


def cut(text: str, limit: int = _SHOWN) -> str:
    """Text from the file as it may appear in a message: a huge value never reaches a log line whole."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def quoted(value: object) -> str:
    return cut(repr(value))


def field_name(loc: Iterable[str | int], what: str = "policy") -> str:
    return ".".join(cut(str(p)) for p in loc) or what


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document (a policy, a drill), at a position a person can jump to."""

    file: str
    line: int
    column: int
    message: str
    warning: bool = False  # allowed, but probably not what was meant

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {'warning: ' if self.warning else ''}{self.message}"


class DocumentError(InvalidInput):
    """A file that cannot be used; carries every problem found (up to MAX_PROBLEMS), not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        if len(problems) > MAX_PROBLEMS:
            first = problems[MAX_PROBLEMS]
            more = f"... and {len(problems) - MAX_PROBLEMS:,} more problems"
            problems = [*problems[:MAX_PROBLEMS], Problem(first.file, first.line, first.column, more)]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


Path_ = tuple[str | int, ...]  # where a value is: keys and list indexes from the root


class _Alias(yaml.Node):
    """Where an alias was written; the composer alone would hand back the anchored node and lose that."""

    def __init__(self, target: yaml.Node, mark: yaml.Mark | None) -> None:
        super().__init__(target.tag, target.value, mark, mark)
        self.target = target


class _Composer(yaml.SafeLoader):
    """SafeLoader's composer with bounds: node count and depth, checked as events arrive."""

    what = "document"  # what the file is, in messages; set by a subclass per kind (see compose)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        mark = cast(yaml.Mark, event.start_mark)  # the pure-Python parser always sets one
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_NODES:,} values; a {self.what} needs far fewer", mark
            )
        if isinstance(event, yaml.AliasEvent):
            target = super().compose_node(parent, index)
            assert target is not None  # an alias to nothing is a ComposerError
            return _Alias(target, mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, _TOO_DEEP, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    def __init__(self, mark: yaml.Mark, message: str) -> None:
        self.mark = mark
        self.message = message


_COLLECTION_TAGS = {
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
}


def _tag(tag: str) -> str:
    return cut(tag.replace("tag:yaml.org,2002:", "!!"))


class _Builder:
    """Builds plain data from composed nodes, remembering where every value started.

    Aliases are expanded by reference, so a few lines can stand for billions of values: every node
    built through an alias counts against MAX_ALIAS_NODES.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.marks: dict[Path_, yaml.Mark] = {}
        self.dupes: list[Path_] = []
        self._scalars = yaml.constructor.SafeConstructor()
        self._expanded = 0

    def build(
        self,
        node: yaml.Node,
        path: Path_ = (),
        parents: frozenset[int] = frozenset(),
        alias: yaml.Mark | None = None,
    ) -> Any:
        here = node.start_mark
        if isinstance(node, _Alias):
            alias = alias or here  # the outermost alias is the one written in the text being expanded
            node = node.target
        self.marks[path] = here
        if alias is not None:
            self._expanded += 1
            if self._expanded > MAX_ALIAS_NODES:
                raise _Refused(
                    alias, f"invalid YAML: too many alias expansions (more than {MAX_ALIAS_NODES:,} values)"
                )
        if id(node) in parents:
            raise _Refused(here, "invalid YAML: an alias refers to itself")
        if len(path) >= MAX_DEPTH:
            raise _Refused(alias or here, f"invalid YAML: {_TOO_DEEP}")
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if node.tag not in _COLLECTION_TAGS:
            raise _Refused(here, f"invalid YAML: tag {_tag(node.tag)} has no use in a {self.what}")
        parents = parents | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), parents, alias) for i, item in enumerate(node.value)]
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            if key in out:
                self.marks[(*path, key)] = key_node.start_mark
                self.dupes.append((*path, key))
                continue
            out[key] = self.build(value_node, (*path, key), parents, alias)
            self.marks[(*path, key, "__key__")] = key_node.start_mark
        return out

    def _key(self, node: yaml.Node) -> str:
        target = node.target if isinstance(node, _Alias) else node
        if not isinstance(target, yaml.ScalarNode):
            raise _Refused(
                node.start_mark, "invalid YAML: a key must be a plain value, not a list or mapping"
            )
        return str(self._scalar(target))

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        try:
            return self._scalars.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:  # e.g. !foo or !!python/...: no use here
            reason = exc.problem or str(exc)
        except (ValueError, OverflowError) as exc:  # 2001-02-30, a 5,000-digit int, !!int abc
            reason = f"{quoted(node.value)} is not a valid {_tag(node.tag)}: {exc}"
        except (TypeError, AttributeError, LookupError):  # !!timestamp foo, "!!int ''" trip PyYAML itself
            reason = f"{quoted(node.value)} is not a valid {_tag(node.tag)}"
        raise _Refused(node.start_mark, f"invalid YAML: {cut(reason, _SAID)}")


def _mark_for(loc: Path_, marks: dict[Path_, yaml.Mark], at_key: bool = False) -> yaml.Mark | None:
    if at_key and (mark := marks.get((*loc, "__key__"))) is not None:
        return mark
    for end in range(len(loc), -1, -1):
        if (mark := marks.get(loc[:end])) is not None:
            return mark
    return None


def describe(error: Any, what: str = "policy") -> str:
    """A pydantic error as a person reads it: the field, what it allows, what it got."""
    field = field_name(error["loc"], what)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{field}: unknown field"
    if kind == "missing":
        return f"{field}: required field is missing"
    if kind == "enum" and "expected" in ctx:
        return f"{field}: must be one of {ctx['expected']}, got {quoted(error.get('input'))}"
    if kind == "union_tag_invalid":
        return f"{field}: {quoted(ctx.get('tag'))} is not one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{field}: must be a mapping with one key that says what the item is"
    if kind == "literal_error" and "expected" in ctx:
        return f"{field}: must be {ctx['expected']}, got {quoted(error.get('input'))}"
    msg = cut(str(error["msg"]).removeprefix("Value error, "), _SAID)
    return (
        f"{field}: {msg}, got {quoted(error.get('input'))}"
        if not isinstance(error.get("input"), dict | list)
        else f"{field}: {msg}"
    )


def _end_of(text: str) -> tuple[int, int]:
    """Line and column (1-based) just past the end of `text`."""
    return text.count("\n") + 1, len(text) - text.rfind("\n")


@cache
def _composer(what: str) -> type[_Composer]:
    return type(f"_Composer_{what}", (_Composer,), {"what": what})


def compose(text: str, what: str) -> yaml.Node | None:
    """The node tree of `text`, composed within MAX_NODES and MAX_DEPTH; yaml's errors as they are."""
    return yaml.compose(text, Loader=_composer(what))


@dataclass(frozen=True, slots=True)
class Locator:
    """Where each value of a parsed document was written."""

    filename: str
    marks: dict[Path_, yaml.Mark]

    def problem(self, loc: Path_, message: str, *, at_key: bool = False, warning: bool = False) -> Problem:
        mark = _mark_for(loc, self.marks, at_key)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return Problem(self.filename, line, column, message, warning)


@dataclass(frozen=True, slots=True)
class Parsed(Generic[M]):
    value: M
    at: Locator
    problems: list[Problem]  # errors the model could not see (duplicate keys): the caller adds its own


def parse_document(
    text: str,
    filename: str,
    model: type[M],
    *,
    what: str,
    expected: str,
    file_path: Any = None,
    error: type[DocumentError] = DocumentError,
) -> Parsed[M]:
    """Compose `text` with bounds, build it remembering positions, validate it as `model`. `error` (a
    DocumentError) lists every problem, sorted by position. `expected` says what the top level must be ("a
    mapping with regions and services"); `file_path` maps a pydantic error location to the one written in
    the file."""
    try:
        return _parse(text, filename, model, what, expected, file_path)
    except DocumentError as exc:
        if type(exc) is error:
            raise
        raise error(exc.problems) from None


def _parse(text: str, filename: str, model: type[M], what: str, expected: str, file_path: Any) -> Parsed[M]:
    builder = _Builder(what)
    try:
        root = compose(text, what)
        if root is None:
            raise DocumentError([Problem(filename, 1, 1, f"{what} is empty; expected {expected}")])
        data = builder.build(root)
    except yaml.MarkedYAMLError as exc:  # syntax errors, and the composer's bounds
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = cut(exc.problem or str(exc), _SAID)
        raise DocumentError([Problem(filename, line, col, f"invalid YAML: {problem}")]) from None
    except yaml.reader.ReaderError as exc:  # a control character, at an offset into the text
        line, col = _end_of(text[: exc.position])
        raise DocumentError(
            [Problem(filename, line, col, f"invalid YAML: character #x{exc.character:04x}: {exc.reason}")]
        ) from None
    except _Refused as exc:
        raise DocumentError(
            [Problem(filename, exc.mark.line + 1, exc.mark.column + 1, exc.message)]
        ) from None
    at = Locator(filename, builder.marks)
    problems = [at.problem(p, f"{field_name(p, what)}: duplicate key") for p in builder.dupes]
    if not isinstance(data, dict):
        raise DocumentError([at.problem((), f"{what} must be {expected}")])
    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        for e in errors:
            e["loc"] = file_path(tuple(e["loc"])) if file_path is not None else tuple(e["loc"])
        # A tuple whose items failed also reports itself as too short; the item errors say more.
        inner = {tuple(e["loc"][:k]) for e in errors for k in range(len(e["loc"]))}
        problems += [
            at.problem(tuple(e["loc"]), describe(e, what), at_key=e["type"] == "extra_forbidden")
            for e in errors
            if not (e["type"] == "too_short" and tuple(e["loc"]) in inner)
        ]
        raise DocumentError(by_position(problems)) from None
    return Parsed(value, at, problems)


def by_position(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line, p.column))


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_IFIFO: "a FIFO",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFDIR: "a directory",
        stat.S_IFSOCK: "a socket",
    }
    return kinds.get(stat.S_IFMT(mode), "not a regular file")


def read_text(path: Path, what: str = "policy") -> str:
    """The file's text: a regular file of at most MAX_DOCUMENT_BYTES, else DocumentError.

    A FIFO, /dev/zero behind a symlink or a growing file must neither block nor fill memory, so the
    open never waits (O_NONBLOCK), the opened descriptor is what is checked, and the read is bounded.
    """

    def refuse(message: str, line: int = 1, column: int = 1) -> DocumentError:
        return DocumentError([Problem(str(path), line, column, f"cannot read {what}: {message}")])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        # Opening a unix socket fails (ENXIO); name what is there rather than the errno.
        try:
            kind = _kind(os.stat(path).st_mode)
        except OSError:
            kind = None
        raise refuse(f"it is {kind}, not a regular file" if kind else exc.strerror or str(exc)) from None
    too_big = f"larger than the {MAX_DOCUMENT_BYTES:,}-byte cap"
    try:
        info = os.fstat(fd)
        if (kind := _kind(info.st_mode)) is not None:
            raise refuse(f"it is {kind}, not a regular file")
        if info.st_size > MAX_DOCUMENT_BYTES:
            raise refuse(f"{info.st_size:,} bytes is {too_big}")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_DOCUMENT_BYTES:  # it grew after the fstat
        raise refuse(f"it is {too_big}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _end_of(data[: exc.start].decode("utf-8"))  # valid up to where decoding failed
        raise refuse(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", line, column) from None
