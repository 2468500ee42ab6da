"""Three replica processes of one plane on a 3-member etcd cluster, writing Route 53 (moto behind the strict
proxy that refuses what Route 53 refuses), four simulated regions: the plane of tests/e2e/test_replicas.py.

Run from the project root: python -m bench.replicas [--trials 20] [--minutes 5] [--stops 100] [--only a|b|c]

(a) leader loss -> new leader applying: SIGKILL the leader and break us-east at t0; the figure is the new
    leader's own applied_at (its /status: the unix time of its first provider apply that changed something)
    minus t0, so it covers the lease running out, the campaign, the detection of us-east and the Route 53
    write, with no polling error; the time until its /status says leader is given beside it. Goal:
    p99 <= lease TTL + 1 s.
(b) false failovers: one replica (the leader, the worst one to lose) loses 100 % of its probes (its paths to
    every region blackholed) for --minutes; count changes of the zone's weights and of the plan's weights in
    etcd. Goal 0.
(c) writes by a deposed leader: SIGSTOP the leader past its lease, let the new leader change the zone (us-east
    out, or back in on the next trial), SIGCONT the old one and let it step down; count writes from the old
    epoch that landed: Route 53 changes in the old leader's audit after its pause, a plan in etcd under the
    old epoch, a zone that no longer holds the new leader's plan. Goal 0. Batches the strict proxy refused
    (the fence at work) are counted beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from chaos.emulators import moto_server
from chaos.etcdproc import EtcdCluster, etcd_cluster
from chaos.replicas import Link
from controlplane.stats import quantile
from tests.conftest import until
from tests.e2e.test_replicas import (
    CONVERGE,
    LEAD_WITHIN,
    TOKEN,
    TTL,
    Plane,
    Weights,
    audited,
    new_plan,
    planned,
    replica_plane,
    us_east_out,
)
from tests.fakes.moto import reset_moto
from tests.fakes.route53_strict import StrictRoute53
from tests.integration.daemon_helpers import FULL, fault

Trial = Callable[[Plane, argparse.Namespace], Awaitable[None]]


def figures(what: str, values: list[float]) -> str:
    return (
        f"{what}: p50 {statistics.median(values):.2f} s  p99 {quantile(values, 0.99) or 0.0:.2f} s"
        f"  max {max(values):.2f} s"
    )


async def all_live(plane: Plane) -> bool:
    """Every replica answers and the leader counts all of them live: the plane is whole again."""
    leader = await plane.stack.leader()
    block = await plane.stack.coordination(leader) if leader else None
    return block is not None and len(block["quorum"]["live"]) == len(plane.stack.names)


async def leader_loss(plane: Plane, args: argparse.Namespace) -> None:
    stack = plane.stack
    applying: list[float] = []
    leading: list[float] = []
    for i in range(args.trials):
        old = await stack.wait_leader(within=LEAD_WITHIN)
        t0 = time.time()
        await stack.kill(old)
        await plane.break_region("us-east")
        others = [n for n in stack.names if n != old]
        new = await stack.wait_leader(within=LEAD_WITHIN, among=others)
        leading.append(time.time() - t0)
        key = await stack.leader_key()
        assert key is not None and key[0] == new
        await until(
            partial(new_plan, plane, key[1], new), within=CONVERGE, what=f"{new}'s failover in the zone"
        )
        block = await stack.coordination(new)
        applying.append((block or {}).get("applied_at", t0) - t0)  # its last changing apply: the failover
        print(
            f"  kill {i + 1:3d}: {old} killed, {new} leads after {leading[-1]:.2f} s, applies after {applying[-1]:.2f} s"
        )
        await fault(plane.session, plane.fleet["us-east"], mode="ok")
        await stack.spawn(old)
        await stack.wait_listening(old)
        await until(lambda: plane.zone_is(FULL), within=CONVERGE, what="us-east back in the zone")
        await until(lambda: all_live(plane), within=CONVERGE, what="every replica live again")
    print(
        f"(a) leader SIGKILLed -> new leader applying, {args.trials} trials, lease {TTL} s (goal p99 <= {TTL + 1} s)"
    )
    print("    " + figures("applied (its applied_at - t0)", applying))
    print("    " + figures("leads (its /status, polled)  ", leading))


async def explain(plane: Plane, record: dict[str, Any], weights: Weights | None, at: float) -> None:
    """A plan change during (b), with who saw which region down: why it happened."""
    block = await plane.stack.coordination(record["leader"])
    regions = block["quorum"]["regions"] if block else {}
    seen = {r: q["down"] for r, q in regions.items() if q["down"]}
    print(
        f"  {at:6.1f} s: plan of {record['leader']} (epoch {record['epoch']}): {weights}; seen down by: {seen}"
    )


def taken_out(before: Weights | None, after: Weights | None) -> bool:
    """A failover: some region that had traffic in some group has none now."""
    return any(
        weight > 0 and (after or {}).get(group, {}).get(region, 0) == 0
        for group, weights in (before or {}).items()
        for region, weight in weights.items()
    )


async def false_failovers(plane: Plane, args: argparse.Namespace) -> None:
    """The zone's writes are counted from the replicas' audit logs (every Route 53 change a leader applied),
    not by polling the zone: the regions share this process, and a poll's CPU would slow their answers."""
    stack = plane.stack
    cut = await stack.wait_leader(within=LEAD_WITHIN)
    record = await stack.plan_record()
    plan = planned(record) if record else None
    plan_changes = failovers = leaders = 0
    epochs = {record["epoch"]} if record else set()
    started = time.time()
    stack.cut(cut, Link.REGIONS)
    end = time.monotonic() + args.minutes * 60
    try:
        while time.monotonic() < end:
            record = await stack.plan_record()
            now_plan = planned(record) if record else None
            if now_plan != plan and record is not None:
                plan_changes += 1
                failovers += taken_out(plan, now_plan)
                await explain(plane, record, now_plan, time.time() - started)
            if record is not None and record["epoch"] not in epochs:
                epochs.add(record["epoch"])
                leaders += 1
            plan = now_plan
            await asyncio.sleep(0.5)
    finally:
        stack.heal(cut, Link.REGIONS)
    writes = sum(len(plane.applied(name, since=started)) for name in stack.names)
    print(f"(b) {cut} (the leader) lost 100 % of its probes for {args.minutes:g} min (goal 0 failovers)")
    print(f"    failovers (a region taken out): {failovers}  plan weight changes in etcd: {plan_changes}"
          f"  Route 53 changes applied: {writes}  new leaders: {leaders}")  # fmt: skip


async def drain(plane: Plane, via: str, region: str, on: bool) -> None:
    """Drain `region` (or end its drain) through replica `via`'s admin API; overrides are shared in etcd."""
    api, auth = plane.stack[via].api, {"Authorization": f"Bearer {TOKEN}"}
    body = {"region": region, "action": "drain", "duration": 3600, "reason": "bench"}
    request = (
        plane.session.post(f"{api}/overrides", json=body, headers=auth)
        if on
        else plane.session.delete(f"{api}/overrides/{region}", headers=auth)
    )
    async with request as response:
        if response.status not in (200, 201):
            raise RuntimeError(f"{via}: overrides answered {response.status}: {await response.text()}")


async def settles(plane: Plane) -> bool:
    """The zone comes to hold the plan etcd holds (a reverted zone that stays reverted does not)."""

    async def holds() -> bool:
        record = await plane.stack.plan_record()
        return record is not None and await plane.zone_is(planned(record))

    try:
        await until(holds, within=CONVERGE, what="the zone to hold the plan")
    except AssertionError:
        return False
    return True


async def deposed_writes(plane: Plane, args: argparse.Namespace, strict: StrictRoute53) -> None:
    stack = plane.stack
    landed = 0
    refused_before = len(strict.refused)
    for i in range(args.stops):
        old = await stack.wait_leader(within=LEAD_WITHIN)
        old_key = await stack.leader_key()
        assert old_key is not None
        await until(partial(audited, plane, old), within=CONVERGE, what=f"{old}'s audit of its last apply")
        stack.pause(old)
        try:
            others = [n for n in stack.names if n != old]
            new = await stack.wait_leader(within=LEAD_WITHIN, among=others)
            key = await stack.leader_key()
            assert key is not None
            # us-east drained on one trial, undrained on the next: every trial changes the zone, through an
            # override rather than a region fault, whose recoveries the plane damps as a flapping region's.
            out = i % 2 == 0
            await drain(plane, new, "us-east", out)

            async def changed(epoch: int = key[1], out: bool = out) -> bool:
                """A plan of this leader or a later one (load may move leadership on) is in the zone."""
                record = await stack.plan_record()
                if record is None or record["epoch"] < epoch:
                    return False
                weights = planned(record)
                return (us_east_out(weights) if out else weights == FULL) and await plane.zone_is(weights)

            await until(changed, within=CONVERGE, what=f"{new} to change the zone")
        finally:
            resumed_at = time.time()
            stack.resume(old)

        async def stepped_down(old: str = old) -> bool:
            block = await stack.coordination(old)
            return block is not None and block["role"] == "follower"

        await until(stepped_down, within=CONVERGE, what=f"{old} to step down")
        await asyncio.sleep(1.0)  # room for a late write of the woken leader to land
        record = await stack.plan_record()
        late = len(plane.applied(old, since=resumed_at))  # paused, it wrote nothing; woken, nothing may land
        late += record is None or record["epoch"] == old_key[1]
        late += not await settles(plane)
        landed += late
        print(f"  stop {i + 1:3d}: {old} (epoch {old_key[1]}) paused, {new} (epoch {key[1]}) changed the zone;"
              f" writes of the old epoch that landed: {late}")  # fmt: skip
    print(f"(c) leader SIGSTOPped past its lease, {args.stops} trials: writes from a deposed epoch that landed: "
          f"{landed} (goal 0); batches the strict Route 53 refused: {len(strict.refused) - refused_before}")  # fmt: skip


async def bench(
    args: argparse.Namespace, etcd: EtcdCluster, moto: str, strict: StrictRoute53, tmp: Path
) -> None:
    runs: dict[str, Trial] = {
        "a": leader_loss,
        "b": false_failovers,
        "c": lambda plane, args: deposed_writes(plane, args, strict),
    }
    for name, run in runs.items():
        if args.only in (None, name):
            await asyncio.to_thread(reset_moto, moto)  # one zone of the name at a time
            async with AsyncExitStack() as stack:
                plane = await stack.enter_async_context(replica_plane(etcd, moto, strict.url, tmp / name))
                await run(plane, args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20, help="(a) leader kills")
    parser.add_argument("--minutes", type=float, default=5.0, help="(b) minutes with one vantage point blind")
    parser.add_argument("--stops", type=int, default=100, help="(c) SIGSTOP trials")
    parser.add_argument("--only", choices=["a", "b", "c"])
    args = parser.parse_args()
    # The regions log every request a cut path resets; that is the bench working, not news.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    etcd, moto = shutil.which("etcd"), shutil.which("moto_server")
    if etcd is None or moto is None:
        raise SystemExit(
            "bench.replicas needs etcd (apt-get install etcd-server) and moto_server (moto[server])"
        )
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        cluster = stack.enter_context(etcd_cluster(etcd, Path(tmp) / "etcd", 3))
        moto_url = stack.enter_context(moto_server(moto, Path(tmp) / "moto.log"))
        strict = stack.enter_context(StrictRoute53(moto_url))
        asyncio.run(bench(args, cluster, moto_url, strict, Path(tmp)))


if __name__ == "__main__":
    main()
