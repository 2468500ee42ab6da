"""`controlplane policy from-terraform`: fill a policy's provider and bucket settings from `terraform output
-json`, so the infrastructure terraform made and the policy that drives it never drift.

Outputs are named as the policy names what they fill (terraform/modules/aws and gcp export them so); only these
are read, any other output is ignored with a note:

| output               | value                                               | policy                         |
|----------------------|-----------------------------------------------------|--------------------------------|
| `route53`            | {zone or hosted_zone_id, owner}                     | providers.route53              |
| `cloud_dns`          | {project, managed_zone, owner}                      | providers.cloud_dns            |
| `global_accelerator` | {listener_arn, endpoint_groups: {region: AWS region}} or null | providers.global_accelerator |
| `buckets`            | {region name: bucket URL}                           | regions[name].bucket           |

The policy file is edited in place, not regenerated: only the text of the values that change is replaced and
missing keys are inserted after their mapping's last entry, so comments, order and quoting elsewhere stay as
written. A provider the policy lacks is added with what terraform knows; what the plane alone knows (the
accelerator's service and client group) validation then names as missing.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from controlplane.errors import InvalidInput
from controlplane.policy import PolicyError, parse_with_warnings
from controlplane.yamldoc import MAX_DOCUMENT_BYTES, Problem, compose, cut

# Each provider output's fields the policy takes from terraform; the map-valued one is endpoint_groups.
PROVIDER_FIELDS: dict[str, tuple[str, ...]] = {
    "route53": ("zone", "hosted_zone_id", "owner"),
    "cloud_dns": ("project", "managed_zone", "owner"),
    "global_accelerator": ("listener_arn", "endpoint_groups"),
}
BUCKETS = "buckets"
# A Route 53 instance names its zone one way or the other, never both: filling one replaces the other.
RIVALS = {"zone": "hosted_zone_id", "hosted_zone_id": "zone"}
REDACTED = "(sensitive)"

Patch = dict[str | int, "Patch | str"]


class OutputsError(InvalidInput):
    """A terraform outputs file that cannot be used at all (unreadable, too big, not the documented JSON)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Output:
    value: object
    sensitive: bool


def parse_outputs(data: bytes, source: str = "<outputs>") -> dict[str, Output]:
    """`terraform output -json`: {name: {"value": ..., "type": ..., "sensitive": bool}}."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise OutputsError(f"{source}: larger than the {MAX_DOCUMENT_BYTES:,}-byte cap")
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise OutputsError(
            f"{source}: not JSON from `terraform output -json`: {cut(str(exc), 200)}"
        ) from None
    if not isinstance(parsed, dict):
        raise OutputsError(f"{source}: expected a JSON object of outputs, as `terraform output -json` prints")
    outputs = {}
    for name, entry in parsed.items():
        if not isinstance(entry, dict) or "value" not in entry:
            raise OutputsError(
                f'{source}: output {cut(repr(name))} is not {{"value": ..., "type": ..., "sensitive": ...}}'
            )
        # Without the flag, an output counts as sensitive: printing a secret cannot be undone.
        outputs[name] = Output(entry["value"], entry.get("sensitive") is not False)
    return outputs


def read_outputs(path: str) -> dict[str, Output]:
    """From a file, or standard input for `-`; read bounded either way."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise OutputsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_outputs(data, path)


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def secrets(outputs: Mapping[str, Output]) -> frozenset[str]:
    return frozenset(s for o in outputs.values() if o.sensitive for s in _strings(o.value) if s)


def redact(text: str, hidden: frozenset[str]) -> str:
    """Text fit to print: every sensitive output's value replaced, longest first (one may contain another)."""
    for secret in sorted(hidden, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


# --- the policy's YAML tree -------------------------------------------------------------------------------


def _pair(node: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def _get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    pair = _pair(node, key)
    return None if pair is None else pair[1]


def _region_indexes(root: yaml.Node) -> dict[str, int]:
    regions = _get(root, "regions")
    if not isinstance(regions, yaml.SequenceNode):
        return {}
    found: dict[str, int] = {}
    for i, item in enumerate(regions.value):
        name = _get(item, "name")
        if isinstance(name, yaml.ScalarNode):
            found.setdefault(name.value, i)
    return found


def _provider_base(root: yaml.Node, key: str, notes: list[str]) -> tuple[str | int, ...] | None:
    """Where a single-instance provider setting goes: the mapping, the one item of a list, or a new mapping."""
    node = _get(_get(root, "providers"), key)
    if isinstance(node, yaml.SequenceNode):
        if len(node.value) != 1:
            notes.append(
                f"providers.{key} lists {len(node.value)} instances; terraform describes one: "
                "left as is, edit it by hand"
            )
            return None
        return ("providers", key, 0)
    return ("providers", key)


def _put(patch: Patch, path: tuple[str | int, ...], value: str) -> None:
    for step in path[:-1]:
        inner = patch.setdefault(step, {})
        assert isinstance(inner, dict)
        patch = inner
    patch[path[-1]] = value


def _string_map(name: str, value: object, notes: list[str]) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        if value is not None:
            notes.append(f"output {name}: expected a map of strings: ignored")
        return {}
    return value


def _provider_patch(root: yaml.Node, key: str, value: object, patch: Patch, notes: list[str]) -> None:
    if value is None:
        notes.append(f"output {key} is null (terraform made none): left as is")
        return
    if not isinstance(value, dict):
        notes.append(f"output {key}: expected an object: ignored")
        return
    fields = PROVIDER_FIELDS[key]
    for field in sorted(set(value) - set(fields)):
        notes.append(f"output {key}: field {cut(repr(field))} has no place in providers.{key}: ignored")
    wanted = {f: value[f] for f in fields if value.get(f) is not None}
    if not wanted or (base := _provider_base(root, key, notes)) is None:
        return
    for field, inner in wanted.items():
        if field == "endpoint_groups":
            for region, aws_region in _string_map(f"{key}.{field}", inner, notes).items():
                _put(patch, (*base, field, region), aws_region)
        elif isinstance(inner, str):
            _put(patch, (*base, field), inner)
        else:
            notes.append(f"output {key}.{field}: expected a string: ignored")


def plan_patch(root: yaml.Node, outputs: Mapping[str, Output]) -> tuple[Patch, list[str]]:
    """What changes where (a tree of path steps to new string values), and notes on what was not used."""
    notes: list[str] = []
    patch: Patch = {}
    for name in sorted(set(outputs) - {*PROVIDER_FIELDS, BUCKETS}):
        notes.append(f"output {cut(repr(name))} has no place in a policy: ignored")
    for key in PROVIDER_FIELDS:
        if key in outputs:
            _provider_patch(root, key, outputs[key].value, patch, notes)
    if BUCKETS in outputs:
        indexes = _region_indexes(root)
        for region, url in _string_map(BUCKETS, outputs[BUCKETS].value, notes).items():
            if region in indexes:
                _put(patch, ("regions", indexes[region], "bucket"), url)
            else:
                notes.append(f"output {BUCKETS}: region {cut(repr(region))} is not in the policy: ignored")
    return patch, notes


# --- editing the text ---------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def scalar(value: str) -> str:
    """A string as YAML reads it back unchanged: plain when it is safely a plain string, else JSON-quoted."""
    if _PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def flow(value: Patch | str) -> str:
    if isinstance(value, str):
        return scalar(value)
    return "{" + ", ".join(f"{scalar(str(k))}: {flow(v)}" for k, v in value.items()) + "}"


class _Unedited(Exception):
    """A place the surgical edit does not reach (an alias, a list where a mapping belongs): say so, edit by hand."""


@dataclass(frozen=True, slots=True)
class _Splice:
    start: int
    end: int
    text: str


def _leaf_end(text: str, node: yaml.Node) -> tuple[int, bool]:
    """Where the last thing written in a node ends, and whether that is the start of a line (a block scalar)."""
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        return _leaf_end(text, last[1] if isinstance(node, yaml.MappingNode) else last)
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        return node.end_mark.index, True
    return node.end_mark.index, False


def _insert(text: str, node: yaml.MappingNode, new: Patch) -> _Splice:
    items = [f"{scalar(str(k))}: {flow(v)}" for k, v in new.items()]
    if node.flow_style:
        if not node.value:
            at = node.end_mark.index - 1  # before the closing brace of {}
            return _Splice(at, at, ", ".join(items))
        at = node.value[-1][1].end_mark.index
        return _Splice(at, at, "".join(f", {item}" for item in items))
    indent = " " * node.value[0][0].start_mark.column
    last_key, last_value = node.value[-1]
    empty = (
        isinstance(last_value, yaml.ScalarNode) and last_value.end_mark.index == last_value.start_mark.index
    )
    at, line_start = _leaf_end(text, last_key if empty else last_value)
    if line_start:
        return _Splice(at, at, "".join(f"{indent}{item}\n" for item in items))
    newline = text.find("\n", at)
    at = len(text) if newline < 0 else newline
    return _Splice(at, at, "".join(f"\n{indent}{item}" for item in items))


def _replace(node: yaml.Node, value: str, where: str) -> Iterator[_Splice]:
    if not isinstance(node, yaml.ScalarNode) or hasattr(node, "target"):
        raise _Unedited(f"{where} is not a plain value")
    if node.value != value:
        start, end = node.start_mark.index, node.end_mark.index
        yield _Splice(start, end, (" " if start == end else "") + scalar(value))


def _splices(text: str, node: yaml.Node, patch: Patch, path: tuple[str | int, ...]) -> Iterator[_Splice]:
    where = ".".join(map(str, path)) or "the policy"
    if hasattr(node, "target"):  # yamldoc's alias node: the text here is `*name`, not the value
        raise _Unedited(f"{where} is written through an alias")
    if isinstance(node, yaml.SequenceNode):
        for index, inner in patch.items():
            if not isinstance(index, int) or index >= len(node.value) or isinstance(inner, str):
                raise _Unedited(f"{where} is a list")
            yield from _splices(text, node.value[index], inner, (*path, index))
        return
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        start, end = node.start_mark.index, node.end_mark.index
        yield _Splice(start, end, (" " if start == end else "") + flow(patch))
        return
    if not isinstance(node, yaml.MappingNode):
        raise _Unedited(f"{where} is not a mapping")
    missing: Patch = {}
    for key, inner in patch.items():
        value = _get(node, str(key))
        rival = (
            RIVALS.get(str(key)) if path[1:2] == ("route53",) and RIVALS.get(str(key)) not in patch else None
        )
        if value is None and rival and isinstance(inner, str) and (pair := _pair(node, rival)) is not None:
            yield _Splice(pair[0].start_mark.index, pair[0].end_mark.index, scalar(str(key)))
            yield from _replace(pair[1], inner, f"{where}.{rival}")
        elif value is None:
            missing[key] = inner
        elif isinstance(inner, str):
            yield from _replace(value, inner, f"{where}.{key}")
        else:
            yield from _splices(text, value, inner, (*path, key))
    if missing:
        yield _insert(text, node, missing)


def apply_patch(text: str, root: yaml.Node, patch: Patch) -> str:
    splices = sorted(_splices(text, root, patch, ()), key=lambda s: s.start, reverse=True)
    for s in splices:
        text = text[: s.start] + s.text + text[s.end :]
    return text


# --- the whole command -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filled:
    """A policy filled from terraform: its new text, the diff, what was not used, what is wrong with it."""

    text: str
    diff: str
    notes: tuple[str, ...]
    problems: tuple[Problem, ...]

    @property
    def valid(self) -> bool:
        return not any(not p.warning for p in self.problems)

    @property
    def changed(self) -> bool:
        return bool(self.diff)


def fill_policy(text: str, filename: str, outputs: Mapping[str, Output]) -> Filled:
    """The policy text with terraform's outputs written in, validated as the daemon would load it."""
    try:
        root = compose(text, "policy")
    except yaml.YAMLError:
        root = None
    if not isinstance(root, yaml.MappingNode):
        parse_with_warnings(text, filename)  # says where and why, as FILE:LINE:COL
        raise PolicyError([Problem(filename, 1, 1, "policy must be a mapping with regions and services")])
    patch, notes = plan_patch(root, outputs)
    try:
        new = apply_patch(text, root, patch)
    except _Unedited as exc:
        raise InvalidInput(
            f"{filename}: {exc}; from-terraform cannot edit it there: write the values by hand"
        ) from None
    try:
        problems = parse_with_warnings(new, filename)[1]
    except PolicyError as exc:
        problems = exc.problems
    diff = "".join(
        difflib.unified_diff(
            text.splitlines(keepends=True),
            new.splitlines(keepends=True),
            filename,
            f"{filename} (from terraform)",
        )
    )
    return Filled(new, diff, tuple(notes), tuple(problems))


def fragment(outputs: Mapping[str, Output]) -> tuple[str, list[str]]:
    """Without a policy to fill: the settings terraform gives, as policy YAML to merge by hand."""
    root = yaml.compose("{}")
    assert root is not None
    patch, notes = plan_patch(root, outputs)
    data: dict[str, object] = {str(k): v for k, v in patch.items()}
    if BUCKETS in outputs:
        buckets = _string_map(BUCKETS, outputs[BUCKETS].value, notes)
        data["regions"] = [{"name": name, "bucket": url} for name, url in buckets.items()]
    kept = [n for n in notes if "is not in the policy" not in n]
    return yaml.safe_dump(data, sort_keys=False) if data else "", kept


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it; the file keeps its mode."""
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
