"""The embedded DNS server on loopback, asked over real UDP and TCP by dnspython and by dig."""

from __future__ import annotations

import asyncio
import random
import struct
from collections import Counter
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from chaos.loopback import free_port
from controlplane.policy import Providers
from controlplane.providers.base import PermanentProviderError
from controlplane.providers.localdns import LocalDnsProvider
from tests.builders import DEMO_ADDRESS, EU_AND_GLOBAL, converge, demo_policy, plan
from tests.conftest import require_binary, until
from tests.integration.dns_helpers import HOST, PLAN, WAIT, RawUdp, address, tcp_exchange, until_hung_up

EU_CLIENT = "127.0.1.5"  # inside the demo's eu group (127.0.1.0/24); binds fine on Linux loopback
EU = {DEMO_ADDRESS["eu-west"], DEMO_ADDRESS["eu-central"]}


@pytest.fixture(params=[0, 2], ids=["in-process", "workers"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[LocalDnsProvider]:
    policy = demo_policy(localdns={"port": free_port()})
    provider = LocalDnsProvider(policy, idle_timeout=1.0, rng=random.Random(1), workers=request.param)
    async with provider:
        await converge(provider, PLAN)
        yield provider


async def udp(
    port: int,
    name: str = "chat.llm.internal",
    rdtype: str = "A",
    source: str | None = None,
    subnet: dns.edns.ECSOption | None = None,
) -> dns.message.Message:
    query = dns.message.make_query(
        name, rdtype, use_edns=0 if subnet else None, options=[subnet] if subnet else None
    )
    async with asyncio.timeout(WAIT):
        return await dns.asyncquery.udp(query, HOST, port=port, source=source, timeout=WAIT)


def port(provider: LocalDnsProvider) -> int:
    return provider.address[1]


async def test_answers_follow_the_weights(server: LocalDnsProvider) -> None:
    counts: Counter[str] = Counter()
    for _ in range(40):
        responses = await asyncio.gather(*(udp(port(server)) for _ in range(50)))
        counts.update(address(r) for r in responses)
    assert sum(counts.values()) == 2000
    assert DEMO_ADDRESS["eu-central"] not in counts  # weight 0
    for region, weight in (("us-east", 50), ("us-west", 30), ("eu-west", 20)):
        assert abs(counts[DEMO_ADDRESS[region]] / 2000 - weight / 100) < 0.06, counts
    # Workers report their counts a moment later.
    await until(lambda: server.stats[("chat.llm.internal", "global", "NOERROR")] == 2000, what="the counts")


async def test_an_eu_client_only_ever_gets_eu_addresses(server: LocalDnsProvider) -> None:
    responses = await asyncio.gather(*(udp(port(server), source=EU_CLIENT) for _ in range(200)))
    assert {address(r) for r in responses} == EU
    assert all(r.answer[0].ttl == 5 and r.flags & dns.flags.AA for r in responses)


async def test_client_subnet_picks_the_group_and_is_echoed(server: LocalDnsProvider) -> None:
    responses = [await udp(port(server), subnet=dns.edns.ECSOption("127.0.1.0", 24)) for _ in range(50)]
    assert {address(r) for r in responses} <= EU
    echo = responses[0].options[0]
    assert isinstance(echo, dns.edns.ECSOption)
    assert (echo.address, echo.srclen, echo.scopelen) == ("127.0.1.0", 24, 24)


async def test_tcp_answers_several_queries_on_one_connection(server: LocalDnsProvider) -> None:
    queries = [
        dns.message.make_query("chat.llm.internal", "A"),
        dns.message.make_query("nope.llm.internal", "A"),
        dns.message.make_query(
            "chat.llm.internal", "A", use_edns=0, options=[dns.edns.ECSOption("127.0.1.0", 24)]
        ),
    ]
    replies = [
        dns.message.from_wire(r) for r in await tcp_exchange(port(server), [q.to_wire() for q in queries])
    ]
    assert [r.id for r in replies] == [q.id for q in queries]
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.NOERROR]
    assert address(replies[2]) in EU
    query = dns.message.make_query("chat.llm.internal", "A")
    async with asyncio.timeout(WAIT):
        response = await dns.asyncquery.tcp(query, HOST, port=port(server), source=EU_CLIENT, timeout=WAIT)
    assert address(response) in EU


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "authority"),
    [
        ("nope.llm.internal", "A", dns.rcode.NXDOMAIN, True),
        ("example.com", "A", dns.rcode.REFUSED, False),
        ("chat.llm.internal", "AAAA", dns.rcode.NOERROR, True),
        ("llm.internal", "A", dns.rcode.NOERROR, True),
    ],
)
async def test_names_and_types_without_an_address(
    server: LocalDnsProvider, name: str, rdtype: str, rcode: dns.rcode.Rcode, authority: bool
) -> None:
    response = await udp(port(server), name, rdtype)
    assert response.rcode() == rcode and not response.answer
    assert [rrset.rdtype for rrset in response.authority] == ([dns.rdatatype.SOA] if authority else [])


async def test_zone_apex_soa(server: LocalDnsProvider) -> None:
    response = await udp(port(server), "llm.internal", "SOA")
    assert response.answer[0].rdtype == dns.rdatatype.SOA


async def test_apply_changes_answers_at_once(server: LocalDnsProvider) -> None:
    await converge(server, plan({"global": {"us-west": 100}, "eu": {"eu-central": 100}}))
    assert {address(await udp(port(server))) for _ in range(20)} == {DEMO_ADDRESS["us-west"]}
    await converge(server, plan({"global": {"us-west": 0}, "eu": {"eu-central": 100}}))
    fail_closed = await udp(port(server))
    assert fail_closed.rcode() == dns.rcode.NOERROR and not fail_closed.answer
    assert address(await udp(port(server), source=EU_CLIENT)) == DEMO_ADDRESS["eu-central"]
    await until(lambda: server.stats[("chat.llm.internal", "global", "NODATA")] == 1, what="the count")


async def test_hot_reload_remaps_client_groups(server: LocalDnsProvider) -> None:
    eu_elsewhere = ({**EU_AND_GLOBAL[0], "sources": ["127.0.2.0/24"]}, *EU_AND_GLOBAL[1:])
    server.update_policy(demo_policy(localdns={"port": port(server)}, client_groups=eu_elsewhere))
    seen = {address(await udp(port(server), source=EU_CLIENT)) for _ in range(50)}
    assert DEMO_ADDRESS["us-east"] in seen
    with pytest.raises(PermanentProviderError, match="restart"):
        server.update_policy(demo_policy(localdns={"port": free_port()}))
    without = demo_policy(localdns={"port": port(server)}).model_copy(update={"providers": Providers()})
    with pytest.raises(PermanentProviderError, match=r"no providers\.localdns section"):
        server.update_policy(without)
    # Both refused: the reloaded mapping still holds.
    assert DEMO_ADDRESS["us-east"] in {address(await udp(port(server), source=EU_CLIENT)) for _ in range(50)}


async def test_malformed_packets_get_formerr_or_nothing(server: LocalDnsProvider) -> None:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(RawUdp, remote_addr=server.address)
    try:
        # A header claiming one question, then nothing: parseable header, broken message.
        transport.sendto(struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0))
        async with asyncio.timeout(WAIT):
            reply = await client.replies.get()
        query_id, flags = struct.unpack_from("!HH", reply)
        assert query_id == 0x1234 and flags & dns.flags.QR and flags & 0xF == dns.rcode.FORMERR
        transport.sendto(b"\x01\x02\x03")  # not even a header: dropped
        transport.sendto(
            dns.message.make_response(dns.message.make_query("chat.llm.internal", "A")).to_wire()
        )
        await asyncio.sleep(0.2)
        assert client.replies.empty()
    finally:
        transport.close()
    (framed,) = await tcp_exchange(port(server), [b"\xab\xcd\x01\x00" + b"\xff" * 20])
    assert framed[:2] == b"\xab\xcd" and framed[3] & 0xF == dns.rcode.FORMERR
    assert address(await udp(port(server))) in DEMO_ADDRESS.values()
    await until(lambda: server.stats[("-", "-", "FORMERR")] == 2, what="both counted")


async def test_idle_tcp_connections_are_closed(server: LocalDnsProvider) -> None:
    assert await until_hung_up(port(server)) == b""  # after the server's 1 s idle timeout


async def test_close_ends_open_connections_and_frees_the_port(caplog: pytest.LogCaptureFixture) -> None:
    provider = LocalDnsProvider(demo_policy(localdns={"port": free_port()}))
    await provider.start()
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(*provider.address)
        await until(lambda: provider.connections == 1, what="the connection to be served")
        await provider.close()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
    assert not caplog.records  # ended quietly: 3.11 logs a traceback for a cancelled connection task
    async with provider:  # the same address binds again at once
        assert (await udp(port(provider))).rcode() == dns.rcode.NOERROR


async def test_a_taken_port_is_a_permanent_error(server: LocalDnsProvider) -> None:
    with pytest.raises(PermanentProviderError, match="cannot listen on udp"):
        await LocalDnsProvider(demo_policy(localdns={"port": port(server)})).start()


async def dig(*args: str) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        require_binary("dig"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(WAIT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    return out.decode().split()


@pytest.mark.needs_binary("dig")
async def test_dig_sees_groups_by_source_and_by_subnet(server: LocalDnsProvider) -> None:
    at = (f"@{HOST}", "-p", str(port(server)), "chat.llm.internal", "+short")
    (anyone,) = await dig(*at)
    assert anyone in DEMO_ADDRESS.values() and anyone != DEMO_ADDRESS["eu-central"]
    assert {(await dig(*at, "-b", EU_CLIENT))[0] for _ in range(5)} <= EU
    (by_subnet,) = await dig(*at, "+subnet=127.0.1.0/24")
    assert by_subnet in EU


async def test_a_table_swapped_under_load_answers_from_the_old_plan_or_the_new(
    server: LocalDnsProvider,
) -> None:
    # Two plans that differ in every group: an answer from a table half built would be neither (no answer
    # at all, an error, an address of the wrong group).
    old = plan({"global": {"us-east": 100}, "eu": {"eu-west": 100}})
    new = plan({"global": {"us-east": 0}, "eu": {"eu-central": 100}})
    await converge(server, old)
    swapping = True

    async def ask_until_done(source: str | None) -> list[tuple[str, str | None]]:
        seen = []
        while swapping:
            response = await udp(port(server), source=source)
            assert response.rcode() == dns.rcode.NOERROR
            seen.append((source or "global", address(response) if response.answer else None))
        return seen

    clients = [asyncio.create_task(ask_until_done(s)) for s in (None, EU_CLIENT) * 4]
    for _ in range(20):
        await converge(server, new)
        await asyncio.sleep(0.01)
        await converge(server, old)
        await asyncio.sleep(0.01)
    swapping = False
    answers = [a for seen in await asyncio.gather(*clients) for a in seen]
    allowed = {
        ("global", DEMO_ADDRESS["us-east"]),
        ("global", None),
        (EU_CLIENT, DEMO_ADDRESS["eu-west"]),
        (EU_CLIENT, DEMO_ADDRESS["eu-central"]),
    }
    assert set(answers) == allowed, Counter(answers)  # each seen, and nothing else
