"""The pure decisions of weights/retention.py: what the promotion history becomes and which versions are
garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controlplane.policy import MAX_KEEP_VERSIONS, SyncSettings
from controlplane.weights.manifest import ManifestError
from controlplane.weights.retention import (
    MAX_HISTORY,
    MAX_HISTORY_BYTES,
    after_promotion,
    encode_history,
    garbage,
    parse_history,
)


def test_keep_versions_defaults_to_one_previous_version_and_is_bounded() -> None:
    assert SyncSettings().keep_versions == 1
    assert SyncSettings.model_validate({"keep_versions": 0}).keep_versions == 0
    for bad in (-1, MAX_KEEP_VERSIONS + 1):
        with pytest.raises(ValidationError):
            SyncSettings.model_validate({"keep_versions": bad})
    # A version drops off the history only long after it could have been collected.
    assert MAX_HISTORY > 2 * (MAX_KEEP_VERSIONS + 1)


def test_a_promotion_becomes_the_newest_entry_once() -> None:
    assert after_promotion((), "v1") == ("v1",)
    assert after_promotion(("v1",), "v2") == ("v1", "v2")
    assert after_promotion(("v1", "v2"), "v2") == ("v1", "v2")
    # A rollback: v1 is current again, so it is the newest, and v2 the one kept for rolling forward.
    assert after_promotion(("v1", "v2"), "v1") == ("v2", "v1")


def test_the_history_remembers_only_the_newest() -> None:
    history: tuple[str, ...] = ()
    for n in range(MAX_HISTORY + 5):
        history = after_promotion(history, f"v{n}")
    assert len(history) == MAX_HISTORY
    assert history[0] == "v5" and history[-1] == f"v{MAX_HISTORY + 4}"
    assert len(encode_history(history)) <= MAX_HISTORY_BYTES


def test_history_encoding_round_trips_and_refuses_what_is_not_versions() -> None:
    assert encode_history(("v1", "2026-11-01")) == b"v1\n2026-11-01\n"
    assert parse_history(b"v1\n2026-11-01\n") == ("v1", "2026-11-01")
    assert parse_history(b"") == ()
    for bad in (b"v1\n../v0\n", b"v1\n\xff\n", b"x" * (MAX_HISTORY_BYTES + 1)):
        with pytest.raises(ManifestError):
            parse_history(bad)


def test_the_current_one_and_keep_previous_ones_stay() -> None:
    history = ("v1", "v2", "v3")
    assert garbage(history, current="v3", target="v3", keep=1) == ("v1",)
    assert garbage(history, current="v3", target="v3", keep=0) == ("v1", "v2")
    assert garbage(history, current="v3", target="v3", keep=2) == ()
    # The policy already names v1 again (a rollback not yet synced): it is about to be needed.
    assert garbage(history, current="v3", target="v1", keep=0) == ("v2",)


def test_nothing_is_garbage_while_current_is_unknown_or_not_yet_recorded() -> None:
    history = ("v1", "v2", "v3")
    assert garbage(history, current=None, target="v3", keep=0) == ()
    # Another syncer made v4 current and has not recorded it yet.
    assert garbage(history, current="v4", target="v4", keep=0) == ()
    assert garbage((), current="v3", target="v3", keep=0) == ()


VERSIONS = st.sampled_from([f"v{n}" for n in range(8)])


@given(
    promotions=st.lists(VERSIONS, min_size=1, max_size=20),
    target=VERSIONS,
    keep=st.integers(min_value=0, max_value=4),
    stale=st.booleans(),
)
@settings(max_examples=300)
def test_garbage_properties(promotions: list[str], target: str, keep: int, stale: bool) -> None:
    history: tuple[str, ...] = ()
    for version in promotions:
        history = after_promotion(history, version)
    current = history[-2] if stale and len(history) > 1 else history[-1]
    collected = garbage(history, current=current, target=target, keep=keep)

    assert current not in collected and target not in collected
    # A version never current here (perhaps another syncer's copy in progress) is never garbage.
    assert set(collected) <= set(history)
    if current != history[-1]:
        assert collected == ()
        return
    survivors = set(history) - set(collected) - {target}
    assert len(survivors) <= keep + 1
    # And nothing more than needed goes: the keep+1 newest survive.
    assert set(history[-(keep + 1) :]) <= survivors | {target}
