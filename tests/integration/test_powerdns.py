"""The PowerDNS provider against a real pdns_server (tests/fakes/powerdns.py): answers per client group by
source address and by ECS, weights, failover through the cache flush, failing closed, ownership, foreign
records, and the errors of a zone without LUA records, a wrong API key and a server that is down."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import pytest
import yaml

from controlplane.changes import diff
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy, PolicyError, PowerDnsSettings, parse_policy
from controlplane.providers.base import Fenced, PermanentProviderError, TransientProviderError
from controlplane.providers.powerdns import PowerDnsProvider, lua_program
from tests.builders import plan, policy_data
from tests.conftest import until
from tests.fakes.powerdns import PowerDns, powerdns_fixture, running_powerdns, zone_for  # noqa: F401
from tests.integration.daemon_helpers import (
    ADDRESS,
    DNS_NAME,
    EU_CLIENT,
    fault,
    running_plane,
    sim_fleet,
    write_policy,
)
from tests.integration.daemon_helpers import policy_data as fleet_policy_data

KEY_ENV = "TEST_PDNS_API_KEY"
REGIONS = {
    "us-east": ("127.0.0.41", "US"),
    "us-west": ("127.0.0.42", "US"),
    "eu-west": ("127.0.0.43", "EU"),
    "eu-central": ("127.0.0.44", "EU"),
}
GLOBAL_CLIENT = "127.0.0.1"
ACTIVE = {"eu": {"eu-west": 75, "eu-central": 25}, "global": {"us-east": 50, "us-west": 50}}
FOREIGN: list[dict[str, Any]] = [
    {"name": "www.{zone}.", "type": "A", "ttl": 300, "records": [{"content": "198.51.100.1"}]},
    {"name": "chat.{zone}.", "type": "TXT", "ttl": 300, "records": [{"content": '"v=spf1 -all"'}]},
    {  # a second plane's service in the same zone: its marker names another owner
        "name": "_cp-owner.embed.{zone}.",
        "type": "TXT",
        "ttl": 300,
        "records": [{"content": '"heritage=llm-failover-plane,owner=staging"'}],
    },
    {"name": "embed.{zone}.", "type": "LUA", "ttl": 5, "records": [{"content": "A \"'198.51.100.2'\""}]},
]


def pdns_policy(
    server: PowerDns, zone: str, *, owner: str = "prod", services: tuple[str, ...] = ("chat",), **extra: Any
) -> Policy:
    regions = [
        {"name": name, "endpoint": f"http://{address}:8000", "jurisdiction": jurisdiction}
        for name, (address, jurisdiction) in REGIONS.items()
    ]
    data = policy_data(regions, service={"dns_name": f"{services[0]}.{zone}", "ttl": 5}, **extra)
    data["providers"] = {
        "powerdns": {"api_url": server.api_url, "api_key_env": KEY_ENV, "zone": zone, "owner": owner}
    }
    for name in services[1:]:
        data["services"].append({**data["services"][0], "name": name, "dns_name": f"{name}.{zone}"})
    return Policy.model_validate(data)


@pytest.fixture
def zone(powerdns: PowerDns, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, powerdns.api_key)
    name = zone_for(powerdns)
    yield name
    powerdns.delete_zone(name)


@asynccontextmanager
async def provider_for(policy: Policy, request_timeout: float = 5.0) -> AsyncIterator[PowerDnsProvider]:
    provider = PowerDnsProvider(policy, policy.providers.powerdns_list[0], request_timeout=request_timeout)
    try:
        await provider.start()
        yield provider
    finally:
        await provider.close()


async def converge(
    provider: PowerDnsProvider,
    weights: Mapping[str, Mapping[str, int]],
    services: tuple[str, ...] = ("chat",),
) -> None:
    target = RoutingPlan(0.0, tuple(g for service in services for g in plan(weights, service)))
    changes = diff(provider.name, provider.render(target), await provider.current())
    if changes:  # as the reconciler does: nothing is sent when nothing changed
        await provider.apply(changes)
    assert not diff(provider.name, provider.render(target), await provider.current())


async def ask(
    server: PowerDns,
    name: str,
    *,
    source: str = GLOBAL_CLIENT,
    ecs: str | None = None,
    rdtype: str = "A",
) -> dns.message.Message:
    options = [] if ecs is None else [dns.edns.ECSOption.from_text(ecs)]
    query = dns.message.make_query(name, rdtype, use_edns=0, options=options)
    return await dns.asyncquery.udp(query, server.host, port=server.dns_port, source=source, timeout=2.0)


def addresses(answer: dns.message.Message) -> list[str]:
    return [rdata.to_text() for rrset in answer.answer for rdata in rrset]


async def counts(server: PowerDns, name: str, n: int, **how: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for _ in range(n):
        found.update(addresses(await ask(server, name, **how)))
    return found


# ---------------------------------------------------------------- the Lua text (pure)


def test_the_program_tries_the_most_specific_source_first_and_keeps_zero_weights() -> None:
    policy = Policy.model_validate(
        policy_data(
            [{"name": n, "endpoint": f"http://{a}:8000", "jurisdiction": j} for n, (a, j) in REGIONS.items()],
            client_groups=[
                {"name": "eu", "sources": ["10.0.0.0/8"], "allowed_jurisdictions": ["EU"]},
                {"name": "lab", "sources": ["10.1.0.0/16"], "allowed_jurisdictions": ["US"]},
                {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
            ],
            service={"dns_name": "chat.llm.test"},
        )
    )
    records = [
        r
        for r in PowerDnsProvider(policy, _settings()).render(plan({"eu": {"eu-west": 1}}))
        if r.group == "eu"
    ]
    program = lua_program(policy, records)
    assert program.index("'10.1.0.0/16'") < program.index("'10.0.0.0/8'")
    assert "{0,'127.0.0.44','eu-central'}" in program and "{1,'127.0.0.43','eu-west'}" in program
    assert "pickwrandom" in program and '"' not in program


def _settings() -> PowerDnsSettings:
    return PowerDnsSettings(api_url="http://127.0.0.1:1", api_key_env=KEY_ENV, zone="llm.test", owner="prod")


def test_the_settings_are_one_zone_or_many_and_each_zone_holds_the_services() -> None:
    regions = [
        {"name": n, "endpoint": f"http://{a}:8000", "jurisdiction": j} for n, (a, j) in REGIONS.items()
    ]
    one = {
        "api_url": "http://127.0.0.1:8081",
        "api_key_env": "PDNS_API_KEY",
        "zone": "llm.internal",
        "owner": "prod",
    }
    parsed = parse_policy(yaml.safe_dump(policy_data(regions, providers={"powerdns": one})))
    (settings,) = parsed.providers.powerdns_list
    assert (settings.server_id, settings.instance_name) == ("localhost", "powerdns:llm.internal")
    with pytest.raises(PolicyError) as twice:
        parse_policy(yaml.safe_dump(policy_data(regions, providers={"powerdns": [one, one]})))
    assert "each instance is named once" in str(twice.value)
    with pytest.raises(PolicyError) as outside:
        parse_policy(
            yaml.safe_dump(policy_data(regions, providers={"powerdns": {**one, "zone": "other.test"}}))
        )
    assert "outside providers.powerdns.zone" in str(outside.value)


# ---------------------------------------------------------------- answers from the real server


async def test_each_group_is_answered_from_its_regions_by_weight(powerdns: PowerDns, zone: str) -> None:
    policy = pdns_policy(powerdns, zone)
    async with provider_for(policy) as provider:
        await converge(provider, ACTIVE)
        name = f"chat.{zone}"
        eu = await counts(powerdns, name, 200, source=EU_CLIENT)
        world = await counts(powerdns, name, 200)
        by_ecs = await counts(powerdns, name, 100, ecs="127.0.1.0/24")
        outside_by_ecs = await counts(powerdns, name, 50, source=EU_CLIENT, ecs="192.0.2.0/24")
    east, central = REGIONS["eu-west"][0], REGIONS["eu-central"][0]
    assert set(eu) == {east, central} and 110 <= eu[east] <= 190, eu  # 75/25: 150 expected
    assert set(world) == {REGIONS["us-east"][0], REGIONS["us-west"][0]}, world
    assert min(world.values()) >= 50, world
    assert set(by_ecs) <= {east, central} and sum(by_ecs.values()) == 100, by_ecs
    assert set(outside_by_ecs) <= {REGIONS["us-east"][0], REGIONS["us-west"][0]}, outside_by_ecs


async def test_the_most_specific_source_wins_and_no_match_is_the_default_group(
    powerdns: PowerDns, zone: str
) -> None:
    groups = [
        {"name": "eu", "sources": ["127.0.0.0/16"], "allowed_jurisdictions": ["EU"]},
        {"name": "lab", "sources": ["::ffff:127.0.1.0/120"], "allowed_jurisdictions": ["US"]},
        {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
    ]
    weights = {"eu": {"eu-west": 100}, "lab": {"us-west": 100}, "global": {"us-east": 100}}
    name = f"chat.{zone}"
    async with provider_for(pdns_policy(powerdns, zone, client_groups=groups)) as provider:
        await converge(provider, weights)
        answers = {
            how: addresses(await ask(powerdns, name, source=source, ecs=ecs))
            for how, source, ecs in (
                ("eu", "127.0.0.1", None),
                ("lab", "127.0.1.9", None),  # inside both networks: the longer prefix decides
                ("global", "127.1.0.1", None),
                ("lab by ECS", "127.1.0.1", "127.0.1.0/24"),
                ("global by ECS", "127.0.1.9", "192.0.2.0/24"),
            )
        }
    assert answers == {
        "eu": ["127.0.0.43"],
        "lab": ["127.0.0.42"],
        "global": ["127.0.0.41"],
        "lab by ECS": ["127.0.0.42"],
        "global by ECS": ["127.0.0.41"],
    }


async def test_a_failover_is_answered_at_once_though_the_server_caches(powerdns: PowerDns, zone: str) -> None:
    policy = pdns_policy(powerdns, zone)
    name = f"chat.{zone}"
    async with provider_for(policy) as provider:
        await converge(provider, {"eu": {"eu-west": 100}, "global": {"us-east": 100}})
        assert addresses(await ask(powerdns, name)) == [REGIONS["us-east"][0]]  # now cached
        await converge(provider, {"eu": {"eu-west": 100}, "global": {"us-west": 100}})
        assert addresses(await ask(powerdns, name)) == [REGIONS["us-west"][0]]
        assert addresses(await ask(powerdns, name, source=EU_CLIENT)) == [REGIONS["eu-west"][0]]


async def test_a_group_failing_closed_gets_nodata(powerdns: PowerDns, zone: str) -> None:
    policy = pdns_policy(powerdns, zone)
    name = f"chat.{zone}"
    async with provider_for(policy) as provider:
        await converge(provider, ACTIVE)
        await converge(provider, {"eu": {}, "global": {"us-east": 100}})
        records = await provider.current()
        for source in (EU_CLIENT, GLOBAL_CLIENT):
            for rdtype in ("A", "AAAA"):
                answer = await ask(powerdns, name, source=source, rdtype=rdtype)
                assert answer.rcode() == dns.rcode.NOERROR
                expected = [REGIONS["us-east"][0]] if (source, rdtype) == (GLOBAL_CLIENT, "A") else []
                assert addresses(answer) == expected, (source, rdtype)
    # The drained group's records stay held at weight 0: nothing to create when it comes back.
    assert {(r.group, r.region, r.weight) for r in records if r.group == "eu"} == {
        ("eu", "eu-west", 0),
        ("eu", "eu-central", 0),
    }


async def test_foreign_records_and_other_owners_are_left_alone(powerdns: PowerDns, zone: str) -> None:
    foreign = [{**r, "name": r["name"].format(zone=zone), "changetype": "REPLACE"} for r in FOREIGN]
    powerdns.patch(zone, foreign)
    before = {(r["name"], r["type"]): r for r in powerdns.rrsets(zone)}
    async with provider_for(pdns_policy(powerdns, zone)) as provider:
        await converge(provider, ACTIVE)
        await converge(provider, {"eu": {"eu-central": 100}, "global": {"us-west": 100}})
        held = await provider.current()
    after = {(r["name"], r["type"]): r for r in powerdns.rrsets(zone)}
    for key in {(r["name"], r["type"]) for r in foreign}:
        assert after[key] == before[key], key
    assert {r.name for r in held} == {f"chat.{zone}"}
    assert addresses(await ask(powerdns, f"embed.{zone}")) == ["198.51.100.2"]
    # The other plane's name: refused whole, and still the other plane's.
    async with provider_for(pdns_policy(powerdns, zone, services=("chat", "embed"))) as provider:
        with pytest.raises(PermanentProviderError, match=r"embed\S* is owned by 'staging'"):
            await converge(provider, ACTIVE, ("chat", "embed"))
    assert {(r["name"], r["type"]): r for r in powerdns.rrsets(zone)} == after


async def test_a_name_held_by_a_record_not_of_this_plane_is_refused(powerdns: PowerDns, zone: str) -> None:
    static = {"name": f"chat.{zone}.", "type": "A", "ttl": 60, "records": [{"content": "198.51.100.9"}]}
    powerdns.patch(zone, [{**static, "changetype": "REPLACE"}])
    async with provider_for(pdns_policy(powerdns, zone)) as provider:
        with pytest.raises(
            PermanentProviderError, match=re.escape(f"chat.{zone} A exists and is not this plane's")
        ):
            await converge(provider, ACTIVE)
    assert addresses(await ask(powerdns, f"chat.{zone}")) == ["198.51.100.9"]


async def test_new_client_sources_are_written_though_no_weight_changed(powerdns: PowerDns, zone: str) -> None:
    name = f"chat.{zone}"
    async with provider_for(pdns_policy(powerdns, zone)) as provider:
        await converge(provider, ACTIVE)
        assert set(addresses(await ask(powerdns, name, source="127.0.2.7"))) <= {"127.0.0.41", "127.0.0.42"}
        moved = pdns_policy(
            powerdns,
            zone,
            client_groups=[
                {"name": "eu", "sources": ["127.0.2.0/24"], "allowed_jurisdictions": ["EU"]},
                {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
            ],
        )
        provider.update_policy(moved)
        await converge(provider, ACTIVE)
        assert set(await counts(powerdns, name, 20, source="127.0.2.7")) <= {"127.0.0.43", "127.0.0.44"}


async def test_a_replica_that_may_not_write_sends_nothing(powerdns: PowerDns, zone: str) -> None:
    def refuse() -> int:
        raise Fenced("not the leader")

    async with provider_for(pdns_policy(powerdns, zone)) as provider:
        await converge(provider, ACTIVE)
        before = powerdns.rrsets(zone)
        provider.fence = refuse
        with pytest.raises(Fenced):
            await converge(provider, {"eu": {"eu-west": 100}, "global": {"us-east": 100}})
        assert powerdns.rrsets(zone) == before
        provider.fence = lambda: 7
        await converge(provider, {"eu": {"eu-west": 100}, "global": {"us-east": 100}})
    assert addresses(await ask(powerdns, f"chat.{zone}")) == [REGIONS["us-east"][0]]


# ---------------------------------------------------------------- errors


async def test_a_zone_without_lua_records_is_a_clear_permanent_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for server in running_powerdns(tmp_path / "nolua", lua_records=False):
        monkeypatch.setenv(KEY_ENV, server.api_key)
        server.create_zone("llm.test")
        with pytest.raises(PermanentProviderError, match="set enable-lua-records=yes"):
            async with provider_for(pdns_policy(server, "llm.test")):
                pass
        # The zone's own switch is enough: then it is served.
        server.create_zone("lua.test", metadata={"ENABLE-LUA-RECORDS": "1"})
        async with provider_for(pdns_policy(server, "lua.test")) as provider:
            await converge(provider, ACTIVE)
        assert addresses(await ask(server, "chat.lua.test", source=EU_CLIENT))[0] in (
            "127.0.0.43",
            "127.0.0.44",
        )


async def test_a_wrong_api_key_is_permanent_and_never_shown(
    powerdns: PowerDns, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "not-the-key-0123456789")
    with pytest.raises(PermanentProviderError, match="401") as caught:
        async with provider_for(pdns_policy(powerdns, zone)):
            pass
    assert "not-the-key" not in str(caught.value) and powerdns.api_key not in str(caught.value)


async def test_a_missing_zone_is_permanent_with_powerdns_s_reason(powerdns: PowerDns, zone: str) -> None:
    with pytest.raises(PermanentProviderError, match=re.escape("absent.llm.test.: 404 Not Found")):
        async with provider_for(pdns_policy(powerdns, "absent.llm.test")):
            pass


async def test_a_server_that_is_down_or_hung_is_transient_and_recovered_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for server in running_powerdns(tmp_path / "pdns"):
        monkeypatch.setenv(KEY_ENV, server.api_key)
        server.create_zone("llm.test")
        async with provider_for(pdns_policy(server, "llm.test"), request_timeout=0.5) as provider:
            await converge(provider, ACTIVE)
            server.freeze()
            try:
                with pytest.raises(TransientProviderError, match=re.escape("timed out after 0.5s")):
                    await provider.current()
            finally:
                server.thaw()
            server.stop()
            with pytest.raises(TransientProviderError):
                await provider.current()
            server.start()
            await converge(provider, {"eu": {"eu-west": 100}, "global": {"us-east": 100}})
            assert addresses(await ask(server, "chat.llm.test")) == [REGIONS["us-east"][0]]


# ---------------------------------------------------------------- the daemon


async def test_the_daemon_fails_a_broken_region_out_of_powerdns_answers(
    powerdns: PowerDns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, powerdns.api_key)
    powerdns.create_zone("llm.test")
    try:
        async with sim_fleet() as fleet:
            data = fleet_policy_data(fleet, memory=False)
            data["providers"]["powerdns"] = {
                "api_url": powerdns.api_url,
                "api_key_env": KEY_ENV,
                "zone": "llm.test",
                "owner": "prod",
            }
            path = tmp_path / "policy.yaml"
            write_policy(path, data)
            async with running_plane(path, tmp_path / "state") as plane, aiohttp.ClientSession() as session:
                await plane.ready()

                async def answered(source: str) -> set[str]:
                    return set(await counts(powerdns, DNS_NAME, 30, source=source))

                await until(
                    lambda: _seen(answered(GLOBAL_CLIENT), ADDRESS["us-east"]),
                    within=10,
                    what="us-east served",
                )
                loop = asyncio.get_running_loop()
                started = loop.time()
                await fault(session, fleet["us-east"], mode="down")
                await until(
                    lambda: _gone(answered(GLOBAL_CLIENT), ADDRESS["us-east"]), within=10, what="us-east gone"
                )
                print(f"fault -> us-east out of PowerDNS's answers: {loop.time() - started:.2f}s")
                assert await answered(EU_CLIENT) <= {ADDRESS["eu-west"], ADDRESS["eu-central"]}
    finally:
        powerdns.delete_zone("llm.test")


async def _seen(answers: Any, address: str) -> bool:
    return address in await answers


async def _gone(answers: Any, address: str) -> bool:
    found = await answers
    return bool(found) and address not in found
