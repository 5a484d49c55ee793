"""HTML fragments: tables, figures, notes, and the per-render context.

Every cell that shows a number from ``results.json`` can carry a
``data-cell`` key, so a test can find the exact cell and compare it with
the formatted value from the results document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from coordinator.reporting import fmt, stats
from coordinator.reporting.fmt import esc
from coordinator.reporting.svg import Ids


@dataclass
class Ctx:
    """State of one rendering: ids, figure/table numbers and the disclosure threshold."""

    min_cell: int = 5
    countries: dict[str, str] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)  # contributing sites
    ids: Ids = field(default_factory=Ids)
    n_fig: int = 0
    n_tab: int = 0

    def count(self, value: object) -> str:
        return fmt.count(value, self.min_cell)

    def site_label(self, site: str) -> str:
        c = self.countries.get(site)
        return f"{site} ({c})" if c else site


@dataclass(frozen=True)
class Cell:
    text: str
    key: str | None = None
    num: bool = True
    bold: bool = False
    html: bool = False  # text is already markup (never data from the document)


CellLike = Cell | str


def _cell(c: CellLike, tag: str) -> str:
    if isinstance(c, str):
        c = Cell(c, num=False)
    cls = ' class="num"' if c.num else ""
    key = f' data-cell="{esc(c.key)}"' if c.key else ""
    body = c.text if c.html else esc(c.text)
    if c.bold:
        body = f"<strong>{body}</strong>"
    return f"<{tag}{cls}{key}>{body}</{tag}>"


def table(
    ctx: Ctx,
    caption: str,
    headers: Sequence[CellLike],
    rows: Sequence[Sequence[CellLike]],
    *,
    cls: str = "",
) -> str:
    ctx.n_tab += 1
    head = "".join(_cell(h, "th") for h in headers)
    body = "".join("<tr>" + "".join(_cell(c, "td") for c in r) + "</tr>" for r in rows)
    klass = f' class="{cls}"' if cls else ""
    return (
        f"<table{klass}><caption>Table {ctx.n_tab}. {esc(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def kv_table(ctx: Ctx, caption: str, items: Sequence[tuple[str, CellLike]]) -> str:
    ctx.n_tab += 1
    # values of a key/value table read as text, left-aligned next to their key
    cells = [replace(v, num=False) if isinstance(v, Cell) else v for _, v in items]
    rows = "".join(
        f"<tr><th>{esc(k)}</th>{_cell(v, 'td')}</tr>"
        for (k, _), v in zip(items, cells, strict=True)
    )
    return (
        f'<table class="kv"><caption>Table {ctx.n_tab}. {esc(caption)}</caption>'
        f"<tbody>{rows}</tbody></table>"
    )


def figure(ctx: Ctx, svg_text: str, caption: str) -> str:
    ctx.n_fig += 1
    return (
        f'<figure class="chart">{svg_text}<figcaption><strong>Figure {ctx.n_fig}.</strong> '
        f"{esc(caption)}</figcaption></figure>"
    )


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def h3(text: str) -> str:
    return f"<h3>{esc(text)}</h3>"


# ---------------------------------------------------------------------------
# reading results.json defensively, and wording shared by the sections


def as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else []


def as_dict(v: Any) -> dict[str, Any]:
    return dict(v) if isinstance(v, Mapping) else {}


def site_label(ctx: Ctx, site: str, sv: Mapping[str, Any]) -> str:
    c = sv.get("country") or ctx.countries.get(site)
    return f"{site} ({c})" if c else site


def withheld(ctx: Ctx, per_site: Mapping[str, Any]) -> str:
    """Sites that contributed to the pooled estimate but released nothing per site."""
    missing = [s for s in ctx.sites if not isinstance(per_site.get(s), Mapping)]
    missing += [s for s, v in per_site.items() if not isinstance(v, Mapping) and s not in missing]
    if not missing:
        return ""
    return "No per-site release from: " + ", ".join(ctx.site_label(s) for s in missing) + "."


def het_text(het: stats.Heterogeneity, scale: str, unit: str = "sites") -> str:
    return (
        f"Heterogeneity ({scale}): Cochran's Q = {fmt.stat(het.q)} on {het.df} df, "
        f"p = {fmt.pval(het.p)}; I² = {fmt.num(100 * het.i2, '.0f')}% ({het.k} {unit})"
    )
