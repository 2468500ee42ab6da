"""Price sheets: the shipped ones load and say where each figure came from; a user's sheet overrides figure by
figure; bad sheets are refused at FILE:LINE:COL; a missing figure is named with what the sheets do have."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from controlplane.cost.prices import (
    Priced,
    PriceMissing,
    PriceSheetError,
    PurchaseOption,
    check_fleets,
    load_prices,
    shipped_sheets,
)
from controlplane.policy import Policy
from tests.builders import policy_data

SHEET = """\
version: 1
currency: USD
date: 2026-11-01
clouds:
  aws:
    us-east-1:
      instances:
        g6e.xlarge: {on_demand: 1.861, reserved_1y: 1.172, source: "https://aws.amazon.com/ec2/pricing/on-demand/"}
      egress: {inter_region_per_gb: 0.02, internet_per_gb: 0.09, source: "https://aws.amazon.com/ec2/pricing/"}
      storage: {per_gb_month: 0.023, source: "https://aws.amazon.com/s3/pricing/"}
      requests: {put_per_1k: 0.005, source: "https://aws.amazon.com/s3/pricing/", date: 2026-10}
compliance:
  EU: {monthly: 2500, source: "https://example.org/dpa", note: "a placeholder"}
"""


def write(tmp_path: Path, text: str, name: str = "sheet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(PriceSheetError) as caught:
        load_prices([write(tmp_path, text)])
    return str(caught.value)


def test_a_sheet_gives_each_figure_with_its_unit_page_and_date(tmp_path: Path) -> None:
    book = load_prices([write(tmp_path, SHEET)])
    assert book.currency == "USD"
    page = "https://aws.amazon.com/ec2/pricing/on-demand/ (2026-11-01)"
    assert book.instance_hour("aws", "us-east-1", "g6e.xlarge", PurchaseOption.ON_DEMAND) == Priced(
        1.861, "h", page
    )
    assert book.instance_hour("aws", "us-east-1", "g6e.xlarge", PurchaseOption.RESERVED_1Y).amount == 1.172
    assert book.inter_region_egress("aws", "us-east-1").amount == 0.02
    assert book.internet_egress("aws", "us-east-1") == Priced(
        0.09, "GB", "https://aws.amazon.com/ec2/pricing/ (2026-11-01)"
    )
    assert book.storage("aws", "us-east-1").unit == "GB-month"
    # An entry's own date wins over the sheet's.
    assert book.put_requests("aws", "us-east-1") == Priced(
        0.005, "1k requests", "https://aws.amazon.com/s3/pricing/ (2026-10)"
    )
    assert book.compliance("EU") == Priced(2500, "month", "https://example.org/dpa (2026-11-01)")
    assert book.compliance("US") is None


def test_a_missing_figure_names_what_the_sheets_have_there(tmp_path: Path) -> None:
    book = load_prices([write(tmp_path, SHEET)])
    cases = [
        (
            lambda: book.instance_hour("aws", "us-east-1", "g6e.xlarge", PurchaseOption.SPOT),
            "no spot price for aws/us-east-1 g6e.xlarge (it has on_demand, reserved_1y)",
        ),
        (
            lambda: book.instance_hour("aws", "us-east-1", "p5.48xlarge", PurchaseOption.ON_DEMAND),
            "no on-demand price for aws/us-east-1 p5.48xlarge: no such instance type there (it has g6e.xlarge)",
        ),
        (
            lambda: book.storage("aws", "eu-west-1"),
            "no storage price for aws/eu-west-1: the sheets have no aws region 'eu-west-1' (they have us-east-1)",
        ),
        (
            lambda: book.internet_egress("gcp", "us-central1"),
            "no internet egress price for gcp/us-central1: the sheets have no cloud 'gcp' (they have aws)",
        ),
    ]
    for call, message in cases:
        with pytest.raises(PriceMissing) as caught:
            call()
        assert str(caught.value) == message


def test_a_later_sheet_overrides_figure_by_figure(tmp_path: Path) -> None:
    mine = write(
        tmp_path,
        """\
version: 1
currency: USD
clouds:
  aws:
    us-east-1:
      instances:
        g6e.xlarge: {spot: 0.5, on_demand: 1.5, source: "https://example.org/our-quote", date: 2026-11-20}
        g5.2xlarge: {on_demand: 1.212, source: "https://aws.amazon.com/ec2/pricing/on-demand/", date: 2026-11}
compliance:
  EU: {monthly: 4000, source: "https://example.org/legal", note: "our lawyers' retainer", date: 2026-11}
""",
        "mine.yaml",
    )
    book = load_prices([write(tmp_path, SHEET), mine])
    ours = "https://example.org/our-quote (2026-11-20)"
    assert book.instance_hour("aws", "us-east-1", "g6e.xlarge", PurchaseOption.SPOT) == Priced(0.5, "h", ours)
    assert book.instance_hour("aws", "us-east-1", "g6e.xlarge", PurchaseOption.ON_DEMAND) == Priced(
        1.5, "h", ours
    )
    # The figure the later sheet does not give stays as the earlier sheet had it.
    assert book.instance_hour("aws", "us-east-1", "g6e.xlarge", PurchaseOption.RESERVED_1Y).amount == 1.172
    assert book.internet_egress("aws", "us-east-1").amount == 0.09
    assert book.compliance("EU") == Priced(4000, "month", "https://example.org/legal (2026-11)")
    # Order matters: the earlier sheet last puts its figures back.
    assert load_prices([mine, write(tmp_path, SHEET)]).compliance("EU") == book_first_eu(tmp_path)


def book_first_eu(tmp_path: Path) -> Priced | None:
    return load_prices([write(tmp_path, SHEET)]).compliance("EU")


def test_sheets_in_two_currencies_are_refused_at_the_second_ones_currency(tmp_path: Path) -> None:
    first = write(tmp_path, SHEET, "a.yaml")
    second = write(tmp_path, "# euros\nversion: 1\ncurrency: EUR\ndate: 2026-11\n", "b.yaml")
    with pytest.raises(PriceSheetError) as caught:
        load_prices([first, second])
    assert str(caught.value) == (
        f"{second}:3:1: currency: EUR differs from USD in {first}; every sheet loaded together must use one currency"
    )


@pytest.mark.parametrize(
    ("edit", "where", "says"),
    [
        (("on_demand: 1.861", "on_demand: -1.861"), ":8:", "greater than or equal to 0"),
        (("on_demand: 1.861", "on_demand: .nan"), ":8:", "finite number"),
        (("on_demand: 1.861", "ondemand: 1.861"), ":8:", "ondemand: unknown field"),
        (("currency: USD", "currency: dollars"), ":2:", "currency: String should match pattern"),
        (
            ('source: "https://aws.amazon.com/s3/pricing/"}', "source: aws-s3}"),
            ":10:",
            "http:// or https:// URL",
        ),
        (("on_demand: 1.861, reserved_1y: 1.172, ", ""), ":8:", "give at least one of on_demand, spot"),
        (("date: 2026-11-01\n", ""), ":8:", "no date: give the sheet or this entry a `date`"),
        (("  EU: {monthly: 2500, ", "  EU: {monthly: 2500, bogus: 1, "), ":13:", "bogus: unknown field"),
        (('note: "a placeholder"', "date: 2026-11"), ":13:", "note: required field is missing"),
    ],
)
def test_a_bad_sheet_is_refused_at_file_line_col(
    tmp_path: Path, edit: tuple[str, str], where: str, says: str
) -> None:
    old, new = edit
    assert old in SHEET
    message = refused(tmp_path, SHEET.replace(old, new, 1))
    assert f"sheet.yaml{where}" in message and says in message, message


def test_a_sheet_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "prices.fifo"
    os.mkfifo(fifo)
    with pytest.raises(PriceSheetError, match="cannot read price sheet: it is a FIFO"):
        load_prices([fifo])
    with pytest.raises(PriceSheetError, match="cannot read price sheet: it is a directory"):
        load_prices([tmp_path])


def test_every_shipped_figure_names_a_public_page_and_a_date() -> None:
    sheets = shipped_sheets()
    assert [p.name for p in sheets] == ["aws.yaml", "compliance.yaml", "gcp.yaml"]
    book = load_prices(sheets)
    assert book.currency == "USD"
    pages = [*book.figures.values(), *book.compliance_figures.values()]
    assert len(pages) > 80
    for figure in pages:
        assert re.fullmatch(r"https://[^ ]+ \(\d{4}-\d{2}(-\d{2})?\)", figure.source), figure
    aws = {"us-east-1", "us-west-2", "eu-west-1", "eu-central-1"}
    gcp = {"us-central1", "europe-west4", "europe-west3"}
    assert {k[1] for k in book.figures if k[0] == "aws"} == aws
    assert {k[1] for k in book.figures if k[0] == "gcp"} == gcp
    for cloud, regions in (("aws", aws), ("gcp", gcp)):
        for region in regions:
            assert book.internet_egress(cloud, region).amount > book.inter_region_egress(cloud, region).amount
            assert book.storage(cloud, region).amount > 0
            assert book.put_requests(cloud, region).amount > 0
    # Every instance that lists the four options lists them in the order a buyer expects.
    for (cloud, region, item, option), figure in book.figures.items():
        if option == "reserved_3y":
            get = book.instance_hour
            on_demand = get(cloud, region, item, PurchaseOption.ON_DEMAND).amount
            one = get(cloud, region, item, PurchaseOption.RESERVED_1Y).amount
            assert figure.amount < one < on_demand, (cloud, region, item)
        if option == "spot":
            assert figure.amount < book.instance_hour(cloud, region, item, PurchaseOption.ON_DEMAND).amount
    assert book.compliance("EU") is not None and book.compliance("US") is not None


def fleet_policy(**fleet: Any) -> Policy:
    regions = [
        {
            "name": "us-east",
            "endpoint": "http://127.0.0.11:8000",
            "jurisdiction": "US",
            "fleet": {
                "cloud": "aws",
                "region": "us-east-1",
                "instance": "g6e.xlarge",
                "tokens_per_s": 2000,
                **fleet,
            },
        },
        {"name": "eu-west", "endpoint": "http://127.0.0.13:8000", "jurisdiction": "EU"},
    ]
    return Policy.model_validate(policy_data(regions))


def test_check_fleets_names_each_region_and_missing_figure(tmp_path: Path) -> None:
    book = load_prices([write(tmp_path, SHEET)])
    assert check_fleets(fleet_policy(reserved=2), book) == []
    assert check_fleets(fleet_policy(spot_max=4, reserved=1, reserved_term="3y"), book) == [
        "region us-east: no 3-year reserved price for aws/us-east-1 g6e.xlarge (it has on_demand, reserved_1y)",
        "region us-east: no spot price for aws/us-east-1 g6e.xlarge (it has on_demand, reserved_1y)",
    ]
    assert check_fleets(fleet_policy(instance="g5.2xlarge"), book) == [
        "region us-east: no on-demand price for aws/us-east-1 g5.2xlarge: no such instance type there (it has g6e.xlarge)"
    ]
    assert check_fleets(fleet_policy(cloud="gcp", region="us-central1", instance="g2-standard-8"), book) == [
        f"region us-east: no {what} price for gcp/us-central1{inst}: the sheets have no cloud 'gcp' (they have aws)"
        for what, inst in (
            ("on-demand", " g2-standard-8"),
            ("internet egress", ""),
            ("inter-region egress", ""),
        )
    ]
