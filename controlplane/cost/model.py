"""The cost model: what a policy costs per month under a traffic profile and a scenario, each figure a sum of
terms a reader can redo by hand. Pure: the engine decides where each group's traffic goes, the price book
says what each hour, GB and request costs."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from controlplane.cost.prices import PriceBook, Priced, PurchaseOption
from controlplane.cost.report import (
    HOURS_PER_MONTH,
    HOURS_PER_WEEK,
    WEEKS_PER_MONTH,
    Category,
    CostReport,
    GroupCost,
    RegionCost,
    Scenario,
    ScenarioKind,
    Term,
)
from controlplane.cost.traffic import STREAMED_BYTES_PER_TOKEN, TEXT_BYTES_PER_TOKEN, TrafficProfile
from controlplane.engine import decide
from controlplane.plan import RoutingPlan
from controlplane.policy import Fleet, Policy, Region
from controlplane.residency import check_plan
from probes.health import HealthView, RegionHealth, State

SECONDS_PER_HOUR = 3600.0
BYTES_PER_GB = 1e9


class ResidencyBreach(RuntimeError):
    """The engine's plan put a group's traffic where its jurisdictions forbid: never priced, always a bug."""


# ------------------------------------------------------------------------------------------ one fleet


@dataclass(frozen=True, slots=True)
class _FleetPrices:
    """The hourly prices a fleet pays, by what it buys: spot only when it may run spot and spot is cheaper."""

    fleet: Fleet
    reserved: Priced | None
    spot: Priced | None
    on_demand: Priced

    @classmethod
    def of(cls, fleet: Fleet, book: PriceBook) -> _FleetPrices:
        where = (fleet.cloud, fleet.region, fleet.instance)
        on_demand = book.instance_hour(*where, PurchaseOption.ON_DEMAND)
        reserved = (
            book.instance_hour(*where, PurchaseOption.reserved(fleet.reserved_term))
            if fleet.reserved
            else None
        )
        spot = book.instance_hour(*where, PurchaseOption.SPOT) if fleet.spot_max else None
        return cls(
            fleet, reserved, spot if spot is not None and spot.amount < on_demand.amount else None, on_demand
        )

    def split(self, instances: int) -> tuple[int, int, int]:
        """(spot, on-demand, lacking) instances above the reserved ones for `instances` needed."""
        above = max(0, instances - self.fleet.reserved)
        spot = min(above, self.fleet.spot_max) if self.spot is not None else 0
        on_demand = min(above - spot, self.fleet.on_demand_max)
        return spot, on_demand, above - spot - on_demand

    @property
    def ceiling(self) -> int:
        return self.fleet.reserved + (self.fleet.spot_max if self.spot else 0) + self.fleet.on_demand_max


def _needed(fleet: Fleet, tokens_out_per_s: float) -> int:
    # Rounded first: 5,000 tokens/s over 2,500-token instances is 2 even when the float sum says 5000.000001.
    return math.ceil(round(tokens_out_per_s / fleet.tokens_per_s, 9)) if tokens_out_per_s > 0 else 0


def _usd(priced: Priced) -> str:
    return f"${priced.amount:.4f}/{priced.unit}"


def marginal_cost_per_mtok(region: Region, book: PriceBook) -> float | None:
    """What one more million output tokens cost in `region` above its reserved instances (already paid):
    the instance time (spot when it may run spot and spot is cheaper, else on-demand) plus sending them
    to the clients streamed (a fifth of the instance time for an 8B model on an L40S). None without a fleet."""
    return None if region.fleet is None else _marginal(region.fleet, book)


def _marginal(fleet: Fleet, book: PriceBook) -> float:
    prices = _FleetPrices.of(fleet, book)
    compute = (prices.spot or prices.on_demand).amount / (fleet.tokens_per_s * SECONDS_PER_HOUR) * 1e6
    egress = (
        book.internet_egress(fleet.cloud, fleet.region).amount * STREAMED_BYTES_PER_TOKEN * 1e6 / BYTES_PER_GB
    )
    return compute + egress


@dataclass(frozen=True, slots=True)
class HourCost:
    """One hour of a region at a steady output rate."""

    per_hour: float
    terms: tuple[Term, ...]  # amounts per hour, not per month
    instances: int  # running: the reserved ones (paid either way) and the spot and on-demand ones needed


def hourly_cost(region: Region, book: PriceBook, output_tokens_per_s: float) -> HourCost:
    """One hour at a steady output rate: reserved + spot + on-demand instances and the internet egress of
    those tokens (STREAMED_BYTES_PER_TOKEN each). Demand beyond the fleet's limits is not served, so not
    priced. No fleet: nothing to price."""
    fleet = region.fleet
    if fleet is None:
        return HourCost(0.0, (), 0)
    prices = _FleetPrices.of(fleet, book)
    spot, on_demand, _ = prices.split(_needed(fleet, output_tokens_per_s))
    served = min(output_tokens_per_s, prices.ceiling * fleet.tokens_per_s)
    terms = list(_instance_terms(prices, 1.0, spot, on_demand, "1 h"))
    gb = served * SECONDS_PER_HOUR * STREAMED_BYTES_PER_TOKEN / BYTES_PER_GB
    internet = book.internet_egress(fleet.cloud, fleet.region)
    if gb > 0:
        terms.append(
            Term(
                Category.EGRESS,
                "egress to the internet",
                gb * internet.amount,
                f"{served:,.0f} tok/s x 3600 s x {STREAMED_BYTES_PER_TOKEN:g} B/tok = {gb:,.3f} GB x {_usd(internet)}",
                (internet.source,),
            )
        )
    return HourCost(sum(t.amount for t in terms), tuple(terms), fleet.reserved + spot + on_demand)


def _instance_terms(
    prices: _FleetPrices, reserved_hours: float, spot_hours: float, on_demand_hours: float, per: str
) -> Iterator[Term]:
    """Reserved, spot and on-demand terms; `reserved_hours` is the hours each reserved instance is paid,
    spot_hours/on_demand_hours the instance-hours run, `per` how the hours were counted (for the formula)."""
    fleet = prices.fleet
    if prices.reserved is not None:
        yield Term(
            Category.RESERVED,
            f"reserved {fleet.instance} ({fleet.reserved_term.value})",
            fleet.reserved * reserved_hours * prices.reserved.amount,
            f"{fleet.reserved} inst x {reserved_hours:g} h x {_usd(prices.reserved)}",
            (prices.reserved.source,),
        )
    for category, hours, priced in (
        (Category.SPOT, spot_hours, prices.spot),
        (Category.ON_DEMAND, on_demand_hours, prices.on_demand),
    ):
        if hours > 0 and priced is not None:
            yield Term(
                category,
                f"{category.value.replace('_', '-')} {fleet.instance}",
                hours * priced.amount,
                f"{hours:,.4g} inst-h ({per}) x {_usd(priced)}",
                (priced.source,),
            )


# ------------------------------------------------------------------------------------------- the month


def _health(policy: Policy, scenario: Scenario) -> HealthView:
    down = scenario.region if scenario.kind is ScenarioKind.REGION_DOWN else None
    return HealthView(
        0.0,
        {
            r.name: RegionHealth(r.name, State.UNHEALTHY, 0.0, 0.0, (f"scenario {scenario}",))
            if r.name == down
            else RegionHealth(r.name, State.HEALTHY, 1.0, 0.0, ())
            for r in policy.regions
        },
    )


def _plan(
    policy: Policy, book: PriceBook, scenario: Scenario, fleets: Mapping[str, Fleet | None]
) -> RoutingPlan:
    """The engine's plan for the scenario, leaning on cost exactly as the daemon would (same figures)."""
    costs = {name: _marginal(fleet, book) for name, fleet in fleets.items() if fleet is not None}
    plan = decide(policy, _health(policy, scenario), previous=None, now=0.0, costs=costs)
    if breaches := check_plan(policy, plan):
        raise ResidencyBreach("; ".join(map(str, breaches)))
    return plan


def _fleets(policy: Policy, scenario: Scenario) -> dict[str, Fleet | None]:
    """Each region's fleet as the scenario runs it: spot-loss:R is R without spot instances."""
    lost = scenario.region if scenario.kind is ScenarioKind.SPOT_LOSS else None
    return {
        r.name: r.fleet.model_copy(update={"spot_max": 0})
        if r.name == lost and r.fleet is not None
        else r.fleet
        for r in policy.regions
    }


@dataclass
class _Load:
    """What the week sends one region: per hour, output tokens/s; per group, the week's requests."""

    out_per_s: list[float]
    requests: dict[str, list[float]]  # group -> requests/s per hour routed here


def _loads(
    policy: Policy, plan: RoutingPlan, traffic: TrafficProfile, down: str | None, warnings: list[str]
) -> dict[str, _Load]:
    """Each region's routed load. What fail-open or freeze still sends to the region that is down is not
    served anywhere: those requests fail at the clients, so they are warned about, never priced."""
    loads = {r.name: _Load([0.0] * HOURS_PER_WEEK, {}) for r in policy.regions}
    for name, group in traffic.groups.items():
        service = group.service_of(policy)
        if service is None:
            raise ValueError(
                f"traffic group {name!r}: no such service in the policy (check_traffic says why)"
            )
        planned = plan.group(service.name, name)
        shares = {w.region: w.weight / 100 for w in planned.weights if w.weight > 0} if planned else {}
        weekly = sum(group.rps(h) for h in range(HOURS_PER_WEEK))
        mode = planned.mode.value if planned else "not in the plan"
        if not shares:
            if weekly > 0:
                warnings.append(
                    f"group {name} ({service.name}): no region may serve it ({mode}): "
                    f"{weekly * SECONDS_PER_HOUR * WEEKS_PER_MONTH:,.0f} requests/month unserved"
                )
            continue
        for region, share in shares.items():
            if region == down:
                if weekly > 0:
                    warnings.append(
                        f"group {name} ({service.name}): {mode} sends"
                        f" {share:.0%} to {region}, which is down: "
                        f"{weekly * share * SECONDS_PER_HOUR * WEEKS_PER_MONTH:,.0f} requests/month fail"
                    )
                continue
            rates = [group.rps(h) * share for h in range(HOURS_PER_WEEK)]
            load = loads[region]
            load.requests[name] = rates
            load.out_per_s = [o + r * group.tokens_out for o, r in zip(load.out_per_s, rates, strict=True)]
    return loads


@dataclass(frozen=True, slots=True)
class _Served:
    """A region's week after its fleet's limits: instance-hours bought and the fraction of demand served."""

    spot_hours: float
    on_demand_hours: float
    served: list[float]  # per hour, the fraction of the routed demand the fleet ran
    lacking_tokens: float  # output tokens per week beyond the limits
    lacking_hours: int
    peak: int


def _serve(prices: _FleetPrices, out_per_s: list[float]) -> _Served:
    fleet = prices.fleet
    spot_hours = on_demand_hours = lacking_tokens = 0.0
    served: list[float] = []
    lacking_hours = peak = 0
    for demand in out_per_s:
        spot, on_demand, lacking = prices.split(_needed(fleet, demand))
        spot_hours += spot
        on_demand_hours += on_demand
        running = fleet.reserved + spot + on_demand
        peak = max(peak, running)
        capacity = running * fleet.tokens_per_s
        if lacking:
            lacking_hours += 1
            lacking_tokens += (demand - capacity) * SECONDS_PER_HOUR
        served.append(min(1.0, capacity / demand) if demand > 0 else 0.0)
    return _Served(spot_hours, on_demand_hours, served, lacking_tokens, lacking_hours, peak)


def _month(per_week: float) -> float:
    return per_week * WEEKS_PER_MONTH


def _egress_terms(
    policy: Policy,
    region: Region,
    fleet: Fleet,
    book: PriceBook,
    load: _Load,
    served: list[float],
    traffic: TrafficProfile,
) -> Iterator[Term]:
    internet_gb = 0.0
    # Forwarded from a group's home and back, by whether the home runs on the same cloud: between two
    # clouds the bytes leave over the internet and pay its price, not the cloud's inter-region one.
    forwarded = {True: 0.0, False: 0.0}
    away: dict[bool, list[str]] = {True: [], False: []}
    for name, rates in load.requests.items():
        group = traffic.groups[name]
        requests = _month(sum(r * s for r, s in zip(rates, served, strict=True)) * SECONDS_PER_HOUR)
        internet_gb += requests * group.tokens_out * group.bytes_per_token / BYTES_PER_GB
        if group.home is not None and group.home != region.name:
            home = policy.region(group.home).fleet
            same_cloud = home is None or home.cloud == fleet.cloud
            # The prompt as text, the reply as the clients get it.
            wire = group.tokens_in * TEXT_BYTES_PER_TOKEN + group.tokens_out * group.bytes_per_token
            forwarded[same_cloud] += requests * wire / BYTES_PER_GB
            away[same_cloud].append(name)
    if internet_gb > 0:
        price = book.internet_egress(fleet.cloud, fleet.region)
        yield Term(
            Category.EGRESS,
            "egress to the internet",
            internet_gb * price.amount,
            f"{internet_gb:,.2f} GB (output tokens x bytes/token) x {_usd(price)}",
            (price.source,),
        )
    for same_cloud, gb in forwarded.items():
        if gb <= 0:
            continue
        price = (book.inter_region_egress if same_cloud else book.internet_egress)(fleet.cloud, fleet.region)
        what = "inter-region egress" if same_cloud else "egress to another cloud"
        yield Term(
            Category.EGRESS,
            f"{what} (groups served away from home: {', '.join(away[same_cloud])})",
            gb * price.amount,
            f"{gb:,.2f} GB (tokens in x {TEXT_BYTES_PER_TOKEN:g} B + out x bytes/token) x {_usd(price)}",
            (price.source,),
        )


def _weight_terms(policy: Policy, book: PriceBook, traffic: TrafficProfile) -> dict[str, list[Term]]:
    """Storage and weight sync per region: every model of the profile kept in each bucket that may hold it."""
    out: dict[str, list[Term]] = {}
    keep = 1 + policy.sync.keep_versions
    for model in policy.models:
        footprint = traffic.models.get(model.name)
        if footprint is None:
            continue
        for region in policy.model_regions(model):
            fleet = region.fleet
            if fleet is None or region.bucket is None or not model.may_store_in(region.jurisdiction):
                continue
            terms = out.setdefault(region.name, [])
            price = book.storage(fleet.cloud, fleet.region)
            gb = footprint.size_gb * keep
            terms.append(
                Term(
                    Category.STORAGE,
                    f"{model.name} weights in the bucket",
                    gb * price.amount,
                    f"{footprint.size_gb:g} GB x {keep} versions x {_usd(price)}",
                    (price.source,),
                )
            )
            updates = footprint.updates_per_month
            moved = footprint.size_gb * updates
            if (footprint.cloud, footprint.region) != (fleet.cloud, fleet.region) and moved > 0:
                same_cloud = footprint.cloud == fleet.cloud
                egress = (book.inter_region_egress if same_cloud else book.internet_egress)(
                    footprint.cloud, footprint.region
                )
                terms.append(
                    Term(
                        Category.WEIGHT_SYNC,
                        f"{model.name} copied from {footprint.source} ({'inter-region' if same_cloud else 'internet'})",
                        moved * egress.amount,
                        f"{footprint.size_gb:g} GB x {updates:g} updates x {_usd(egress)}",
                        (egress.source,),
                    )
                )
            puts = footprint.files * updates
            if puts > 0:
                put = book.put_requests(fleet.cloud, fleet.region)
                terms.append(
                    Term(
                        Category.WEIGHT_SYNC,
                        f"{model.name} PUT requests",
                        puts / 1000 * put.amount,
                        f"{footprint.files} files x {updates:g} updates / 1000 x {_usd(put)}",
                        (put.source,),
                    )
                )
    return out


def _compliance_terms(policy: Policy, book: PriceBook) -> dict[str, Term]:
    priced = [r for r in policy.regions if r.fleet is not None]
    out: dict[str, Term] = {}
    for jurisdiction in dict.fromkeys(r.jurisdiction for r in priced):
        figure = book.compliance(jurisdiction)
        if figure is None:
            continue
        regions = [r for r in priced if r.jurisdiction == jurisdiction]
        for region in regions:
            out[region.name] = Term(
                Category.COMPLIANCE,
                f"{jurisdiction} compliance, shared",
                figure.amount / len(regions),
                f"${figure.amount:,.2f}/month / {len(regions)} regions in {jurisdiction}",
                (figure.source,),
            )
    return out


def estimate(policy: Policy, book: PriceBook, traffic: TrafficProfile, scenario: Scenario) -> CostReport:
    """The month under `scenario`: one row per region with a fleet, one per traffic group, and warnings
    (unserved demand, regions without a fleet). Raises ValueError for a scenario region the policy lacks,
    PriceMissing for a figure the book lacks (check_fleets first) and ResidencyBreach if the engine ever
    sent a group where it may not go."""
    if scenario.region is not None and scenario.region not in {r.name for r in policy.regions}:
        raise ValueError(f"scenario {scenario}: no region {scenario.region!r} in the policy")
    fleets = _fleets(policy, scenario)
    warnings: list[str] = []
    down = scenario.region if scenario.kind is ScenarioKind.REGION_DOWN else None
    loads = _loads(policy, _plan(policy, book, scenario, fleets), traffic, down, warnings)
    weights = _weight_terms(policy, book, traffic)
    compliance = _compliance_terms(policy, book)
    rows: list[RegionCost] = []
    group_tokens: dict[str, dict[str, float]] = {name: {} for name in traffic.groups}
    for region in policy.regions:
        load = loads[region.name]
        fleet = fleets[region.name]
        if fleet is None:
            if any(load.out_per_s):
                warnings.append(f"region {region.name}: no fleet, so the traffic routed there is not priced")
            else:
                warnings.append(f"region {region.name}: no fleet, not priced")
            continue
        prices = _FleetPrices.of(fleet, book)
        served = _serve(prices, load.out_per_s)
        terms = [
            *_instance_terms(
                prices,
                HOURS_PER_MONTH,
                _month(served.spot_hours),
                _month(served.on_demand_hours),
                "per month",
            ),
            *_egress_terms(policy, region, fleet, book, load, served.served, traffic),
            *weights.get(region.name, ()),
            *([compliance[region.name]] if region.name in compliance else []),
        ]
        tokens = 0.0
        for name, rates in load.requests.items():
            group = traffic.groups[name]
            requests = _month(
                sum(r * s for r, s in zip(rates, served.served, strict=True)) * SECONDS_PER_HOUR
            )
            group_tokens[name][region.name] = requests * (group.tokens_in + group.tokens_out)
            tokens += group_tokens[name][region.name]
        lacking = _month(served.lacking_tokens)
        if lacking > 0:
            warnings.append(
                f"region {region.name}: demand above its fleet's limits ({prices.ceiling} instances of "
                f"{fleet.tokens_per_s:g} tok/s) in {served.lacking_hours} h/week: "
                f"{lacking / 1e6:,.1f}M output tokens/month unserved"
            )
        rows.append(RegionCost(region.name, tuple(terms), tokens, lacking, served.peak))
    return CostReport(
        scenario, book.currency, tuple(rows), _groups(rows, group_tokens, traffic), tuple(warnings)
    )


def _groups(
    rows: list[RegionCost], group_tokens: Mapping[str, Mapping[str, float]], traffic: TrafficProfile
) -> tuple[GroupCost, ...]:
    """Each region's total split over the groups by their share of the tokens it served."""
    by_region = {r.region: r for r in rows}
    out: list[GroupCost] = []
    for name in traffic.groups:
        here = {r: t for r, t in group_tokens[name].items() if t > 0 and r in by_region}
        tokens = sum(here.values())
        cost = sum(by_region[r].total * t / by_region[r].tokens for r, t in here.items())
        out.append(GroupCost(name, tokens, cost, {r: t / tokens for r, t in here.items()}))
    return tuple(out)
