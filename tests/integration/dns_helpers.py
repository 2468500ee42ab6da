"""The embedded DNS server's tests' shared pieces: where it listens, the plan it is brought to, and
clients for what dnspython does not do (raw UDP, several queries on one TCP connection, a hang-up)."""

from __future__ import annotations

import asyncio
import struct

import dns.message

from tests.builders import plan

HOST = "127.0.0.1"
WAIT = 5.0  # how long any one exchange may take
PLAN = plan(
    {
        "global": {"us-east": 50, "us-west": 30, "eu-west": 20, "eu-central": 0},
        "eu": {"eu-west": 60, "eu-central": 40},
    }
)


def address(response: dns.message.Message) -> str:
    (rrset,) = response.answer
    (rdata,) = rrset
    return str(rdata)


class RawUdp(asyncio.DatagramProtocol):
    """A bare UDP client, for packets dnspython would never send."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.replies.put_nowait(data)


async def tcp_exchange(port: int, queries: list[bytes]) -> list[bytes]:
    """Send every query on one connection up front, then read as many replies."""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(b"".join(struct.pack("!H", len(q)) + q for q in queries))
            await writer.drain()
            replies = []
            for _ in queries:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                replies.append(await reader.readexactly(size))
            return replies
        finally:
            writer.close()
            await writer.wait_closed()


async def until_hung_up(port: int, sent: bytes = b"") -> bytes:
    """All the server sends on a new TCP connection carrying `sent`, up to when it hangs up."""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(sent)
            return await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
