"""Policy files written to hurt: every one is refused with FILE:LINE:COL, promptly, in bounded memory."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.policy import Policy, PolicyError, load_policy, parse_policy
from controlplane.yamldoc import MAX_ALIAS_NODES, MAX_DOCUMENT_BYTES, MAX_NODES, MAX_PROBLEMS
from tests.builders import DEMO

DEMO_TEXT = DEMO.read_text(encoding="utf-8")
LONGEST_MESSAGE = 400  # a file, a position, a field path and two quoted values of at most ~80 characters


def refused(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return [str(p) for p in info.value.problems]


def refused_file(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return [str(p) for p in info.value.problems]


def at(text: str, needle: str, prefix: str = "p.yaml") -> str:
    """FILE:LINE:COL of the first occurrence of needle in text."""
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    return f"{prefix}:{line}:{offset - text.rfind(chr(10), 0, offset)}:"


def laughs(levels: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- aliases and nesting


def test_aliases_expand_but_billion_laughs_is_refused_at_the_alias_that_expands_too_far():
    shared = DEMO_TEXT.replace("  - name: eu\n", "  - name: eu\n    sources: &eu-nets [127.0.1.0/24]\n", 1)
    shared = shared.replace("    sources: [127.0.1.0/24]\n", "", 1)
    shared = shared.replace("  - name: global\n", "  - name: global\n    sources: *eu-nets\n", 1)
    assert parse_policy(shared, "p.yaml").client_group("global").sources == ("127.0.1.0/24",)

    text = laughs()
    [problem] = refused(text)
    # The lines above l5 expand 74,718 values through aliases, and l5's first *l4 another 66,430.
    assert 74_718 < MAX_ALIAS_NODES < 74_718 + 66_430
    assert problem == f"{at(text, '*l4')} invalid YAML: too many alias expansions (more than 100,000 values)"


def test_a_key_that_is_a_collection_is_refused_without_being_expanded():
    anchors = [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = f"? [&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol], {', '.join(anchors)}]\n: 1\n"
    assert refused(text) == ["p.yaml:1:3: invalid YAML: a key must be a plain value, not a list or mapping"]


def test_an_alias_loop_is_refused_where_it_closes():
    text = "a: &a [1, *a]\n"
    assert refused(text) == [f"{at(text, '*a')} invalid YAML: an alias refers to itself"]


def test_deep_nesting_is_refused_where_it_gets_too_deep():
    text = "regions: " + "[" * 10_000 + "]" * 10_000 + "\n"
    # Under the root mapping, the 32nd "[" (column 9 + 32) would be the 33rd level.
    assert refused(text) == ["p.yaml:1:41: invalid YAML: nested deeper than 32 levels"]


def test_deep_nesting_through_aliases_is_refused_at_the_alias():
    text = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 40))
    [problem] = refused(text)
    # a29 is 31 lists deep, so a30's value under the root mapping would be 33 levels.
    assert problem == f"{at(text, '*a29')} invalid YAML: nested deeper than 32 levels"


def test_a_file_of_too_many_values_is_refused_at_the_first_value_past_the_cap():
    text = "a: &a 0\nx: [" + "*a, " * MAX_NODES + "]\n"
    first_alias_past_the_cap = MAX_NODES - 4  # the mapping, a, 0, x and the list come first
    column = 5 + 4 * (first_alias_past_the_cap - 1)
    assert refused(text) == [
        f"p.yaml:2:{column}: invalid YAML: more than 250,000 values; a policy needs far fewer"
    ]


# ---------------------------------------------------------------- scalars PyYAML cannot construct


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1" + "0" * 5000, "'1000"),
        ("2001-02-30", "'2001-02-30' is not a valid !!timestamp: day is out of range for month"),
        ("!!timestamp foo", "'foo' is not a valid !!timestamp"),
        (
            "!!timestamp 2001-02-03 04:05:06+99:00",
            "'2001-02-03 04:05:06+99:00' is not a valid !!timestamp: offset must be",
        ),
        ("!!int abc", "'abc' is not a valid !!int: invalid literal"),
        ("!!float abc", "'abc' is not a valid !!float: could not convert"),
    ],
)
def test_scalars_that_cannot_be_constructed_have_a_position(value: str, message: str):
    text = DEMO_TEXT.replace("capacity: 60", f"capacity: {value}", 1)
    [problem] = refused(text)
    assert problem.startswith(f"{at(text, value)} invalid YAML: {message}")
    assert len(problem) < LONGEST_MESSAGE


@pytest.mark.parametrize("tag", ["!custom", "!!set", "!!python/object:os.system"])
def test_a_tag_on_a_mapping_is_refused_not_ignored(tag: str):
    text = DEMO_TEXT.replace("  liveness:\n", f"  liveness: {tag}\n", 1)
    assert refused(text) == [f"{at(text, tag)} invalid YAML: tag {tag} has no use in a policy"]


def test_a_control_character_has_its_position():
    text = DEMO_TEXT.replace("zone: llm.internal", "zone: llm.\x01internal", 1)
    [problem] = refused(text)
    assert problem.startswith(f"{at(text, chr(1))} invalid YAML: character #x0001")


# ---------------------------------------------------------------- values echoed back


def test_a_huge_value_is_echoed_cut_short_with_its_length():
    huge = "a" * (1 << 20)
    for text in (
        DEMO_TEXT.replace("zone: llm.internal", f"zone: {huge}", 1),  # a cross-check quotes it
        DEMO_TEXT.replace("capacity: 60", f"capacity: 60\n    address: x{huge}", 1),  # pydantic's input
        DEMO_TEXT.replace("capacity: 60", f"capacity: 60\n    ? k{huge}\n    : 1", 1),  # an unknown key
        DEMO_TEXT.replace("capacity: 60", f"capacity: !!int {huge}", 1),  # a scalar PyYAML refuses
    ):
        [problem] = refused(text)
        assert len(problem) < LONGEST_MESSAGE, problem[:LONGEST_MESSAGE]
        assert "aaaa… (1,04" in problem


def test_a_list_of_defined_names_is_cut_short():
    regions = "".join(
        f"  - {{name: region-{i:04d}, endpoint: 'http://10.0.0.1:8000', jurisdiction: US}}\n"
        for i in range(2000)
    )
    text = DEMO_TEXT.replace("regions:\n", "regions:\n" + regions, 1).replace(
        "[us-east, us-west", "[mars, us-west", 1
    )
    [problem] = refused(text)
    assert problem.startswith(
        f"{at(text, 'mars')} services.0.regions.0: unknown region 'mars'; defined: ['eu-c"
    )
    assert len(problem) < LONGEST_MESSAGE


def test_problems_are_capped_with_a_count_of_the_rest():
    names = ", ".join(f"mars-{i}" for i in range(300))
    found = refused(DEMO_TEXT.replace("[us-east, us-west, eu-west, eu-central]", f"[{names}]", 1))
    assert len(found) == MAX_PROBLEMS + 1
    assert found[-1].endswith(": ... and 200 more problems")
    assert "'mars-99'" in found[MAX_PROBLEMS - 1]


# ---------------------------------------------------------------- files that are not policy files


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path):
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    assert refused_file(fifo) == [f"{fifo}:1:1: cannot read policy: it is a FIFO, not a regular file"]


def test_a_symlink_to_dev_zero_is_refused(tmp_path: Path):
    link = tmp_path / "policy.yaml"
    link.symlink_to("/dev/zero")
    assert refused_file(link) == [
        f"{link}:1:1: cannot read policy: it is a character device, not a regular file"
    ]


def test_a_directory_is_refused(tmp_path: Path):
    assert refused_file(tmp_path) == [
        f"{tmp_path}:1:1: cannot read policy: it is a directory, not a regular file"
    ]


def test_a_socket_is_refused(tmp_path: Path):
    path = tmp_path / "s.yaml"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        assert refused_file(path) == [f"{path}:1:1: cannot read policy: it is a socket, not a regular file"]


def test_a_file_over_the_cap_is_refused_with_its_size_and_one_at_the_cap_is_read(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(DEMO_TEXT + "#" * (MAX_DOCUMENT_BYTES - len(DEMO_TEXT)) + "\n")
    assert refused_file(path) == [
        f"{path}:1:1: cannot read policy: 4,194,305 bytes is larger than the 4,194,304-byte cap"
    ]
    path.write_text(DEMO_TEXT + "#" * (MAX_DOCUMENT_BYTES - len(DEMO_TEXT) - 1) + "\n")
    assert load_policy(path) == parse_policy(DEMO_TEXT)


def test_a_huge_sparse_file_is_refused_without_reading_it(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    with path.open("wb") as file:
        file.truncate(64 << 30)
    assert refused_file(path) == [
        f"{path}:1:1: cannot read policy: 68,719,476,736 bytes is larger than the 4,194,304-byte cap"
    ]


def test_text_that_is_not_utf8_has_its_position(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    text = DEMO_TEXT.replace("zone: llm.internal", "zone: llm.\xe9", 1)
    path.write_bytes(text.encode("latin-1"))
    assert refused_file(path) == [
        f"{at(text, chr(0xE9), str(path))} cannot read policy: not UTF-8 text (byte 0xe9)"
    ]


# ---------------------------------------------------------------- anything at all


YAMLISH = st.lists(
    st.sampled_from(
        [
            "\n",
            "  ",
            "- ",
            ": ",
            "? ",
            "[",
            "]",
            "{",
            "}",
            ", ",
            "'",
            '"',
            "#",
            "|",
            ">",
            "&a ",
            "*a",
            "&b ",
            "*b",
            "<<: ",
            "!!int ",
            "!!float ",
            "!!timestamp ",
            "!!binary ",
            "!!set ",
            "!!map ",
            "!!seq ",
            "!!str ",
            "!!null ",
            "!!bool ",
            "!!omap ",
            "!!python/object:os.system ",
            "!x ",
            "2001-02-30",
            "2001-02-03 04:05:06+99:00",
            "1" * 5000,
            "0x",
            "abc",
            "1.5",
            "-",
            "~",
            "null",
            "regions",
            "services",
            "client_groups",
            "name",
            "version",
            "1",
            "\t",
            "\x00",
            "\ufeff",
            "é",
            "---\n",
            "...\n",
            "%YAML 1.1\n",
            "%TAG ! tag:x,2000:\n",
        ]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        YAMLISH,
        st.text(max_size=200),
        st.builds(lambda a, b: DEMO_TEXT[:a] + b + DEMO_TEXT[a:], st.integers(0, len(DEMO_TEXT)), YAMLISH),
    )
)
def test_any_text_gives_a_policy_or_a_policy_error(text: str):
    try:
        assert isinstance(parse_policy(text, "p.yaml"), Policy)
    except PolicyError as exc:
        assert exc.problems
        assert all(len(str(p)) < LONGEST_MESSAGE for p in exc.problems)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | YAMLISH.map(str.encode))
def test_any_bytes_in_a_file_give_a_policy_or_a_policy_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
):
    path = tmp_path_factory.mktemp("policy") / "p.yaml"
    path.write_bytes(data)
    try:
        assert isinstance(load_policy(path), Policy)
    except PolicyError as exc:
        assert exc.problems
