"""HAProxy provider's pure parts: reply classification, `show servers state`, addresses, render, commands."""

from __future__ import annotations

import pytest

from controlplane.changes import Action, Change, ChangeSet, Record
from controlplane.haproxy_process import render_config
from controlplane.plan import RoutingPlan
from controlplane.providers.base import PermanentProviderError, Provider
from controlplane.providers.haproxy import (
    HaproxyProvider,
    ServerState,
    check_reply,
    check_weight,
    commands_for,
    parse_address,
    parse_servers_state,
)
from tests.builders import REGIONS, haproxy_policy, plan

HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
    "srv_check_addr srv_agent_addr srv_agent_port"
)
# Captured from HAProxy 2.6.12: us-east ready at 75, us-west drained (admin 8) at 40, eu-west in
# maintenance (admin 1, op 0), foreign ready at 1.
STATE_REPLY = (
    f"1\n{HEADER}\n"
    "3 chat 1 us-east 127.0.0.31 2 0 75 1 0 1 0 2 0 0 0 0 - 18000 - 0 0 - - 0\n"
    "3 chat 2 us-west 127.0.0.32 2 8 40 1 0 1 0 2 0 0 0 0 - 18000 - 0 0 - - 0\n"
    "3 chat 3 eu-west 127.0.0.33 0 1 50 1 0 1 0 0 0 0 0 0 - 18000 - 0 0 - - 0\n"
    "3 chat 4 foreign 127.0.0.35 2 0 1 1 9 1 0 2 0 0 0 0 - 18000 - 0 0 - - 0\n\n"
)


def record(region: str, weight: int, target: str | None = None) -> Record:
    return Record("chat", "*", region, target or region, weight, rtype="server")


def updates(*records: Record) -> ChangeSet:
    return ChangeSet("haproxy", tuple(Change(Action.UPDATE, None, r) for r in records))


# ---------------------------------------------------------------- show servers state


def test_parses_servers_state_and_counts_drain_and_maint_as_zero() -> None:
    states = {s.name: s for s in parse_servers_state(STATE_REPLY)}
    assert states["us-east"] == ServerState("chat", "us-east", "127.0.0.31", 2, 0, 75, 1)
    assert {name: s.effective_weight for name, s in states.items()} == {
        "us-east": 75,
        "us-west": 0,  # drained: keeps its weight of 40, takes no new connections
        "eu-west": 0,  # maintenance
        "foreign": 1,
    }
    assert states["us-west"].weight == 40


def test_columns_are_found_by_header_name() -> None:
    reply = "1\n# srv_name be_name srv_iweight srv_uweight srv_admin_state srv_op_state srv_addr\nx chat 1 9 0 2 a\n"
    assert parse_servers_state(reply) == [ServerState("chat", "x", "a", 2, 0, 9, 1)]


def test_empty_backend_has_no_servers() -> None:
    assert parse_servers_state(f"1\n{HEADER}\n\n") == []


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("Can't find backend.\n\n", "Can't find backend"),
        ("2\n# be_name\n", "format version 1"),
        ("", "format version 1"),
        ("1\n", "header line is missing"),
        ("1\n# be_id be_name srv_name\n", "lacks columns"),
        (f"1\n{HEADER}\n3 chat 1 us-east\n", "cannot parse row"),
        (f"1\n{HEADER}\n3 chat 1 us-east 127.0.0.31 2 zero 75 1 0\n", "cannot parse row"),
    ],
)
def test_unusable_servers_state_is_permanent(reply: str, message: str) -> None:
    with pytest.raises(PermanentProviderError, match=message):
        parse_servers_state(reply)


# ---------------------------------------------------------------- reply classification


@pytest.mark.parametrize(
    "reply", ["", "\n", "\n\n", "IP changed from '1.2.3.4' to '1.2.3.5' by 'stats socket command'\n"]
)
def test_empty_or_informational_reply_is_success(reply: str) -> None:
    assert check_reply("set server chat/a weight 5", reply) == reply.strip()


@pytest.mark.parametrize(
    "reply",
    [
        "No such server.\n\n",
        "No such backend.\n\n",
        "Can't find backend.\n\n",
        "Unknown command, but maybe one of the following ones is a better match:\n  help\n\n",
        "Permission denied\n\n",
        "Absolute weight can only be between 0 and 256 inclusive.\n\n",
        "Trailing garbage in weight string\n",  # 2.6 ends this one without the blank line
        "Require 'backend/server'.\n\n",
        "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n",
        "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.\n\n",
    ],
)
def test_refusal_is_permanent(reply: str) -> None:
    with pytest.raises(PermanentProviderError, match="haproxy refused 'set server chat/a weight 5'"):
        check_reply("set server chat/a weight 5", reply)


# ---------------------------------------------------------------- addresses, names, weights


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:9999", ("127.0.0.1", 9999)),
        ("ipv4@127.0.0.1:9999", ("127.0.0.1", 9999)),
        ("[::1]:9999", ("::1", 9999)),
        ("localhost:1", ("localhost", 1)),
        ("/run/haproxy/admin.sock", "/run/haproxy/admin.sock"),
        ("unix@/run/haproxy/admin.sock", "/run/haproxy/admin.sock"),
        ("admin.sock", "admin.sock"),
    ],
)
def test_parse_address(address: str, parsed: str | tuple[str, int]) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:70000", ":9999"])
def test_bad_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="neither a socket path nor host:port"):
        parse_address(address)


@pytest.mark.parametrize("weight", [-1, 257, True, 1.5, "5", None])
def test_weight_outside_haproxy_range_is_refused(weight: object) -> None:
    with pytest.raises(PermanentProviderError, match=r"not an integer in 0\.\.256"):
        check_weight(weight, "x")


@pytest.mark.parametrize("weight", [0, 1, 100, 256])
def test_weight_in_range_passes(weight: int) -> None:
    assert check_weight(weight, "x") == weight


# ---------------------------------------------------------------- provider: settings and render


def test_is_a_provider() -> None:
    provider: Provider = HaproxyProvider(haproxy_policy())
    assert isinstance(provider, Provider)
    assert provider.capabilities.max_weight == 256
    assert not provider.capabilities.client_groups


def test_render_emits_every_named_region_with_zero_for_absent_ones() -> None:
    records = HaproxyProvider(haproxy_policy()).render(plan({"global": {"us-east": 75, "us-west": 25}}))
    assert records == [
        record("eu-central", 0),
        record("eu-west", 0),
        record("us-east", 75),
        record("us-west", 25),
    ]


def test_render_uses_the_policy_server_names() -> None:
    provider = HaproxyProvider(haproxy_policy(servers={"us-east": "srv-a", "us-west": "srv_b"}))
    assert provider.render(plan({"global": {"us-east": 100}})) == [
        record("us-east", 100, "srv-a"),
        record("us-west", 0, "srv_b"),
    ]


def test_render_refuses_a_plan_without_the_group() -> None:
    with pytest.raises(PermanentProviderError, match="plan has no weights for service 'chat'"):
        HaproxyProvider(haproxy_policy()).render(RoutingPlan(0.0, ()))


def test_render_refuses_an_out_of_range_weight() -> None:
    with pytest.raises(PermanentProviderError, match="plan chat/us-east: weight 300"):
        HaproxyProvider(haproxy_policy()).render(plan({"global": {"us-east": 300}}))


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ({"us-east": "a b"}, "not a valid HAProxy name"),
        ({"us-east": "a;shutdown sessions"}, "not a valid HAProxy name"),
        ({"us-east": "a\nset"}, "not a valid HAProxy name"),
        ({"us-east": "same", "us-west": "same"}, "maps two regions to one server"),
    ],
)
def test_unusable_settings_are_refused(servers: dict[str, str], message: str) -> None:
    with pytest.raises(PermanentProviderError, match=message):
        HaproxyProvider(haproxy_policy(servers=servers))


def test_update_policy_keeps_the_old_settings_when_the_new_ones_are_bad() -> None:
    provider = HaproxyProvider(haproxy_policy())
    with pytest.raises(PermanentProviderError):
        provider.update_policy(haproxy_policy(socket="127.0.0.1:nope"))
    assert [r.region for r in provider.render(plan({"global": {"us-east": 100}}))] == sorted(REGIONS)
    provider.update_policy(haproxy_policy(servers={"us-east": "only"}))
    assert provider.render(plan({"global": {"us-east": 100}})) == [record("us-east", 100, "only")]


# ---------------------------------------------------------------- apply: commands and their order


def test_commands_raise_before_they_drain() -> None:
    settings = haproxy_policy().providers.haproxy
    assert settings is not None
    changes = updates(
        record("us-east", 0), record("us-west", 100), record("eu-west", 0), record("eu-central", 7)
    )
    assert commands_for(changes, settings) == [
        "set server chat/us-west weight 100",
        "set server chat/us-west state ready",
        "set server chat/eu-central weight 7",
        "set server chat/eu-central state ready",
        "set server chat/us-east state drain",
        "set server chat/eu-west state drain",
    ]


def test_create_is_treated_like_update() -> None:
    settings = haproxy_policy().providers.haproxy
    assert settings is not None
    changes = ChangeSet("haproxy", (Change(Action.CREATE, None, record("us-east", 5)),))
    assert commands_for(changes, settings) == [
        "set server chat/us-east weight 5",
        "set server chat/us-east state ready",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (Change(Action.DELETE, record("us-east", 5), None), "never deletes servers"),
        (
            Change(Action.UPDATE, None, record("us-east", 5, target="foreign")),
            "not a server this policy owns",
        ),
        (Change(Action.UPDATE, None, record("ap-south", 5)), "not a server this policy owns"),
        (
            Change(Action.UPDATE, None, Record("other", "*", "us-east", "us-east", 5)),
            "not a server this policy",
        ),
        (
            Change(Action.UPDATE, None, Record("chat", "eu", "us-east", "us-east", 5)),
            "not a server this policy",
        ),
        (Change(Action.UPDATE, None, record("us-east", 257)), "weight 257"),
    ],
)
def test_bad_change_refuses_the_whole_change_set(change: Change, message: str) -> None:
    settings = haproxy_policy().providers.haproxy
    assert settings is not None
    changes = ChangeSet("haproxy", (Change(Action.UPDATE, None, record("us-west", 100)), change))
    with pytest.raises(PermanentProviderError, match=message):
        commands_for(changes, settings)


async def test_apply_refuses_another_providers_change_set() -> None:
    with pytest.raises(PermanentProviderError, match="change set for provider 'localdns'"):
        await HaproxyProvider(haproxy_policy()).apply(ChangeSet("localdns", ()))


# ---------------------------------------------------------------- config rendering


def test_render_config() -> None:
    config = render_config(haproxy_policy(), frontend="127.0.0.1:19000", stats="127.0.0.1:19999")
    lines = [line.strip() for line in config.splitlines()]
    assert "stats socket 127.0.0.1:19999 level admin" in lines
    assert "mode http" in lines
    assert "bind 127.0.0.1:19000" in lines
    assert "default_backend chat" in lines
    assert "backend chat" in lines
    assert {"balance roundrobin", "option redispatch", "retries 2"} <= set(lines)
    assert [line for line in lines if line.startswith("server ")] == [
        "server eu-central 127.0.0.34:8000 weight 1 disabled",
        "server eu-west 127.0.0.33:8000 weight 1 disabled",
        "server us-east 127.0.0.31:8000 weight 1 disabled",
        "server us-west 127.0.0.32:8000 weight 1 disabled",
    ]
    assert not any(" check" in line for line in lines)  # the plane decides health, not HAProxy


def test_render_config_unix_socket_is_private() -> None:
    config = render_config(haproxy_policy(), stats="/run/cp/admin.sock")
    assert "    stats socket /run/cp/admin.sock mode 600 level admin" in config.splitlines()


def test_render_config_refuses_an_address_that_would_inject_config() -> None:
    with pytest.raises(ValueError, match="must be one word"):
        render_config(haproxy_policy(), frontend="127.0.0.1:9000\n    stats enable")
