"""The cost model's worked example on the demo policy, and what cost_weight 0.5 buys against time to first token.

Run from the project root: python -m bench.cost [--seconds 20] [--skip-stack]

1. Monthly cost (shipped price sheets, policies/traffic/demo.yaml) of the demo regions run active-active and
   active-passive, each normally and with its busiest region down: the failover's extra cost.
2. The same month with the chat service's cost_weight at 0 and at 0.5: what leaning on price saves.
3. The demo stack (simulated regions, embedded DNS, the daemon) with cost_weight 0 and then 0.5, real clients
   resolving through DNS for --seconds each: where their requests went and their time to first token.
   The simulated regions answer with the first token after a delay set per region from its fleet's GPU
   (ASSUMED_TTFT below: assumptions for a short prompt on an 8B model, not measurements), so the TTFT
   figures show what the shift in traffic does to the mix; the regions themselves do not slow under load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from chaos.loadgen import GroupLoad, LoadGenerator, LoadReport, LoadSettings, policy_targets
from chaos.loopback import free_port, loopback_policy
from controlplane.cost.model import estimate, marginal_cost_per_mtok
from controlplane.cost.prices import PriceBook, load_prices, shipped_sheets
from controlplane.cost.report import CostReport, Scenario, ScenarioKind
from controlplane.cost.traffic import TrafficProfile, load_traffic
from controlplane.demo import DemoStack, demo_stack
from controlplane.policy import Mode, Policy, load_policy, parse_policy

DEMO = Path("policies/demo.yaml")
TRAFFIC = Path("policies/traffic/demo.yaml")
# Seconds to the first token of a short prompt on an 8B model, by instance type: the order (L40S before
# A10G before L4) follows public vLLM benchmarks; the figures are this bench's assumptions.
ASSUMED_TTFT = {"g6e.xlarge": 0.030, "g5.2xlarge": 0.055, "g2-standard-8": 0.065}
NORMAL = Scenario(ScenarioKind.NORMAL)


def with_service(policy: Policy, **changes: object) -> Policy:
    service = policy.services[0].model_copy(update=changes)
    return policy.model_copy(update={"services": (service, *policy.services[1:])})


def money(report: CostReport) -> str:
    per = report.per_mtok
    return f"${report.total:>9,.0f}/month  ${per:.4f}/1M tok" if per is not None else f"${report.total:,.0f}"


def worked_example(policy: Policy, book: PriceBook, traffic: TrafficProfile) -> None:
    for mode in (Mode.ACTIVE_ACTIVE, Mode.ACTIVE_PASSIVE):
        variant = with_service(policy, mode=mode)
        normal = estimate(variant, book, traffic, NORMAL)
        if mode is Mode.ACTIVE_ACTIVE:
            print(
                f"1. the demo regions, {normal.tokens / 1e9:,.1f}B tokens a month ({TRAFFIC}), shipped prices:"
            )
        print(f"  {mode.value:<15} normal               {money(normal)}  idle ${normal.idle:,.0f}")
        for region in (r.name for r in policy.regions):
            down = estimate(variant, book, traffic, Scenario(ScenarioKind.REGION_DOWN, region))
            extra = down.total - normal.total
            print(
                f"  {'':<15} region-down:{region:<10} {money(down)}  idle ${down.idle:,.0f}"
                f"  failover {extra:+,.0f}/month ({extra / normal.total:+.1%})"
                + (f"  [{len(down.warnings)} warning(s)]" if down.warnings else "")
            )


def cost_weight_month(policy: Policy, book: PriceBook, traffic: TrafficProfile) -> None:
    print("2. cost_weight, active-active, a month:")
    marginal = {r.name: marginal_cost_per_mtok(r, book) for r in policy.regions}
    print(
        "  marginal cost per 1M output tokens: "
        + ", ".join(f"{name} ${cost:.3f}" for name, cost in marginal.items() if cost is not None)
    )
    base = estimate(policy, book, traffic, NORMAL)
    for weight in (0.0, 0.5, 1.0):
        report = estimate(with_service(policy, cost_weight=weight), book, traffic, NORMAL)
        shares = ", ".join(
            f"{g.group}: " + " ".join(f"{r} {s:.0%}" for r, s in sorted(g.regions.items()))
            for g in report.groups
        )
        print(
            f"  cost_weight {weight:.1f}: {money(report)}  saves ${base.total - report.total:,.0f}/month"
            f" ({(base.total - report.total) / base.total:.1%})   {shares}"
        )


async def on_stack(policy_text: str, ttft: dict[str, float], seconds: float) -> LoadReport:
    with tempfile.TemporaryDirectory() as tmp:
        dns_port = free_port()
        text = loopback_policy(free_port(), dns_port, f"127.0.0.1:{free_port()}")
        path = Path(tmp) / "policy.yaml"
        if "    mode: active-active\n" not in text:
            raise RuntimeError(f"{DEMO} no longer has the line this bench sets cost_weight beside")
        path.write_text(text.replace("    mode: active-active\n", policy_text))
        policy = parse_policy(path.read_text(), str(path))
        async with demo_stack(
            path, Path(tmp) / "state", haproxy=False, api_port=free_port(), handle_signals=False
        ) as stack:
            for name, sim in stack.fleet.regions.items():
                sim.ttft = ttft[name]
            await until_weights_settle(stack)
            settings = LoadSettings(
                dns=("127.0.0.1", dns_port),
                name=policy.services[0].dns_name,
                groups=(
                    GroupLoad("global", 20.0, clients=20),
                    GroupLoad("eu", 10.0, source="127.0.1.5", clients=10),
                ),
                targets=policy_targets(policy),
                model=policy.probes.inference.model or None,
            )
            load = LoadGenerator(settings, policy)
            await load.start()
            await asyncio.sleep(seconds)
            await load.stop(grace=2.0)
            return load.report()


async def until_weights_settle(stack: DemoStack) -> None:
    """Until the plan has stopped moving (slow start and damping done) for a second."""
    previous, still = None, 0
    for _ in range(400):
        plan = stack.daemon.plan
        current = None if plan is None else tuple((g.group, tuple(g.weights)) for g in plan)
        still = still + 1 if current is not None and current == previous else 0
        if still >= 10 and current and all("slow start" not in w.reason for _, ws in current for w in ws):
            return
        previous = current
        await asyncio.sleep(0.1)
    raise RuntimeError("the demo stack's weights did not settle in 40 s")


def describe(report: LoadReport, label: str) -> None:
    total = sum(s.total for s in report.by_region.values()) or 1
    spread = ", ".join(f"{r} {s.total / total:.0%}" for r, s in sorted(report.by_region.items()) if s.total)
    print(f"  {label}: {total} requests ({spread}); residency violations {report.residency_violations}")
    for group, stats in sorted(report.by_group.items()):
        # The mean, besides the percentiles: a median over a mix of two regions' delays sits on one of them.
        ttfts = [o.ttft for o in report.outcomes if o.group == group and o.ttft is not None]
        mean = f"{statistics.fmean(ttfts) * 1000:.1f} ms" if ttfts else "-"
        p50 = f"{stats.ttft_p50 * 1000:.0f} ms" if stats.ttft_p50 is not None else "-"
        p99 = f"{stats.ttft_p99 * 1000:.0f} ms" if stats.ttft_p99 is not None else "-"
        print(f"    group {group:<7} TTFT mean {mean:>8}  p50 {p50:>6}  p99 {p99:>6}  failed {stats.failed}")


async def stack_runs(policy: Policy, seconds: float) -> None:
    ttft = {r.name: ASSUMED_TTFT[r.fleet.instance] for r in policy.regions if r.fleet is not None}
    print(
        f"3. the demo stack, {seconds:g} s of real clients per setting (global 20 req/s, eu 10 req/s), "
        "first token after " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in ttft.items()) + " (assumed):"
    )
    for weight in (0.0, 0.5):
        block = f"    mode: active-active\n    cost_weight: {weight}\n"
        describe(await on_stack(block, ttft, seconds), f"cost_weight {weight:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="client load per setting on the stack")
    parser.add_argument("--skip-stack", action="store_true", help="only the monthly figures (1 and 2)")
    args = parser.parse_args()
    policy, book, traffic = load_policy(DEMO), load_prices(shipped_sheets()), load_traffic(TRAFFIC)
    worked_example(policy, book, traffic)
    cost_weight_month(policy, book, traffic)
    if not args.skip_stack:
        asyncio.run(stack_runs(policy, args.seconds))


if __name__ == "__main__":
    main()
