"""Price sheets: what an instance-hour, a GB moved or stored and a request cost per cloud region, each figure
with the public page and the date it was read, so every sum the cost model makes can be checked by hand."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from controlplane.policy import Fleet, Policy, ReservedTerm
from controlplane.yamldoc import DocumentError, Path_, Problem, by_position, parse_document, quoted, read_text

PRICES_DIR = Path(__file__).resolve().parents[2] / "policies" / "prices"


class PurchaseOption(StrEnum):
    ON_DEMAND = "on_demand"
    SPOT = "spot"
    RESERVED_1Y = "reserved_1y"
    RESERVED_3Y = "reserved_3y"

    @classmethod
    def reserved(cls, term: ReservedTerm) -> PurchaseOption:
        return cls.RESERVED_1Y if term is ReservedTerm.ONE_YEAR else cls.RESERVED_3Y


@dataclass(frozen=True, slots=True)
class Priced:
    amount: float  # in the book's currency, per `unit`
    unit: str  # "h", "GB", "GB-month", "1k requests", "month"
    source: str  # "https://... (2026-11-01)": the page and when the figure was read


class PriceMissing(LookupError):
    """A figure the sheets do not have; the message says what they do have there."""


class PriceSheetError(DocumentError):
    """A price sheet that cannot be used; carries every problem found, each at FILE:LINE:COL."""


# ---------------------------------------------------------------------------------------------- the file


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be the http:// or https:// URL of the page the figure was read on")
    return value


def _day(value: object) -> object:
    """A YAML date (2026-11-01) or a month ("2026-11"), kept as text: when a figure was read."""
    return value.isoformat() if isinstance(value, date) else value


Url = Annotated[str, Field(max_length=2000), AfterValidator(_url)]
When = Annotated[str, BeforeValidator(_day), Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")]
Price = Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False)]
Key = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Text = Annotated[str, Field(max_length=2000)]


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Url
    date: When | None = None
    note: Text | None = None


class InstancePrices(_Entry):
    on_demand: Price | None = None
    spot: Price | None = None
    reserved_1y: Price | None = None
    reserved_3y: Price | None = None

    @model_validator(mode="after")
    def _some(self) -> InstancePrices:
        if all(getattr(self, o.value) is None for o in PurchaseOption):
            raise ValueError(f"give at least one of {', '.join(o.value for o in PurchaseOption)}")
        return self


class EgressPrices(_Entry):
    inter_region_per_gb: Price | None = None
    internet_per_gb: Price | None = None


class StoragePrices(_Entry):
    per_gb_month: Price


class RequestPrices(_Entry):
    put_per_1k: Price | None = None
    get_per_1k: Price | None = None


class RegionPrices(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    instances: dict[Key, InstancePrices] = Field(default_factory=dict)
    egress: EgressPrices | None = None
    storage: StoragePrices | None = None
    requests: RequestPrices | None = None


class CompliancePrice(_Entry):
    monthly: Price
    note: Text  # what the figure pays for: a reader must be able to tell a placeholder from a quote


class PriceSheet(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    date: When | None = None  # when the figures were read, unless an entry says otherwise
    note: Text | None = None
    clouds: dict[Key, dict[Key, RegionPrices]] = Field(default_factory=dict)
    compliance: dict[Annotated[str, Field(min_length=1, max_length=32)], CompliancePrice] = Field(
        default_factory=dict
    )


# ------------------------------------------------------------------------------------------------ the book

# (cloud, region, item, figure): item is an instance type or one of these, which no instance type can be
# (an instance type starts with a letter or digit).
_EGRESS, _STORAGE, _REQUESTS = "@egress", "@storage", "@requests"
FigureKey = tuple[str, str, str, str]
_INSTANCE_WORD = {
    PurchaseOption.ON_DEMAND: "on-demand",
    PurchaseOption.SPOT: "spot",
    PurchaseOption.RESERVED_1Y: "1-year reserved",
    PurchaseOption.RESERVED_3Y: "3-year reserved",
}
_FIGURE_WORD = {
    (_EGRESS, "inter_region_per_gb"): "inter-region egress",
    (_EGRESS, "internet_per_gb"): "internet egress",
    (_STORAGE, "per_gb_month"): "storage",
    (_REQUESTS, "put_per_1k"): "PUT request",
    (_REQUESTS, "get_per_1k"): "GET request",
}


@dataclass(frozen=True, slots=True)
class PriceBook:
    """Every figure of the loaded sheets, a later sheet's figure replacing an earlier one's."""

    currency: str
    figures: Mapping[FigureKey, Priced] = field(default_factory=dict)
    compliance_figures: Mapping[str, Priced] = field(default_factory=dict)

    def instance_hour(self, cloud: str, region: str, instance: str, option: PurchaseOption) -> Priced:
        return self._get((cloud, region, instance, option.value), f"{_INSTANCE_WORD[option]} price")

    def inter_region_egress(self, cloud: str, region: str) -> Priced:
        return self._get((cloud, region, _EGRESS, "inter_region_per_gb"), "inter-region egress price")

    def internet_egress(self, cloud: str, region: str) -> Priced:
        return self._get((cloud, region, _EGRESS, "internet_per_gb"), "internet egress price")

    def storage(self, cloud: str, region: str) -> Priced:
        return self._get((cloud, region, _STORAGE, "per_gb_month"), "storage price")

    def put_requests(self, cloud: str, region: str) -> Priced:
        return self._get((cloud, region, _REQUESTS, "put_per_1k"), "PUT request price")

    def compliance(self, jurisdiction: str) -> Priced | None:
        return self.compliance_figures.get(jurisdiction)

    def _get(self, key: FigureKey, what: str) -> Priced:
        if (found := self.figures.get(key)) is not None:
            return found
        raise PriceMissing(self._missing(key, what))

    def _missing(self, key: FigureKey, what: str) -> str:
        cloud, region, item, _ = key
        instance = not item.startswith("@")
        place = f"{cloud}/{region}" + (f" {item}" if instance else "")
        here = [k for k in self.figures if k[:2] == (cloud, region)]
        if not here:
            regions = sorted({k[1] for k in self.figures if k[0] == cloud})
            if not regions:
                clouds = sorted({k[0] for k in self.figures})
                return f"no {what} for {place}: the sheets have no cloud {quoted(cloud)} (they have {_listed(clouds)})"
            return f"no {what} for {place}: the sheets have no {cloud} region {quoted(region)} (they have {_listed(regions)})"
        if instance:
            options = [k[3] for k in here if k[2] == item]
            if options:
                return f"no {what} for {place} (it has {_listed(options)})"
            types = sorted({k[2] for k in here if not k[2].startswith("@")})
            return f"no {what} for {place}: no such instance type there (it has {_listed(types)})"
        has = [_FIGURE_WORD[k[2], k[3]] for k in here if k[2].startswith("@")]
        return f"no {what} for {place} (it has {_listed(has)})"


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "nothing"


def _source(entry: _Entry, sheet: PriceSheet) -> str:
    return f"{entry.source} ({entry.date or sheet.date})"


def _figures(sheet: PriceSheet) -> Iterator[tuple[FigureKey, Priced]]:
    for cloud, regions in sheet.clouds.items():
        for region, prices in regions.items():
            for instance, entry in prices.instances.items():
                for option in PurchaseOption:
                    if (amount := getattr(entry, option.value)) is not None:
                        yield (
                            (cloud, region, instance, option.value),
                            Priced(amount, "h", _source(entry, sheet)),
                        )
            parts: list[tuple[str, _Entry | None, dict[str, str]]] = [
                (_EGRESS, prices.egress, {"inter_region_per_gb": "GB", "internet_per_gb": "GB"}),
                (_STORAGE, prices.storage, {"per_gb_month": "GB-month"}),
                (_REQUESTS, prices.requests, {"put_per_1k": "1k requests", "get_per_1k": "1k requests"}),
            ]
            for item, part, units in parts:
                if part is None:
                    continue
                for name, unit in units.items():
                    if (amount := getattr(part, name)) is not None:
                        yield (cloud, region, item, name), Priced(amount, unit, _source(part, sheet))


def _undated(sheet: PriceSheet) -> Iterator[Path_]:
    """Entries with no date of their own in a sheet with none: a figure must say when it was read."""
    if sheet.date is not None:
        return
    for cloud, regions in sheet.clouds.items():
        for region, prices in regions.items():
            for instance, entry in prices.instances.items():
                if entry.date is None:
                    yield ("clouds", cloud, region, "instances", instance)
            for name in ("egress", "storage", "requests"):
                part: _Entry | None = getattr(prices, name)
                if part is not None and part.date is None:
                    yield ("clouds", cloud, region, name)
    for jurisdiction, fixed in sheet.compliance.items():
        if fixed.date is None:
            yield ("compliance", jurisdiction)


def parse_sheet(text: str, filename: str = "<prices>") -> PriceSheet:
    parsed = parse_document(
        text,
        filename,
        PriceSheet,
        what="price sheet",
        expected="a mapping with version, currency and clouds",
        error=PriceSheetError,
    )
    sheet, at = parsed.value, parsed.at
    problems = parsed.problems + [
        at.problem(
            loc, f"{'.'.join(map(str, loc))}: no date: give the sheet or this entry a `date` (when read)"
        )
        for loc in _undated(sheet)
    ]
    if problems:
        raise PriceSheetError(by_position(problems))
    return sheet


def _load_sheet(path: Path) -> tuple[PriceSheet, Problem]:
    """The sheet and where its currency is written, for a message if it disagrees with another sheet's."""
    try:
        text = read_text(path, "price sheet")
    except DocumentError as exc:
        raise PriceSheetError(exc.problems) from None
    sheet = parse_sheet(text, str(path))
    line = next((i for i, row in enumerate(text.splitlines(), 1) if re.match(r"^currency\s*:", row)), 1)
    return sheet, Problem(str(path), line, 1, "")


def shipped_sheets() -> list[Path]:
    return sorted(PRICES_DIR.glob("*.yaml"))


def load_prices(paths: Sequence[Path]) -> PriceBook:
    """The sheets in order, a later sheet's figure replacing an earlier one's figure by figure (an instance's
    spot price alone may be overridden). All sheets must share one currency. No sheets: an empty USD book."""
    figures: dict[FigureKey, Priced] = {}
    compliance: dict[str, Priced] = {}
    currency: tuple[str, str] | None = None  # (currency, first file that gave it)
    for path in paths:
        sheet, at = _load_sheet(Path(path))
        if currency is None:
            currency = (sheet.currency, str(path))
        elif sheet.currency != currency[0]:
            raise PriceSheetError(
                [
                    Problem(
                        at.file,
                        at.line,
                        at.column,
                        f"currency: {sheet.currency} differs from {currency[0]} in {currency[1]}; "
                        "every sheet loaded together must use one currency",
                    )
                ]
            )
        figures.update(_figures(sheet))
        for jurisdiction, entry in sheet.compliance.items():
            compliance[jurisdiction] = Priced(entry.monthly, "month", _source(entry, sheet))
    return PriceBook(currency[0] if currency else "USD", figures, compliance)


def _fleet_figures(fleet: Fleet, *, with_storage: bool) -> Iterator[tuple[str, FigureKey]]:
    """What the cost model asks of the sheets for one fleet: (what, key) of each figure."""
    where = (fleet.cloud, fleet.region)
    yield f"{_INSTANCE_WORD[PurchaseOption.ON_DEMAND]} price", (*where, fleet.instance, "on_demand")
    if fleet.reserved > 0:
        option = PurchaseOption.reserved(fleet.reserved_term)
        yield f"{_INSTANCE_WORD[option]} price", (*where, fleet.instance, option.value)
    if fleet.spot_max > 0:
        yield "spot price", (*where, fleet.instance, "spot")
    yield "internet egress price", (*where, _EGRESS, "internet_per_gb")
    yield "inter-region egress price", (*where, _EGRESS, "inter_region_per_gb")
    if with_storage:
        yield "storage price", (*where, _STORAGE, "per_gb_month")
        yield "PUT request price", (*where, _REQUESTS, "put_per_1k")


def check_fleets(policy: Policy, book: PriceBook) -> list[str]:
    """Every figure a region's fleet needs and the sheets lack, one message each naming the region.
    Storage and request prices are needed only where a bucket holds a service's model."""
    with_model = {r for s in policy.services if s.model is not None for r in s.regions}
    out: list[str] = []
    for region in policy.regions:
        if region.fleet is None:
            continue
        storage = region.bucket is not None and region.name in with_model
        for what, key in _fleet_figures(region.fleet, with_storage=storage):
            if key not in book.figures:
                out.append(f"region {region.name}: {book._missing(key, what)}")
    return out
