"""One renderer per analysis kind: figures and tables from a ``results.json`` entry.

Renderers read the shapes of DESIGN.md and docs/results_extra.md and never
assume a field is present beyond what those contracts promise: a null number
is written NA, a suppressed cell ``suppressed`` and a count below the
policy's minimum cell size ``<min_cell``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from coordinator.reporting import fmt, plots, stats
from coordinator.reporting.fmt import DAYS_PER_MONTH, fnum
from coordinator.reporting.markup import (
    Cell,
    CellLike,
    Ctx,
    as_dict,
    as_list,
    figure,
    h3,
    het_text,
    kv_table,
    note,
    site_label,
    table,
    withheld,
)
from coordinator.reporting.svg import style

X_LABEL = "Time (months; 1 month = 30.4375 days)"


def _glabel(pooled: Mapping[str, Any], g: str) -> str:
    """'line = 2' rather than '2' when the results name the grouping column."""
    by = pooled.get("by")
    col = by.get("column") if isinstance(by, Mapping) else by
    return f"{col} = {g}" if isinstance(col, str) and col and g != "all" else g


def _risk_title(pooled: Mapping[str, Any]) -> str:
    """Risk-table rows carry the bare level (short); the title names the grouping column."""
    by = pooled.get("by")
    col = by.get("column") if isinstance(by, Mapping) else by
    return f"Number at risk, by {col}" if isinstance(col, str) and col else "Number at risk"


def _max_days(curves: Mapping[str, Any]) -> float:
    last = [fnum(as_list(c.get("time"))[-1]) for c in curves.values() if as_list(c.get("time"))]
    return max((v for v in last if v is not None), default=30.0)


def _mkey(m: float) -> str:
    return f"{m:g}"


def _dropped_note(pooled: Mapping[str, Any]) -> str:
    n = fnum(pooled.get("n_dropped"))
    if n:
        return note(f"{fmt.integer(n)} row(s) with a missing value were dropped (complete cases).")
    return ""


def _log_band(
    value: Sequence[Any], se: Sequence[Any], z: float, cap: float | None
) -> tuple[list[float | None], list[float | None]]:
    """Pointwise log-transformed interval v·exp(±z·se/v), as R's default for these curves."""
    lo: list[float | None] = []
    hi: list[float | None] = []
    for v, s in zip(value, se, strict=False):
        fv, fs = fnum(v), fnum(s)
        if fv is None or fs is None:
            lo.append(None)
            hi.append(None)
        elif fv <= 0:
            lo.append(0.0)
            hi.append(0.0)
        else:
            k = math.exp(z * fs / fv)
            lo.append(fv / k)
            up = fv * k
            hi.append(min(up, cap) if cap is not None else up)
    return lo, hi


def _risk_rows(
    ctx: Ctx,
    aid: str,
    curves: Mapping[str, Any],
    ticks: Sequence[float],
    events_of: Callable[[Mapping[str, Any]], list[Any]],
) -> list[plots.RiskRow]:
    rows = []
    for i, (g, c) in enumerate(curves.items()):
        censor = c.get("n_censor")
        cells, keys = [], []
        for m in ticks:
            v = stats.at_risk_at(
                as_list(c.get("time")),
                as_list(c.get("n_risk")),
                events_of(c),
                as_list(censor) if censor is not None else None,
                stats.months_to_days(m),
            )
            cells.append(ctx.count(v))
            keys.append(f"{aid}|risk|{g}|{_mkey(m)}")
        rows.append(plots.RiskRow(g, style(i), cells, keys))
    return rows


def _risk_caption(ctx: Ctx) -> str:
    return (
        "Number at risk at each tick: n at risk at the first released time at or after the "
        "tick (as R's summary.survfit(times=)); counts below the minimum cell size "
        f"({ctx.min_cell}) are shown as <{ctx.min_cell}."
    )


# ---------------------------------------------------------------------------
# km


def render_km(ctx: Ctx, aid: str, entry: Mapping[str, Any]) -> str:
    pooled = as_dict(entry.get("pooled"))
    groups = {str(k): as_dict(v) for k, v in as_dict(pooled.get("groups")).items()}
    if not groups:
        return note("No groups in this result.")
    out = [_km_body(ctx, aid, groups, pooled)]
    out.append(_dropped_note(pooled))
    per_site = entry.get("per_site")
    if isinstance(per_site, Mapping) and per_site:
        out.append(_km_per_site(ctx, aid, groups, per_site))
    return "".join(out)


def _km_body(ctx: Ctx, aid: str, groups: Mapping[str, Any], pooled: Mapping[str, Any]) -> str:
    first = next(iter(groups.values()))
    level = fnum(first.get("conf_level")) or 0.95
    conf_type = str(first.get("conf_type", "log"))
    max_m = _max_days(groups) / DAYS_PER_MONTH
    ticks, _ = stats.month_ticks(max_m)
    curves = [
        plots.Curve(
            label=_glabel(pooled, g),
            style=style(i),
            time=as_list(c.get("time")),
            value=as_list(c.get("surv")),
            lower=as_list(c.get("lower")),
            upper=as_list(c.get("upper")),
            start=1.0,
            censor_times=[
                float(t)
                for t, n in zip(as_list(c.get("time")), as_list(c.get("n_censor")), strict=False)
                if fnum(t) is not None and (fnum(n) or 0) > 0
            ],
            median=fnum(c.get("median")),
        )
        for i, (g, c) in enumerate(groups.items())
    ]
    names = ", ".join(groups)
    svg_text = plots.curve_figure(
        ctx.ids,
        title=f"Kaplan-Meier curves: {aid}",
        desc=f"Survival probability over time for {names}, with confidence bands and the "
        "number at risk below the plot.",
        curves=curves,
        y_label="Survival probability",
        x_label=X_LABEL,
        ticks=ticks,
        max_months=max_m,
        y_max=1.0,
        risk_title=_risk_title(pooled),
        risk_rows=_risk_rows(ctx, aid, groups, ticks, lambda c: as_list(c.get("n_event"))),
        median_lines=True,
    )
    parts = [
        figure(
            ctx,
            svg_text,
            f"Kaplan-Meier estimates ({aid}) by group: {names}. Shaded: pointwise "
            f"{level * 100:g}% confidence band ({conf_type} transformation); vertical ticks: "
            "censoring; dotted lines: medians. " + _risk_caption(ctx),
        )
    ]
    rows: list[list[CellLike]] = []
    qkeys = sorted(
        {q for c in groups.values() for q in as_dict(c.get("quantiles")) if fnum(float(q)) != 0.5},
        key=float,
    )
    for g, c in groups.items():
        n_risk, n_event = as_list(c.get("n_risk")), as_list(c.get("n_event"))
        n = n_risk[0] if n_risk else 0
        events = sum(fnum(e) or 0.0 for e in n_event)
        row: list[CellLike] = [
            Cell(_glabel(pooled, g), num=False),
            Cell(ctx.count(n), f"{aid}|n|{g}"),
            Cell(ctx.count(events), f"{aid}|events|{g}"),
            Cell(fmt.months(c.get("median")), f"{aid}|median|{g}"),
            Cell(
                fmt.interval(c.get("median_lower"), c.get("median_upper"), fmt.months),
                f"{aid}|median_ci|{g}",
            ),
        ]
        for q in qkeys:
            qd = as_dict(as_dict(c.get("quantiles")).get(q))
            row.append(
                Cell(
                    fmt.est_ci(qd.get("time"), qd.get("lower"), qd.get("upper"), fmt.months),
                    f"{aid}|q{q}|{g}",
                )
            )
        rows.append(row)
    pct = f"{level * 100:g}%"
    headers: list[CellLike] = [
        "Group",
        Cell("n"),
        Cell("Events"),
        Cell("Median (months)"),
        Cell(f"{pct} CI"),
    ]
    headers += [Cell(f"{float(q) * 100:g}th percentile ({pct} CI)") for q in qkeys]
    parts.append(
        table(
            ctx,
            f"Median survival time in months with {pct} CI ({aid}). NA: not reached or not "
            "estimable. Percentiles are times by which that share of patients had the event.",
            headers,
            rows,
        )
    )
    marks = stats.landmarks(max_m)
    if marks:
        lrows: list[list[CellLike]] = []
        for g, c in groups.items():
            time = as_list(c.get("time"))
            lrow: list[CellLike] = [Cell(_glabel(pooled, g), num=False)]
            for m in marks:
                t = stats.months_to_days(m)
                s = stats.value_at(time, as_list(c.get("surv")), t, 1.0)
                lo = stats.value_at(time, as_list(c.get("lower")), t, 1.0)
                hi = stats.value_at(time, as_list(c.get("upper")), t, 1.0)
                lrow.append(Cell(fmt.est_ci(s, lo, hi, fmt.prob), f"{aid}|S|{g}|{_mkey(m)}"))
            lrows.append(lrow)
        parts.append(
            table(
                ctx,
                f"Survival probability ({pct} CI) at landmark times ({aid}); NA beyond the "
                "last follow-up time of a group.",
                ["Group", *[Cell(f"{fmt.num(m, 'g')} months") for m in marks]],
                lrows,
            )
        )
    return "".join(parts)


def _km_per_site(ctx: Ctx, aid: str, groups: Mapping[str, Any], per_site: Mapping[str, Any]) -> str:
    blocks = []
    released = {s: as_dict(v) for s, v in per_site.items() if isinstance(v, Mapping)}
    for g, c in groups.items():
        level = fnum(c.get("conf_level")) or 0.95
        rows, ys, ses = [], [], []
        for site, sv in released.items():
            sc = as_dict(as_dict(sv.get("groups")).get(g))
            med, lo, hi = (fnum(sc.get(k)) for k in ("median", "median_lower", "median_upper"))
            se = stats.log_se_from_ci(lo, hi, level)
            if med is not None and med > 0 and se is not None:
                ys.append(math.log(med))
                ses.append(se)
            rows.append(
                plots.ForestRow(
                    label=site_label(ctx, site, sv),
                    est=_m(med),
                    lo=_m(lo),
                    hi=_m(hi),
                    text=fmt.est_ci(med, lo, hi, fmt.months),
                    weight=1.0 / se**2 if se else None,
                    key=f"{aid}|site_median|{site}|{g}",
                )
            )
        med, lo, hi = (fnum(c.get(k)) for k in ("median", "median_lower", "median_upper"))
        rows.append(
            plots.ForestRow(
                "Pooled (federated)",
                _m(med),
                _m(lo),
                _m(hi),
                fmt.est_ci(med, lo, hi, fmt.months),
                pooled=True,
                key=f"{aid}|site_median|pooled|{g}",
            )
        )
        het = stats.heterogeneity(ys, ses)
        blocks.append(
            plots.ForestBlock(
                f"Group {g}",
                rows,
                het_text(het, "log median; SE from the CI")
                if het
                else "heterogeneity not computed: fewer than two sites with a finite CI",
            )
        )
    svg_text = plots.forest_figure(
        ctx.ids,
        title=f"Per-site medians: {aid}",
        desc="Median survival per site with confidence intervals and the pooled median.",
        blocks=blocks,
        log=False,
        ref=None,
        x_label="Median (months)",
        est_header="Median (95% CI), months",
    )
    return h3("Per site") + figure(
        ctx,
        svg_text,
        f"Median survival per site ({aid}) and the federated pooled median (diamond). "
        "Cochran's Q and I² are computed on log medians around their inverse-variance mean, "
        "with standard errors recovered from each CI (an approximation: median CIs are not "
        "Wald intervals). An arrow: CI bound not reached. " + withheld(ctx, per_site),
    )


def _m(days: float | None) -> float | None:
    return None if days is None else days / DAYS_PER_MONTH


# ---------------------------------------------------------------------------
# nelson_aalen


def render_nelson_aalen(ctx: Ctx, aid: str, entry: Mapping[str, Any]) -> str:
    pooled = as_dict(entry.get("pooled"))
    groups = {str(k): as_dict(v) for k, v in as_dict(pooled.get("groups")).items()}
    if not groups:
        return note("No groups in this result.")
    z = stats.z_value(0.95)
    max_m = _max_days(groups) / DAYS_PER_MONTH
    ticks, _ = stats.month_ticks(max_m)
    curves = []
    for i, (g, c) in enumerate(groups.items()):
        lo, hi = _log_band(as_list(c.get("cumhaz")), as_list(c.get("std_err")), z, None)
        curves.append(
            plots.Curve(
                _glabel(pooled, g),
                style(i),
                as_list(c.get("time")),
                as_list(c.get("cumhaz")),
                lo,
                hi,
                0.0,
            )
        )
    svg_text = plots.curve_figure(
        ctx.ids,
        title=f"Nelson-Aalen cumulative hazard: {aid}",
        desc="Cumulative hazard over time with a 95% confidence band and the number at risk.",
        curves=curves,
        y_label="Cumulative hazard",
        x_label=X_LABEL,
        ticks=ticks,
        max_months=max_m,
        risk_title=_risk_title(pooled),
        risk_rows=_risk_rows(ctx, aid, groups, ticks, lambda c: as_list(c.get("n_event"))),
    )
    parts = [
        figure(
            ctx,
            svg_text,
            f"Nelson-Aalen cumulative hazard ({aid}). Shaded: pointwise 95% band "
            "H·exp(±1.96·SE/H). " + _risk_caption(ctx) + " NA: after the last released time "
            "(these rows carry no censoring counts).",
        )
    ]
    marks = stats.landmarks(max_m)
    rows: list[list[CellLike]] = []
    for g, c in groups.items():
        time = as_list(c.get("time"))
        n_risk = as_list(c.get("n_risk"))
        row: list[CellLike] = [
            Cell(_glabel(pooled, g), num=False),
            Cell(ctx.count(n_risk[0] if n_risk else 0), f"{aid}|n|{g}"),
            Cell(
                ctx.count(sum(fnum(e) or 0 for e in as_list(c.get("n_event")))), f"{aid}|events|{g}"
            ),
        ]
        for m in marks:
            t = stats.months_to_days(m)
            h = stats.value_at(time, as_list(c.get("cumhaz")), t, 0.0)
            se = stats.value_at(time, as_list(c.get("std_err")), t, 0.0)
            row.append(
                Cell(f"{fmt.num(h, '.3f')} ({fmt.num(se, '.3f')})", f"{aid}|H|{g}|{_mkey(m)}")
            )
        rows.append(row)
    parts.append(
        table(
            ctx,
            f"Cumulative hazard (SE) at landmark times ({aid}).",
            ["Group", Cell("n"), Cell("Events"), *[Cell(f"{m:g} months") for m in marks]],
            rows,
        )
    )
    parts.append(_dropped_note(pooled))
    return "".join(parts)


# ---------------------------------------------------------------------------
# logrank


def render_logrank(ctx: Ctx, aid: str, entry: Mapping[str, Any]) -> str:
    pooled = as_dict(entry.get("pooled"))
    obs, exp = as_dict(pooled.get("observed")), as_dict(pooled.get("expected"))
    rows: list[list[CellLike]] = []
    for g in obs:
        o, e = fnum(obs.get(g)), fnum(exp.get(g))
        ratio = o / e if o is not None and e else None
        rows.append(
            [
                Cell(g, num=False),
                Cell(ctx.count(o), f"{aid}|O|{g}"),
                Cell(fmt.expected(e), f"{aid}|E|{g}"),
                Cell(fmt.num(ratio, ".2f"), f"{aid}|OE|{g}"),
                Cell(
                    fmt.num((o - e) ** 2 / e if o is not None and e else None, ".2f"),
                    f"{aid}|chi_part|{g}",
                ),
            ]
        )
    rho = fnum(pooled.get("rho")) or 0.0
    test_name = "Log-rank test" if rho == 0 else f"Fleming-Harrington test (rho = {rho:g})"
    parts = [
        table(
            ctx,
            f"{test_name} ({aid}): observed and expected events per group.",
            ["Group", Cell("Observed"), Cell("Expected"), Cell("O/E"), Cell("(O−E)²/E")],
            rows,
        ),
        '<p class="test">'
        + f"{test_name}: χ² = "
        + _span(fmt.stat(pooled.get("chisq")), f"{aid}|chisq")
        + " on "
        + _span(fmt.integer(pooled.get("df")), f"{aid}|df")
        + " df, p = "
        + _span(fmt.pval(pooled.get("p")), f"{aid}|p")
        + "</p>",
        _dropped_note(pooled),
    ]
    per_site = entry.get("per_site")
    if isinstance(per_site, Mapping) and per_site:
        srows: list[list[CellLike]] = []
        for site, sv in per_site.items():
            if not isinstance(sv, Mapping):
                continue
            srows.append(
                [
                    Cell(site_label(ctx, site, sv), num=False),
                    Cell(fmt.stat(sv.get("chisq")), f"{aid}|site_chisq|{site}"),
                    Cell(fmt.integer(sv.get("df"))),
                    Cell(fmt.pval(sv.get("p")), f"{aid}|site_p|{site}"),
                ]
            )
        parts.append(h3("Per site"))
        parts.append(
            table(
                ctx,
                f"Per-site tests ({aid}). " + withheld(ctx, per_site),
                ["Site", Cell("χ²"), Cell("df"), Cell("p")],
                srows,
            )
        )
    return "".join(parts)


def _span(text: str, key: str) -> str:
    return f'<span data-cell="{fmt.esc(key)}">{fmt.esc(text)}</span>'


# ---------------------------------------------------------------------------
# cif


def _cause_label(pooled: Mapping[str, Any], cause: str) -> str:
    labels = as_dict(pooled.get("cause_labels"))
    return str(labels.get(cause, f"cause {cause}"))


def render_cif(ctx: Ctx, aid: str, entry: Mapping[str, Any]) -> str:
    pooled = as_dict(entry.get("pooled"))
    groups = {str(k): as_dict(v) for k, v in as_dict(pooled.get("groups")).items()}
    if not groups:
        return note("No groups in this result.")
    causes = list(as_dict(next(iter(groups.values())).get("cif")))
    z = stats.z_value(0.95)
    max_m = _max_days(groups) / DAYS_PER_MONTH
    ticks, _ = stats.month_ticks(max_m)

    def events_all(c: Mapping[str, Any]) -> list[Any]:
        per = [as_list(v) for v in as_dict(c.get("n_event")).values()]
        return [sum(fnum(x) or 0.0 for x in col) for col in zip(*per, strict=False)] if per else []

    def curve(c: Mapping[str, Any], k: str, label: str, i: int) -> plots.Curve:
        v = as_list(as_dict(c.get("cif")).get(k))
        lo, hi = _log_band(v, as_list(as_dict(c.get("std_err")).get(k)), z, 1.0)
        return plots.Curve(label, style(i), as_list(c.get("time")), v, lo, hi, 0.0)

    def y_top(curves: Sequence[plots.Curve]) -> float:
        top = max(
            (fnum(x) or 0.0 for cv in curves for x in list(cv.upper or []) + list(cv.value)),
            default=1.0,
        )
        return min(1.0, max(0.1, top))

    risk = _risk_rows(ctx, aid, groups, ticks, events_all)
    parts = []
    band = "Shaded: pointwise 95% band p·exp(±1.96·SE/p) (log transformation, as R's survfit)."
    if len(groups) == 1:
        g, c = next(iter(groups.items()))
        cs = [curve(c, k, _cause_label(pooled, k), i) for i, k in enumerate(causes)]
        svg_text = plots.curve_figure(
            ctx.ids,
            title=f"Cumulative incidence: {aid}",
            desc="Aalen-Johansen cumulative incidence of each competing cause.",
            curves=cs,
            y_label="Cumulative incidence",
            x_label=X_LABEL,
            ticks=ticks,
            max_months=max_m,
            y_max=y_top(cs),
            risk_title=_risk_title(pooled),
            risk_rows=risk,
        )
        parts.append(
            figure(
                ctx,
                svg_text,
                f"Aalen-Johansen cumulative incidence of competing causes ({aid}). {band} "
                + _risk_caption(ctx),
            )
        )
    else:
        for j, k in enumerate(causes):
            cs = [curve(c, k, _glabel(pooled, g), i) for i, (g, c) in enumerate(groups.items())]
            svg_text = plots.curve_figure(
                ctx.ids,
                title=f"Cumulative incidence of {_cause_label(pooled, k)}: {aid}",
                desc=f"Aalen-Johansen cumulative incidence of {_cause_label(pooled, k)} by group.",
                curves=cs,
                y_label=f"Cumulative incidence: {_cause_label(pooled, k)}",
                x_label=X_LABEL,
                ticks=ticks,
                max_months=max_m,
                y_max=y_top(cs),
                # the same risk table under every panel; cells keyed once
                risk_title=_risk_title(pooled),
                risk_rows=risk if j == 0 else [replace(r, keys=()) for r in risk],
            )
            parts.append(
                figure(
                    ctx,
                    svg_text,
                    f"Cumulative incidence of {_cause_label(pooled, k)} by group ({aid}), the "
                    f"other causes competing. {band} " + _risk_caption(ctx),
                )
            )
    marks = stats.landmarks(max_m)
    rows: list[list[CellLike]] = []
    for g, c in groups.items():
        time = as_list(c.get("time"))
        for i, k in enumerate(causes):
            v = as_list(as_dict(c.get("cif")).get(k))
            lo, hi = _log_band(v, as_list(as_dict(c.get("std_err")).get(k)), z, 1.0)
            n_ev = sum(fnum(x) or 0 for x in as_list(as_dict(c.get("n_event")).get(k)))
            row: list[CellLike] = [
                Cell(_glabel(pooled, g) if i == 0 else "", num=False),
                Cell(_cause_label(pooled, k), num=False),
                Cell(ctx.count(n_ev), f"{aid}|events|{g}|{k}"),
            ]
            for m in marks:
                t = stats.months_to_days(m)
                row.append(
                    Cell(
                        fmt.est_ci(
                            stats.value_at(time, v, t, 0.0),
                            stats.value_at(time, lo, t, 0.0),
                            stats.value_at(time, hi, t, 0.0),
                            fmt.prob,
                        ),
                        f"{aid}|cif|{g}|{k}|{_mkey(m)}",
                    )
                )
            rows.append(row)
    parts.append(
        table(
            ctx,
            f"Cumulative incidence (95% CI) at landmark times ({aid}).",
            ["Group", "Cause", Cell("Events"), *[Cell(f"{m:g} months") for m in marks]],
            rows,
        )
    )
    parts.append(_dropped_note(pooled))
    return "".join(parts)


# ---------------------------------------------------------------------------
# cox


def render_cox(ctx: Ctx, aid: str, entry: Mapping[str, Any]) -> str:
    p = as_dict(entry.get("pooled"))
    level = fnum(p.get("conf_level")) or 0.95
    pct = f"{level * 100:g}%"
    terms = list(as_dict(p.get("coef")))
    rows: list[list[CellLike]] = []
    for t in terms:

        def g(k: str, t: str = t) -> Any:
            return as_dict(p.get(k)).get(t)

        rows.append(
            [
                Cell(t, num=False),
                Cell(fmt.coef(g("coef")), f"{aid}|coef|{t}"),
                Cell(fmt.coef(g("se")), f"{aid}|se|{t}"),
                Cell(fmt.hr(g("hr")), f"{aid}|hr|{t}"),
                Cell(fmt.interval(g("hr_lower"), g("hr_upper"), fmt.hr), f"{aid}|hr_ci|{t}"),
                Cell(fmt.stat(g("z")), f"{aid}|z|{t}"),
                Cell(fmt.pval(g("p")), f"{aid}|p|{t}"),
            ]
        )
    parts = [
        table(
            ctx,
            f"Cox proportional hazards model ({aid}); ties: {p.get('ties', 'NA')}.",
            [
                "Term",
                Cell("coef"),
                Cell("SE(coef)"),
                Cell("HR"),
                Cell(f"{pct} CI"),
                Cell("z"),
                Cell("p"),
            ],
            rows,
        )
    ]
    tests: list[list[CellLike]] = []
    for name, key in (
        ("Likelihood ratio", "lr_test"),
        ("Wald", "wald_test"),
        ("Score (log-rank)", "score_test"),
    ):
        tst = as_dict(p.get(key))
        tests.append(
            [
                Cell(name, num=False),
                Cell(fmt.stat(tst.get("stat")), f"{aid}|{key}|stat"),
                Cell(fmt.integer(tst.get("df")), f"{aid}|{key}|df"),
                Cell(fmt.pval(tst.get("p")), f"{aid}|{key}|p"),
            ]
        )
    parts.append(
        table(ctx, f"Global tests ({aid}).", ["Test", Cell("χ²"), Cell("df"), Cell("p")], tests)
    )
    conv = p.get("converged")
    model = [
        ("n", Cell(ctx.count(p.get("n")), f"{aid}|n")),
        ("Events", Cell(ctx.count(p.get("n_events")), f"{aid}|n_events")),
        ("Rows dropped (missing values)", Cell(fmt.integer(p.get("n_dropped")))),
        (
            "Log-likelihood, initial (all coefficients 0)",
            Cell(fmt.stat(p.get("loglik_initial")), f"{aid}|loglik_initial"),
        ),
        (
            "Log-likelihood, fitted model",
            Cell(fmt.stat(p.get("loglik_final")), f"{aid}|loglik_final"),
        ),
        ("Newton iterations", Cell(fmt.integer(p.get("iterations")))),
        ("Converged", Cell("yes" if conv is True else "no" if conv is False else "NA")),
    ]

    parts.append(kv_table(ctx, f"Model ({aid}).", model))
    for w in as_list(p.get("warnings")):
        parts.append(note(f"Warning: {w}"))
    frows = []
    for t in terms:

        def g2(k: str, t: str = t) -> float | None:
            return fnum(as_dict(p.get(k)).get(t))

        frows.append(
            plots.ForestRow(
                t,
                g2("hr"),
                g2("hr_lower"),
                g2("hr_upper"),
                fmt.est_ci(g2("hr"), g2("hr_lower"), g2("hr_upper"), fmt.hr),
            )
        )
    if frows:
        svg_text = plots.forest_figure(
            ctx.ids,
            title=f"Hazard ratios: {aid}",
            desc="Hazard ratio per model term with confidence interval, log scale.",
            blocks=[plots.ForestBlock("Model terms", frows)],
            log=True,
            ref=1.0,
            x_label="Hazard ratio (log scale)",
            est_header=f"HR ({pct} CI)",
        )
        parts.append(
            figure(
                ctx,
                svg_text,
                f"Hazard ratios with {pct} CI ({aid}), log scale; dashed line: HR = 1. "
                "Continuous covariates: HR per unit; categorical: level vs reference.",
            )
        )
    per_site = entry.get("per_site")
    if isinstance(per_site, Mapping) and per_site:
        parts.append(_cox_per_site(ctx, aid, p, terms, per_site, pct))
    return "".join(parts)


def _cox_per_site(
    ctx: Ctx,
    aid: str,
    p: Mapping[str, Any],
    terms: Sequence[str],
    per_site: Mapping[str, Any],
    pct: str,
) -> str:
    released = {s: as_dict(v) for s, v in per_site.items() if isinstance(v, Mapping)}
    blocks = []
    for t in terms:
        rows, ys, ses = [], [], []
        for site, sv in released.items():

            def g(k: str, sv: Mapping[str, Any] = sv, t: str = t) -> float | None:
                return fnum(as_dict(sv.get(k)).get(t))

            b, se = g("coef"), g("se")
            if b is not None and se is not None and se > 0:
                ys.append(b)
                ses.append(se)
            rows.append(
                plots.ForestRow(
                    site_label(ctx, site, sv),
                    g("hr"),
                    g("hr_lower"),
                    g("hr_upper"),
                    fmt.est_ci(g("hr"), g("hr_lower"), g("hr_upper"), fmt.hr),
                    weight=1.0 / se**2 if se else None,
                    key=f"{aid}|site_hr|{site}|{t}",
                )
            )

        def gp(k: str, t: str = t) -> float | None:
            return fnum(as_dict(p.get(k)).get(t))

        rows.append(
            plots.ForestRow(
                "Pooled (federated)",
                gp("hr"),
                gp("hr_lower"),
                gp("hr_upper"),
                fmt.est_ci(gp("hr"), gp("hr_lower"), gp("hr_upper"), fmt.hr),
                pooled=True,
                key=f"{aid}|site_hr|pooled|{t}",
            )
        )
        het = stats.heterogeneity(ys, ses)
        blocks.append(
            plots.ForestBlock(
                t,
                rows,
                het_text(het, "log HR")
                if het
                else "heterogeneity not computed (fewer than two sites)",
            )
        )
    svg_text = plots.forest_figure(
        ctx.ids,
        title=f"Per-site hazard ratios: {aid}",
        desc="Hazard ratio per site and term with the pooled federated estimate.",
        blocks=blocks,
        log=True,
        ref=1.0,
        x_label="Hazard ratio (log scale)",
        est_header=f"HR ({pct} CI)",
    )
    return h3("Per site") + figure(
        ctx,
        svg_text,
        f"Hazard ratios per site ({aid}); squares sized by inverse variance; diamond: the "
        "federated estimate on the pooled rows (not a meta-analysis). Cochran's Q and I² on "
        "per-site log HRs around their inverse-variance mean. " + withheld(ctx, per_site),
    )


# kinds whose per-site releases this report lists but does not draw
PER_SITE_NOT_DRAWN = ("nelson_aalen", "cif")

SURVIVAL_RENDERERS: dict[str, Callable[[Ctx, str, Mapping[str, Any]], str]] = {
    "km": render_km,
    "nelson_aalen": render_nelson_aalen,
    "logrank": render_logrank,
    "cif": render_cif,
    "cox": render_cox,
}

KIND_TITLES = {
    "km": "Kaplan-Meier",
    "nelson_aalen": "Nelson-Aalen",
    "logrank": "log-rank test",
    "cif": "competing risks (Aalen-Johansen)",
    "cox": "Cox model",
    "attrition": "attrition between lines",
    "pathways": "regimen sequences",
}
