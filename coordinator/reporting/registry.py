"""Renderers for the registry kinds: attrition between lines and regimen pathways.

Shapes follow docs/results_extra.md and tolerate what the estimators add to
it: line labels such as ``"4+"`` (top-coded slot), more count arrays
(``reached``, ``started_anti_her2``), more definitions (``reach``), group
levels such as countries, and every end state as a pathway terminal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.reporting import fmt, plots, stats
from coordinator.reporting.fmt import esc, fnum
from coordinator.reporting.markup import (
    Cell,
    CellLike,
    Ctx,
    as_dict,
    as_list,
    figure,
    h3,
    het_text,
    note,
    site_label,
    table,
    withheld,
)
from coordinator.reporting.svg import style

END_STATES: dict[str, tuple[str, str, bool]] = {
    # name: (label, colour, dark background); drawing order of the funnel
    "next_line": ("next line", "#0072B2", True),
    "on_treatment": ("still on treatment", "#56B4E9", False),
    "off_treatment_follow_up": ("off treatment, in follow-up", "#009E73", True),
    "death": ("death", "#333333", True),
    "palliative": ("end-of-life palliative care", "#CC79A7", False),
    "lost_to_follow_up": ("lost to follow-up", "#E69F00", False),
    "other": ("other", "#BBBBBB", False),
}
COUNT_ROWS = (
    ("started", "started line"),
    ("finished", "finished line (not still on treatment)"),
    ("no_next", "no next line"),
    ("no_next_finished", "finished, no next line"),
    ("no_next_death_6m", "no next line and death within 6 months"),
)
DEFAULT_DEFS = {
    "A1": "no next line / patients who started line k",
    "A2": "no next line / patients who finished line k (still on treatment removed)",
    "A3": "1 − cumulative incidence of next line at 5 years (death competing)",
    "A4": "no next line and death within 6 months of line end / patients whose line k ended",
}


def _est(v: Any) -> tuple[float | None, float | None, float | None]:
    d = as_dict(v)
    return fnum(d.get("estimate")), fnum(d.get("lower")), fnum(d.get("upper"))


def _pct_ci(v: Any) -> str:
    if as_dict(v).get("suppressed"):
        return fmt.SUPPRESSED
    e, lo, hi = _est(v)
    return fmt.est_ci(e, lo, hi, fmt.pct)


def _cnt(ctx: Ctx, v: Any) -> str:
    """A count cell: null means withheld by disclosure control."""
    return fmt.SUPPRESSED if v is None else ctx.count(v)


def _at(vals: Sequence[Any], i: int) -> Any:
    return vals[i] if i < len(vals) else None


# ---------------------------------------------------------------------------
# attrition


@dataclass(frozen=True)
class Entry:
    """One column of comparison: a pooled group or a site's release."""

    key: str
    label: str
    data: Mapping[str, Any]
    pooled: bool


def render_attrition(ctx: Ctx, aid: str, entry: Mapping[str, Any]) -> str:
    pooled = as_dict(entry.get("pooled"))
    lines = [fmt.integer(x) if fmt.is_num(x) else str(x) for x in as_list(pooled.get("lines"))]
    groups = {str(g): as_dict(v) for g, v in as_dict(pooled.get("groups")).items()}
    defs = {
        **DEFAULT_DEFS,
        **{str(k): str(v) for k, v in as_dict(pooled.get("definitions")).items()},
    }
    def_keys = [k for k in defs if any(k in gd for gd in groups.values())]
    # figures compare the attrition definitions (A1..); other shares (e.g. reach) are tables only
    a_keys = [k for k in def_keys if re.fullmatch(r"A\d+", k)]
    parts = [
        table(
            ctx,
            "Attrition definitions, computed side by side on the same pooled data.",
            ["Definition", "Meaning"],
            [[Cell(k, num=False, bold=True), Cell(defs[k], num=False)] for k in def_keys],
        )
    ]
    if not groups or not lines:
        return "".join(parts) + note("No groups or lines in this result.")
    ref = "all" if "all" in groups else next(iter(groups))
    per_site_any = entry.get("per_site")
    per_site = per_site_any if isinstance(per_site_any, Mapping) else {}
    released = {str(s): as_dict(v) for s, v in per_site.items() if isinstance(v, Mapping)}
    entries = [Entry(f"group:{ref}", _group_name(ref, pooled=True), groups[ref], True)]
    entries += [
        Entry(f"group:{g}", _group_name(g), gd, False) for g, gd in groups.items() if g != ref
    ]
    entries += [
        Entry(
            f"site:{s}", site_label(ctx, s, sv), as_dict(as_dict(sv.get("groups")).get(ref)), False
        )
        for s, sv in released.items()
    ]
    if len(entries) > 1:
        parts.append(h3("Definitions side by side, pooled and per " + _compared(groups, released)))
        parts.append(_compare_tables(ctx, aid, entries, lines, def_keys, per_site))
        group_rows = [e for e in entries if e.key.startswith("group:") and not e.pooled]
        site_rows = [e for e in entries if e.key.startswith("site:")]
        for rows, what in ((group_rows, "group"), (site_rows, "site")):
            if rows and a_keys:
                parts.append(_compare_forest(ctx, aid, entries[0], rows, what, lines, a_keys))
    for i, (g, gd) in enumerate(groups.items()):
        parts.append(h3(_group_name(g, pooled=g == ref)))
        parts.append(_attrition_group(ctx, aid, g, gd, lines, def_keys, a_keys if i == 0 else []))
    return "".join(parts)


def _group_name(g: str, pooled: bool = False) -> str:
    if g == "all":
        return "All patients (pooled)"
    return f"Group {g}" + (" (pooled)" if pooled else "")


def _compared(groups: Mapping[str, Any], released: Mapping[str, Any]) -> str:
    what = []
    if len(groups) > 1:
        what.append("group")
    if released:
        what.append("site")
    return " and per ".join(what)


def _compare_tables(
    ctx: Ctx,
    aid: str,
    entries: Sequence[Entry],
    lines: Sequence[str],
    def_keys: Sequence[str],
    per_site: Mapping[str, Any],
) -> str:
    parts = []
    for i, k in enumerate(lines):
        rows: list[Sequence[CellLike]] = []
        for e in entries:
            row: list[CellLike] = [
                Cell(e.label, num=False, bold=e.pooled),
                Cell(
                    _cnt(ctx, _at(as_list(e.data.get("started")), i)), f"{aid}|{e.key}|started|{k}"
                ),
            ]
            row += [
                Cell(_pct_ci(_at(as_list(e.data.get(d)), i)), f"{aid}|{e.key}|{d}|{k}")
                for d in def_keys
            ]
            rows.append(row)
        if all(
            c.text in (fmt.NA, fmt.SUPPRESSED) for r in rows for c in r[2:] if isinstance(c, Cell)
        ):
            continue  # e.g. after the last line: nothing is defined
        parts.append(
            table(
                ctx,
                f"Attrition after line {k}, % (95% CI) ({aid}). "
                + (withheld(ctx, per_site) if per_site else ""),
                ["", Cell("Started"), *[Cell(d) for d in def_keys]],
                rows,
            )
        )
    return "".join(parts)


def _compare_forest(
    ctx: Ctx,
    aid: str,
    pooled: Entry,
    rows_in: Sequence[Entry],
    what: str,
    lines: Sequence[str],
    def_keys: Sequence[str],
) -> str:
    """Each definition after the first line across groups or sites, with heterogeneity."""
    i, k = 0, lines[0]
    blocks = []
    for d in def_keys:
        rows, ys, ses = [], [], []
        for e in rows_in:
            v = _at(as_list(e.data.get(d)), i)
            est, lo, hi = _est(v)
            se = stats.logit_se_from_ci(lo, hi, 0.95)
            if est is not None and 0 < est < 1 and se:
                ys.append(stats.logit(est))
                ses.append(se)
            rows.append(
                plots.ForestRow(
                    e.label,
                    _p100(est),
                    _p100(lo),
                    _p100(hi),
                    _pct_ci(v),
                    weight=1.0 / se**2 if se else None,
                )
            )
        v = _at(as_list(pooled.data.get(d)), i)
        est, lo, hi = _est(v)
        rows.append(
            plots.ForestRow(pooled.label, _p100(est), _p100(lo), _p100(hi), _pct_ci(v), pooled=True)
        )
        het = stats.heterogeneity(ys, ses)
        blocks.append(
            plots.ForestBlock(
                f"{d}: {DEFAULT_DEFS[d]}" if d in DEFAULT_DEFS else d,
                rows,
                het_text(het, "logit; SE from the CI", f"{what}s")
                if het
                else f"heterogeneity not computed (fewer than two {what}s with a CI)",
            )
        )
    svg_text = plots.forest_figure(
        ctx.ids,
        title=f"Attrition after line {k} per {what}: {aid}",
        desc=f"Attrition after line {k} per {what} under each definition with the pooled value.",
        blocks=blocks,
        log=False,
        ref=None,
        x_label=f"Attrition after line {k} (%)",
        est_header="% (95% CI)",
    )
    return figure(
        ctx,
        svg_text,
        f"Attrition after line {k} per {what} under each definition ({aid}); diamond: pooled "
        "estimate over all contributing sites. Cochran's Q and I² on the logit scale, standard "
        "errors recovered from each 95% CI.",
    )


def _p100(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _attrition_group(
    ctx: Ctx,
    aid: str,
    g: str,
    gd: Mapping[str, Any],
    lines: Sequence[str],
    def_keys: Sequence[str],
    dot_keys: Sequence[str],
) -> str:
    es = as_dict(gd.get("end_states"))
    started = as_list(gd.get("started"))
    segments = []
    names = [n for n in END_STATES if n in es] + [n for n in es if n not in END_STATES]
    for i in range(len(lines)):
        segs = []
        for name in names:
            label, colour, dark = END_STATES.get(name, (name.replace("_", " "), "#DDDDDD", False))
            segs.append(plots.Segment(name, label, fnum(_at(as_list(es[name]), i)), colour, dark))
        segments.append(segs)
    svg_funnel = plots.funnel_figure(
        ctx.ids,
        title=f"Attrition funnel: {aid}, {g}",
        desc="Patients starting each line, split by their state after the line.",
        lines=[f"Line {k}" for k in lines],
        started=[fnum(_at(started, i)) for i in range(len(lines))],
        started_text=[_cnt(ctx, _at(started, i)) for i in range(len(lines))],
        segments=segments,
        fmt_count=ctx.count,
    )
    parts = [
        figure(
            ctx,
            svg_funnel,
            f"Attrition funnel ({aid}, group {g}): bar length = patients who started the line; "
            "segments = state after the line; the shaded band carries patients with a next line "
            f"into the next bar. Counts below {ctx.min_cell} are shown as <{ctx.min_cell}; "
            "cells withheld by disclosure control are hatched.",
        )
    ]
    rows: list[Sequence[CellLike]] = []
    for key, label in COUNT_ROWS:
        if key in gd:
            vals = as_list(gd.get(key))
            rows.append(
                [Cell(label, num=False)]
                + [
                    Cell(_cnt(ctx, _at(vals, i)), f"{aid}|{g}|{key}|{k}")
                    for i, k in enumerate(lines)
                ]
            )
    handled = {k for k, _ in COUNT_ROWS} | {"end_states", *def_keys}
    for key, vals_any in gd.items():
        # count arrays added to the contract later (e.g. reached, started_anti_her2)
        vals = as_list(vals_any)
        if key in handled or len(vals) != len(lines):
            continue
        if not all(v is None or fmt.is_num(v) for v in vals):
            continue
        rows.append(
            [Cell(key.replace("_", " "), num=False)]
            + [Cell(_cnt(ctx, v), f"{aid}|{g}|{key}|{k}") for v, k in zip(vals, lines, strict=True)]
        )
    for name in names:
        vals = as_list(es[name])
        label = END_STATES.get(name, (name.replace("_", " "), "", False))[0]
        rows.append(
            [Cell(f"end state: {label}", num=False)]
            + [Cell(_cnt(ctx, _at(vals, i)), f"{aid}|{g}|{name}|{k}") for i, k in enumerate(lines)]
        )
    patients = gd.get("patients")
    extra = (
        f" The group has {ctx.count(patients)} patients, with or without a line."
        if fmt.is_num(patients)
        else ""
    )
    parts.append(
        table(
            ctx,
            f"Patients per line and end state after the line ({aid}, {g}); 'suppressed': cell "
            f"withheld by disclosure control.{extra}",
            ["", *[Cell(f"Line {k}") for k in lines]],
            rows,
        )
    )
    drows: list[Sequence[CellLike]] = [
        [Cell(d, num=False, bold=True)]
        + [
            Cell(_pct_ci(_at(as_list(gd.get(d)), i)), f"{aid}|{g}|{d}|{k}")
            for i, k in enumerate(lines)
        ]
        for d in def_keys
    ]
    parts.append(
        table(
            ctx,
            f"Attrition after each line, % (95% CI), by definition ({aid}, {g}). NA: not "
            "defined for the line (e.g. no later line in the study).",
            ["Definition", *[Cell(f"After line {k}") for k in lines]],
            drows,
        )
    )
    if dot_keys:
        parts.append(_dots(ctx, aid, g, gd, lines, dot_keys))
    return "".join(parts)


def _dots(
    ctx: Ctx, aid: str, g: str, gd: Mapping[str, Any], lines: Sequence[str], def_keys: Sequence[str]
) -> str:
    series = [
        plots.DotSeries(d, style(i), [_est(_at(as_list(gd.get(d)), j)) for j in range(len(lines))])
        for i, d in enumerate(def_keys)
    ]
    keep = [j for j in range(len(lines)) if any(s.points[j][0] is not None for s in series)]
    if not keep:
        return ""
    series = [plots.DotSeries(s.label, s.style, [s.points[j] for j in keep]) for s in series]
    svg_dots = plots.dots_figure(
        ctx.ids,
        title=f"Attrition definitions side by side: {aid}, {g}",
        desc="Share of patients without a next line after each line, by definition, with 95% CIs.",
        categories=[f"after line {lines[j]}" for j in keep],
        series=series,
        y_label="Percent of patients",
        percent=True,
    )
    return figure(
        ctx,
        svg_dots,
        f"The attrition definitions after each line ({aid}, {g}); bars: 95% CI. The "
        "definitions differ in their denominators and in how death and follow-up are handled, "
        "which explains much of the spread between published studies.",
    )


# ---------------------------------------------------------------------------
# pathways


def _flows(ctx: Ctx, pooled: Mapping[str, Any]) -> list[plots.Flow]:
    """Transitions; a flow below the minimum cell size is drawn like a suppressed one."""
    terminal = set(plots.TERMINAL_LABELS) | {str(t) for t in as_list(pooled.get("terminal_states"))}
    out = []
    for tr in as_list(pooled.get("transitions")):
        t = as_dict(tr)
        to = str(t.get("to"))
        cnt = None if t.get("suppressed") else fnum(t.get("count"))
        if fmt.is_small(cnt, ctx.min_cell):
            cnt = None
        fl = fnum(t.get("from_line"))
        if fl is None:
            continue
        out.append(plots.Flow(int(fl), str(t.get("from")), to, cnt, to in terminal))
    return out


def _raw_counts(pooled: Mapping[str, Any]) -> dict[tuple[int, str, str], Any]:
    out: dict[tuple[int, str, str], Any] = {}
    for tr in as_list(pooled.get("transitions")):
        t = as_dict(tr)
        fl = fnum(t.get("from_line"))
        if fl is not None:
            count = None if t.get("suppressed") else t.get("count")
            out[(int(fl), str(t.get("from")), str(t.get("to")))] = count
    return out


def _target_name(flow: plots.Flow) -> str:
    return plots.TERMINAL_LABELS.get(flow.target, flow.target) if flow.terminal else flow.target


def render_pathways(ctx: Ctx, aid: str, entry: Mapping[str, Any]) -> str:
    pooled = as_dict(entry.get("pooled"))
    flows = _flows(ctx, pooled)
    raw = _raw_counts(pooled)
    n_lines = int(fnum(pooled.get("lines")) or max((fl.from_line for fl in flows), default=1))
    regimens = [str(r) for r in as_list(pooled.get("regimens"))]
    parts = []
    if flows:
        svg_text = plots.sankey_figure(
            ctx.ids,
            title=f"Regimen sequences: {aid}",
            desc="Patients flowing from the regimen of one line to the regimen of the next line "
            "or to the state in which they ended without a next line.",
            n_lines=n_lines,
            regimens=regimens,
            flows=flows,
            fmt_count=ctx.count,
        )
        n_sup = sum(1 for fl in flows if fl.count is None)
        merged = [str(m) for m in as_list(pooled.get("merged_into_other"))]
        merged_text = f" Regimens merged into OTHER as rare: {', '.join(merged)}." if merged else ""
        parts.append(
            figure(
                ctx,
                svg_text,
                f"Regimen sequences across lines ({aid}). Band width proportional to the number "
                "of patients; blue bands lead to a next line, grey and black ones end the "
                f"sequence. {n_sup} flow(s) below the minimum cell size ({ctx.min_cell}) or "
                "withheld by disclosure control are not drawn: a dashed stub on a node marks "
                f"them (destinations in its tooltip and in the table); node sizes leave them "
                f"out.{merged_text}",
            )
        )
    # one row per regimen and line: where its patients went (a long list of pairs
    # would run to pages; the exact counts stay, each in its own keyed span)
    by_source: dict[tuple[int, str], list[plots.Flow]] = {}
    for fl in flows:
        by_source.setdefault((fl.from_line, fl.source), []).append(fl)
    order = {r: i for i, r in enumerate(regimens)}
    rows: list[Sequence[CellLike]] = []
    for (line, source), fls in sorted(
        by_source.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1])
    ):

        def listing(items: list[plots.Flow], line: int = line, source: str = source) -> Cell:
            items = sorted(items, key=lambda x: (-(x.count or 0.0), _target_name(x)))
            spans = []
            for x in items:
                value = raw.get((line, source, x.target))
                shown = fmt.SUPPRESSED if value is None else ctx.count(value)
                key = esc(f"{aid}|flow|{line}|{source}|{x.target}")
                spans.append(
                    f'<span class="pair">{esc(_target_name(x))} '
                    f'<span data-cell="{key}">{esc(shown)}</span></span>'
                )
            return Cell(" · ".join(spans) or "—", num=False, html=True)

        nexts = [x for x in fls if not x.terminal]
        ends = [x for x in fls if x.terminal]
        rows.append([Cell(str(line)), Cell(source, num=False), listing(nexts), listing(ends)])
    parts.append(
        table(
            ctx,
            f"Transitions after each line ({aid}): patients per next-line regimen and per state "
            f"without a next line. Counts below {ctx.min_cell} are shown as <{ctx.min_cell}; "
            "'suppressed': withheld by disclosure control.",
            [Cell("Line"), "Regimen", "Next line regimen (patients)", "No next line (patients)"],
            rows,
            cls="pathways",
        )
    )
    per_site = entry.get("per_site")
    if isinstance(per_site, Mapping) and per_site:
        parts.append(_pathways_per_site(ctx, aid, pooled, per_site, n_lines))
    return "".join(parts)


def _pathways_per_site(
    ctx: Ctx, aid: str, pooled: Mapping[str, Any], per_site: Mapping[str, Any], n_lines: int
) -> str:
    """Per site, where patients went after each line: next line, death, other end."""
    released = {str(s): as_dict(v) for s, v in per_site.items() if isinstance(v, Mapping)}
    sources = [("pooled", "Pooled (all sites)", pooled)] + [
        (s, site_label(ctx, s, v), v) for s, v in released.items()
    ]
    lines = sorted({fl.from_line for _, _, d in sources for fl in _flows(ctx, d)}) or [1]
    rows: list[Sequence[CellLike]] = []
    for key, label, d in sources:
        fls = _flows(ctx, d)
        row: list[CellLike] = [Cell(label, num=False, bold=key == "pooled")]
        for k in lines:
            at_k = [x for x in fls if x.from_line == k]
            for dest, pick in (
                ("next", [x for x in at_k if not x.terminal]),
                ("death", [x for x in at_k if x.terminal and x.target == "death"]),
                ("other", [x for x in at_k if x.terminal and x.target != "death"]),
            ):
                total = sum(x.count or 0.0 for x in pick)
                hidden = any(x.count is None for x in pick)
                text = ctx.count(total) + ("+" if hidden else "")
                row.append(Cell(text, f"{aid}|site_sum|{key}|{k}|{dest}"))
        rows.append(row)
    headers: list[CellLike] = ["Site"]
    for k in lines:
        headers += [Cell(f"L{k}: next line"), Cell(f"L{k}: death"), Cell(f"L{k}: other end")]
    return h3("Per site") + table(
        ctx,
        f"Patients leaving each line per site ({aid}), by destination; '+': some flows below "
        f"the minimum cell size or withheld are not included. " + withheld(ctx, per_site),
        headers,
        rows,
        cls="wide",
    )
