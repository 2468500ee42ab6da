"""The cost model's answer for people and machines: rich tables per scenario, every term's sum with its
price pages (--explain), the JSON document, and one stacked bar chart PNG over the scenarios.

The chart draws on its own Figure with the Agg canvas, never through pyplot (as chaos/report.py does), so
no display is needed; it is synchronous and slow: call it through asyncio.to_thread from async code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from controlplane.cost.report import Category, CostReport, Term

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}
_HEADS = {
    Category.RESERVED: "reserved",
    Category.ON_DEMAND: "on-demand",
    Category.SPOT: "spot",
    Category.EGRESS: "egress",
    Category.STORAGE: "storage",
    Category.WEIGHT_SYNC: "weight sync",
    Category.COMPLIANCE: "compliance",
}
# A colour per category that stays the same whatever the scenarios draw: a reader compares bars by colour.
COLOURS = {
    Category.RESERVED: "tab:blue",
    Category.ON_DEMAND: "tab:orange",
    Category.SPOT: "tab:green",
    Category.EGRESS: "tab:red",
    Category.STORAGE: "tab:purple",
    Category.WEIGHT_SYNC: "tab:brown",
    Category.COMPLIANCE: "tab:gray",
}
NONE = "-"  # a figure that does not exist (no tokens, so no cost per token), or exactly nothing


def money(amount: float, currency: str, *, cents: bool = False) -> str:
    """Whole units for the tables' monthly figures, cents where whole units would hide the figure or where
    the reader redoes the sum by hand (--explain)."""
    symbol = _SYMBOLS.get(currency)
    number = f"{amount:,.{2 if cents or abs(amount) < 10 else 0}f}"
    return f"{symbol}{number}" if symbol else f"{number} {currency}"


def per_mtok(amount: float | None, currency: str) -> str:
    if amount is None:
        return NONE
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{amount:,.4f}" if symbol else f"{amount:,.4f} {currency}"


def tokens(count: float) -> str:
    """A monthly token count as a person reads it: 1.23B, 456.0M, 12.3k."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f}{unit}"
    return f"{count:.0f}"


def _cell(amount: float, currency: str) -> str:
    return money(amount, currency) if amount else NONE


def _mtok(cost: float, count: float) -> float | None:
    return cost / (count / 1e6) if count > 0 else None


def region_table(report: CostReport) -> Table:
    """A row per region: its monthly cost per category, total, tokens served and cost per 1M tokens; then
    the scenario's total row."""
    c = report.currency
    table = Table(title=f"{report.scenario}: monthly cost ({c})", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("region")
    for category in Category:
        table.add_column(_HEADS[category], justify="right")
    for head in ("total", "tokens", "per 1M tok", "peak inst"):
        table.add_column(head, justify="right")
    for r in report.regions:
        by = r.by_category
        table.add_row(
            r.region,
            *(_cell(by[k], c) for k in Category),
            money(r.total, c),
            tokens(r.tokens),
            per_mtok(_mtok(r.total, r.tokens), c),
            str(r.instances_peak),
        )
    by = report.by_category
    table.add_section()
    table.add_row(
        "total",
        *(_cell(by[k], c) for k in Category),
        money(report.total, c),
        tokens(report.tokens),
        per_mtok(report.per_mtok, c),
        "",  # regions peak at different hours: a sum of their peaks is no peak
        style="bold",
    )
    return table


def group_table(report: CostReport) -> Table:
    c = report.currency
    table = Table(title=f"{report.scenario}: per client group", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("group")
    for head in ("tokens", "per month", "per 1M tok"):
        table.add_column(head, justify="right")
    table.add_column("served in")
    for g in report.groups:
        served = ", ".join(f"{region} {share:.0%}" for region, share in g.regions.items() if share > 0)
        table.add_row(
            g.group, tokens(g.tokens), money(g.cost, c), per_mtok(g.per_mtok, c), served or "unserved"
        )
    return table


def notes(report: CostReport) -> Text:
    """What the tables cannot carry: idle regions' cost, which no group pays for, and the warnings."""
    text = Text()
    idle = [r.region for r in report.regions if r.tokens <= 0]
    if idle:
        text.append(
            f"idle: {money(report.idle, report.currency)} a month on regions serving no tokens "
            f"({', '.join(idle)}), in no group's figure\n"
        )
    for warning in report.warnings:
        text.append("warning: ", style="bold yellow")
        text.append(f"{warning}\n")
    text.rstrip()
    return text


def explain(report: CostReport) -> Group:
    """Every term of every region's sum with its formula, and the price pages they came from, numbered."""
    sources: dict[str, int] = {}
    c = report.currency
    table = Table(
        title=f"{report.scenario}: how each figure was made", box=box.SIMPLE_HEAD, title_justify="left"
    )
    for head in ("region", "category", "term"):
        table.add_column(head)
    table.add_column("amount", justify="right")
    table.add_column("formula")
    table.add_column("src")
    for r in report.regions:
        for i, term in enumerate(r.terms):
            table.add_row(
                r.region if i == 0 else "",
                _HEADS[term.category],
                term.label,
                money(term.amount, c, cents=True),
                term.formula,
                _footnotes(term, sources),
            )
        table.add_row(
            "", "", "", Text(money(r.total, c, cents=True), style="bold"), f"= {r.region} total", ""
        )
        table.add_section()
    pages = Text("\n".join(f"[{n}] {source}" for source, n in sources.items()))
    return Group(table, pages)


def _footnotes(term: Term, sources: dict[str, int]) -> str:
    return ",".join(str(sources.setdefault(s, len(sources) + 1)) for s in term.sources)


def render(reports: Sequence[CostReport], console: Console, *, explain_terms: bool = False) -> None:
    for report in reports:
        parts: list[RenderableType] = [region_table(report)]
        if report.groups:
            parts.append(group_table(report))
        if extra := notes(report):
            parts.append(extra)
        if explain_terms:
            parts.append(explain(report))
        console.print(*parts)
        console.print()


def to_json(reports: Sequence[CostReport]) -> dict[str, Any]:
    return {
        "currency": reports[0].currency if reports else None,
        "scenarios": [r.to_json() for r in reports],
    }


def chart(reports: Sequence[CostReport]) -> Figure:
    """A bar per scenario, its categories stacked in Category order, the total written above each bar."""
    figure = Figure(figsize=(max(5.0, 1.3 * len(reports) + 2.5), 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    names = [str(r.scenario) for r in reports]
    below = [0.0] * len(reports)
    for category in Category:
        heights = [r.by_category[category] for r in reports]
        if not any(heights):
            continue  # a category no scenario has would only clutter the legend
        ax.bar(names, heights, bottom=below, color=COLOURS[category], label=_HEADS[category])
        below = [b + h for b, h in zip(below, heights, strict=True)]
    currency = reports[0].currency if reports else ""
    for x, report in enumerate(reports):
        ax.annotate(
            money(report.total, currency),
            (x, report.total),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel(f"{currency} per month")
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_title("Monthly cost per scenario")
    ax.margins(y=0.12)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def write_chart(reports: Sequence[CostReport], path: Path) -> None:
    chart(reports).savefig(path)
