"""The cost model's answer as people and machines read it, on hand-built reports: tables, --explain, JSON,
the stacked bar chart."""

from __future__ import annotations

import io
import itertools
import json
import struct
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle
from rich.console import Console

from controlplane.cost.report import (
    Category,
    CostReport,
    GroupCost,
    RegionCost,
    Scenario,
    ScenarioKind,
    Term,
)
from controlplane.cost.view import COLOURS, chart, money, render, to_json, tokens, write_chart

EC2 = "https://aws.amazon.com/ec2/pricing/on-demand/ (2026-11-01)"
S3 = "https://aws.amazon.com/s3/pricing/ (2026-11-01)"
EU = "https://example.eu/residency (2026-11-01)"
NORMAL = Scenario(ScenarioKind.NORMAL)
DOWN = Scenario(ScenarioKind.REGION_DOWN, "us-east")


def report(scenario: Scenario = NORMAL, on_demand: float = 1234.5, currency: str = "USD") -> CostReport:
    us_east = RegionCost(
        "us-east",
        (
            Term(Category.RESERVED, "reserved g6e.xlarge", 1711.12, "2 inst x 730 h x $1.1720/h", (EC2,)),
            Term(Category.ON_DEMAND, "on-demand g6e.xlarge", on_demand, "663.4 inst-h x $1.8610/h", (EC2,)),
            Term(Category.EGRESS, "egress to the internet", 57.6, "640 GB x $0.0900/GB", (EC2,)),
            Term(Category.STORAGE, "weights llama-8b", 0.74, "16 GB x 2 versions x $0.0230/GB-month", (S3,)),
        ),
        tokens=2.5e9,
        instances_peak=4,
    )
    eu_west = RegionCost(
        "eu-west",
        (
            Term(Category.RESERVED, "reserved g6e.xlarge", 900.0, "1 inst x 730 h x $1.2329/h", (EC2,)),
            Term(Category.COMPLIANCE, "EU", 1250.0, "$2,500/month / 2 regions", (EU,)),
        ),
        tokens=0.0,
        instances_peak=1,
    )
    eu_central = RegionCost(
        "eu-central",
        (Term(Category.SPOT, "spot g6e.xlarge", 400.0, "500 inst-h x $0.8000/h", (EC2,)),),
        tokens=5e8,
        instances_peak=2,
    )
    groups = (
        GroupCost("global", 2.5e9, us_east.total, {"us-east": 1.0}),
        GroupCost("eu", 5e8, eu_central.total, {"eu-central": 1.0, "eu-west": 0.0}),
        GroupCost("batch", 0.0, 0.0, {}),
    )
    return CostReport(
        scenario, currency, (us_east, eu_west, eu_central), groups, ("group batch: no allowed region alive",)
    )


def shown(*reports: CostReport, explain: bool = False) -> str:
    out = io.StringIO()
    render(reports, Console(file=out, width=250, color_system=None), explain_terms=explain)
    return out.getvalue()


def row(text: str, first: str) -> list[str]:
    """The cells of the table row starting with `first` (no cell of these reports holds a space)."""
    found = [line.split() for line in text.splitlines() if line.split()[:1] == [first]]
    assert len(found) == 1, f"{first!r} starts {len(found)} rows in\n{text}"
    return found[0]


def test_a_row_per_region_with_each_category_in_its_column_then_total_tokens_and_cost_per_1m_tokens() -> None:
    text = shown(report())
    head = "reserved on-demand spot egress storage weight sync compliance total tokens per 1M tok peak inst"
    assert " ".join(next(line for line in text.splitlines() if "reserved" in line).split()[1:]) == head
    # us-east: 1711.12 + 1234.5 + 57.6 + 0.74 = 3003.96 over 2,500M tokens
    assert row(text, "us-east") == [
        "us-east", "$1,711", "$1,234", "-", "$58", "$0.74", "-", "-", "$3,004", "2.50B", "$1.2016", "4",
    ]  # fmt: skip
    # A region serving nothing has no cost per token, whatever it costs.
    assert row(text, "eu-west") == [
        "eu-west",
        "$900",
        "-",
        "-",
        "-",
        "-",
        "-",
        "$1,250",
        "$2,150",
        "0",
        "-",
        "1",
    ]
    assert row(text, "eu-central")[3] == "$400"
    # 3003.96 + 2150 + 400 = 5553.96 over 3,000M tokens; no peak: regions peak at different hours.
    assert row(text, "total") == [
        "total", "$2,611", "$1,234", "$400", "$58", "$0.74", "-", "$1,250", "$5,554", "3.00B", "$1.8513",
    ]  # fmt: skip


def test_per_group_rows_carry_their_tokens_cost_and_where_they_are_served() -> None:
    text = shown(report())
    assert row(text, "global") == ["global", "2.50B", "$3,004", "$1.2016", "us-east", "100%"]
    # A region at share 0 is not where the group is served.
    assert row(text, "eu") == ["eu", "500.00M", "$400", "$0.8000", "eu-central", "100%"]
    assert row(text, "batch") == ["batch", "0", "$0.00", "-", "unserved"]


def test_idle_cost_and_warnings_follow_the_tables() -> None:
    text = shown(report())
    assert "idle: $2,150 a month on regions serving no tokens (eu-west), in no group's figure" in text
    assert "warning: group batch: no allowed region alive" in text
    busy = CostReport(NORMAL, "USD", report().regions[:1], ())
    assert "idle" not in shown(busy)
    assert "warning" not in shown(busy)


def test_every_scenario_gets_its_own_tables_in_the_order_given() -> None:
    text = shown(report(), report(DOWN, on_demand=3000.0))
    first, second = text.index("normal: monthly cost (USD)"), text.index("region-down:us-east: monthly cost")
    assert first < second
    assert row(text[second:], "us-east")[2] == "$3,000"
    assert "how each figure was made" not in text


def test_explain_shows_every_term_with_cents_its_formula_and_numbered_price_pages() -> None:
    text = shown(report(), explain=True)
    how = text[text.index("normal: how each figure was made") :]
    assert row(how, "us-east") == [
        "us-east", "reserved", "reserved", "g6e.xlarge", "$1,711.12", "2", "inst", "x", "730", "h", "x",
        "$1.1720/h", "1",
    ]  # fmt: skip
    # A term's line ends with its formula's last operand, then the numbers of its price pages.
    terms = [line.split() for line in how.splitlines() if "$" in line and "=" not in line]
    assert {cells[-2]: cells[-1] for cells in terms} == {
        "$1.1720/h": "1", "$1.8610/h": "1", "$0.0900/GB": "1", "$0.0230/GB-month": "2", "$1.2329/h": "1",
        "regions": "3", "$0.8000/h": "1",
    }  # fmt: skip
    assert row(how, "$3,003.96") == ["$3,003.96", "=", "us-east", "total"]
    # Each page once, numbered in order of first use, whatever number of terms cite it.
    assert [line.strip() for line in how.splitlines() if line.startswith("[")] == [
        f"[1] {EC2}",
        f"[2] {S3}",
        f"[3] {EU}",
    ]


def test_json_is_the_currency_and_each_reports_own_json() -> None:
    reports = [report(), report(DOWN)]
    data = json.loads(json.dumps(to_json(reports)))
    assert data == {"currency": "USD", "scenarios": [r.to_json() for r in reports]}
    assert [s["scenario"] for s in data["scenarios"]] == ["normal", "region-down:us-east"]


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (1234.5, "USD", "$1,234"),
        (9.999, "USD", "$10.00"),
        (0.5, "EUR", "€0.50"),
        (12_000, "CHF", "12,000 CHF"),
    ],
)
def test_money_in_whole_units_unless_that_hides_the_figure(amount: float, currency: str, text: str) -> None:
    assert money(amount, currency) == text


def test_token_counts_read_as_people_say_them() -> None:
    assert [tokens(n) for n in (0, 999, 12_300, 4.5e8, 3.2e9, 2e12)] == [
        "0", "999", "12.30k", "450.00M", "3.20B", "2.00T",
    ]  # fmt: skip


def test_the_chart_stacks_each_scenarios_categories_to_its_total_a_colour_per_category() -> None:
    reports = [report(), report(DOWN, on_demand=3000.0)]
    figure = chart(reports)
    (ax,) = figure.axes
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    for x, r in enumerate(reports):
        mine = sorted((b for b in bars if round(b.get_x() + b.get_width() / 2) == x), key=lambda b: b.get_y())
        assert sum(b.get_height() for b in mine) == pytest.approx(r.total)
        # Stacked in Category order, each on the one below, coloured by its category.
        drawn = [k for k in Category if any(each.by_category[k] for each in reports)]
        assert [b.get_height() for b in mine] == pytest.approx([r.by_category[k] for k in drawn])
        assert [b.get_facecolor() for b in mine] == [to_rgba(COLOURS[k]) for k in drawn]
        assert all(
            a.get_y() + a.get_height() == pytest.approx(b.get_y()) for a, b in itertools.pairwise(mine)
        )
    # Weight sync is in no report: not in the legend either.
    assert ax.get_legend_handles_labels()[1] == [
        "reserved", "on-demand", "spot", "egress", "storage", "compliance",
    ]  # fmt: skip
    assert [t.get_text() for t in ax.texts] == ["$5,554", "$7,319"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["normal", "region-down:us-east"]


def test_the_chart_is_a_small_png(tmp_path: Path) -> None:
    path = tmp_path / "cost.png"
    write_chart([report(), report(DOWN), report(Scenario(ScenarioKind.SPOT_LOSS, "eu-central"))], path)
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (640, 450)
    assert 5_000 < len(png) < 150_000
