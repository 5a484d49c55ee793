"""Figures: survival-type curves with a risk table, forest plots, funnel, dots, Sankey.

Each function returns one self-contained ``<svg>`` string. Inputs are plain
numbers already taken from ``results.json`` (days for times); the figures
convert to months and never compute an estimate themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from coordinator.reporting import svg
from coordinator.reporting.fmt import DAYS_PER_MONTH, esc, fnum
from coordinator.reporting.svg import Ids, Style, f, line, text

WIDTH = 760.0
GRID = 'stroke="#e3e3e3" stroke-width="1"'
AXIS = 'stroke="#444" stroke-width="1"'


def _tw(s: str, size: float = 11) -> float:
    """Approximate text width; good enough to lay out labels without a font engine."""
    return len(s) * size * 0.58


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _fit(s: str, width: float, size: float = 11) -> str:
    """Truncate a label so it ends before ``width`` px (the number column starts there)."""
    n = max(3, int(width / (size * 0.58)))
    return _short(s, n)


def _data(key: str | None) -> str:
    return f'data-cell="{esc(key)}"' if key else ""


# ---------------------------------------------------------------------------
# curves (KM, Nelson-Aalen, CIF) with a number-at-risk table


@dataclass(frozen=True)
class Curve:
    label: str
    style: Style
    time: Sequence[float | None]  # days
    value: Sequence[float | None]
    lower: Sequence[float | None] | None
    upper: Sequence[float | None] | None
    start: float
    censor_times: Sequence[float] = ()
    median: float | None = None  # days; drawn as a drop line


@dataclass(frozen=True)
class RiskRow:
    label: str
    style: Style
    cells: Sequence[str]  # already formatted (suppression applied)
    keys: Sequence[str | None] = field(default_factory=tuple)


def _legend(
    items: Sequence[tuple[str, Style]],
    x0: float,
    y0: float,
    max_x: float,
    *,
    markers: bool = False,
) -> tuple[str, float]:
    """A legend row above the plot (never over data); wraps when it runs out of width."""
    out = []
    x, y = x0, y0
    for label, st in items:
        w = 34 + _tw(label) + 18
        if x + w > max_x and x > x0:
            x, y = x0, y + 16
        if markers:
            out.append(svg.marker(st.marker, x + 14, y - 4, 8, st.colour))
        else:
            out.append(line(x, y - 4, x + 28, y - 4, st.stroke_attrs(2.2)))
        out.append(text(x + 34, y, label))
        x += w
    return "".join(out), y


def curve_figure(
    ids: Ids,
    *,
    title: str,
    desc: str,
    curves: Sequence[Curve],
    y_label: str,
    x_label: str,
    ticks: Sequence[float],  # months
    max_months: float,
    y_max: float | None = None,
    risk_title: str = "Number at risk",
    risk_rows: Sequence[RiskRow] = (),
    median_lines: bool = False,
) -> str:
    ml, mr = 132.0, 28.0
    legend, ly = _legend([(c.label, c.style) for c in curves], ml, 16, WIDTH - mr)
    top = ly + 14
    ph = 270.0
    x = svg.Linear(0.0, max(max_months, ticks[-1] if ticks else 1.0), ml, WIDTH - mr)
    top_value = y_max
    if top_value is None:
        vals = [
            v
            for c in curves
            for seq in (c.value, c.upper or ())
            for v in (fnum(t) for t in seq)
            if v is not None
        ]
        top_value = max(vals, default=1.0) or 1.0
    yt = svg.nice_ticks(0.0, top_value, 6)
    y = svg.Linear(0.0, yt[-1], top + ph, top)
    body: list[str] = [legend]
    for t, lab in zip(yt, svg.tick_labels(yt), strict=True):
        body.append(line(ml, y(t), WIDTH - mr, y(t), GRID))
        body.append(text(ml - 6, y(t) + 4, lab, anchor="end"))
    for m in ticks:
        body.append(line(x(m), top + ph, x(m), top + ph + 5, AXIS))
        body.append(text(x(m), top + ph + 17, svg.tick_label(m), anchor="middle"))
    body.append(line(ml, top + ph, WIDTH - mr, top + ph, AXIS))
    body.append(line(ml, top, ml, top + ph, AXIS))
    body.append(text(ml + (WIDTH - mr - ml) / 2, top + ph + 34, x_label, anchor="middle", size=12))
    body.append(
        text(
            16,
            top + ph / 2,
            y_label,
            anchor="middle",
            size=12,
            extra=f'transform="rotate(-90 16 {f(top + ph / 2)})"',
        )
    )
    if median_lines:
        meds = [c.median for c in curves if c.median is not None]
        if meds:
            dot = 'stroke="#888" stroke-width="1" stroke-dasharray="2 3"'
            body.append(line(ml, y(0.5), x.clamp(max(meds) / DAYS_PER_MONTH), y(0.5), dot))
            for m in meds:
                xm = x.clamp(m / DAYS_PER_MONTH)
                body.append(line(xm, y(0.5), xm, top + ph, dot))

    def pt_x(seq: Sequence[float | None]) -> list[float | None]:
        return [None if fnum(t) is None else x.clamp(float(t) / DAYS_PER_MONTH) for t in seq]  # type: ignore[arg-type]

    def pt_y(seq: Sequence[float | None]) -> list[float | None]:
        return [None if fnum(v) is None else y.clamp(float(v)) for v in seq]  # type: ignore[arg-type]

    for c in curves:
        xs = pt_x(c.time)
        if c.lower is not None and c.upper is not None:
            for d in svg.step_band(xs, pt_y(c.lower), pt_y(c.upper), x(0), y(c.start)):
                body.append(
                    f'<path class="band" d="{d}" fill="{c.style.colour}" fill-opacity="0.14" '
                    'stroke="none"/>'
                )
    for c in curves:
        xs = pt_x(c.time)
        ys = pt_y(c.value)
        segs = svg.step_segments(xs, ys, x(0), y(c.start))
        d = "".join(svg.path_d(s) for s in segs)
        body.append(f'<path class="series" d="{d}" {c.style.stroke_attrs(2)}/>')
        ticks_d = []
        by_time = {t: v for t, v in zip(c.time, c.value, strict=False) if fnum(t) is not None}
        for ct in c.censor_times:
            v = fnum(by_time.get(ct))
            if v is None:
                continue
            cx, cy = x.clamp(ct / DAYS_PER_MONTH), y.clamp(v)
            ticks_d.append(f"M{f(cx)} {f(cy - 3.5)}v7")
        if ticks_d:
            body.append(
                f'<path class="censor" d="{"".join(ticks_d)}" stroke="{c.style.colour}" '
                'stroke-width="1"/>'
            )
    height = top + ph + 44
    if risk_rows:
        body.append(text(8, height + 8, risk_title, weight="bold", size=11))
        height += 14
        for row in risk_rows:
            height += 17
            body.append(line(8, height - 4, 28, height - 4, row.style.stroke_attrs(2.2)))
            body.append(
                f"<g>{text(34, height, _fit(row.label, ml - 34 - 22))}"
                f"<title>{esc(row.label)}</title></g>"
            )
            for i, (m, cell) in enumerate(zip(ticks, row.cells, strict=False)):
                key = row.keys[i] if i < len(row.keys) else None
                body.append(text(x(m), height, cell, anchor="middle", extra=_data(key)))
        height += 10
    return svg.document(ids, WIDTH, height, title, desc, "".join(body))


# ---------------------------------------------------------------------------
# forest plots


@dataclass(frozen=True)
class ForestRow:
    label: str
    est: float | None
    lo: float | None
    hi: float | None
    text: str
    pooled: bool = False
    weight: float | None = None
    key: str | None = None


@dataclass(frozen=True)
class ForestBlock:
    title: str
    rows: Sequence[ForestRow]
    note: str = ""


def forest_figure(
    ids: Ids,
    *,
    title: str,
    desc: str,
    blocks: Sequence[ForestBlock],
    log: bool,
    ref: float | None,
    x_label: str,
    est_header: str,
) -> str:
    lx, px0, px1, tx = 8.0, 250.0, 560.0, 574.0
    values = [
        v
        for b in blocks
        for r in b.rows
        for v in (r.est, r.lo, r.hi)
        if v is not None and (not log or v > 0)
    ]
    if ref is not None:
        values.append(ref)
    lo_v, hi_v = (min(values), max(values)) if values else (0.5, 2.0)
    xs: svg.Linear
    if log:
        ax_lo, ax_hi, ticks = svg.log_range(lo_v, hi_v)
        xs = svg.Log(ax_lo, ax_hi, px0, px1)
    else:
        ticks = svg.nice_ticks(lo_v, hi_v, 6)
        xs = svg.Linear(ticks[0], ticks[-1], px0, px1)
    dmin, dmax = xs.domain()
    rows_top = 30.0
    bottom = rows_top + sum(20 + 20 * len(b.rows) + (18 if b.note else 0) for b in blocks) + 14
    body: list[str] = [text(tx, 22, est_header, weight="bold")]
    for t in ticks:
        body.append(line(xs(t), rows_top, xs(t), bottom, GRID))
        body.append(line(xs(t), bottom, xs(t), bottom + 4, AXIS))
        body.append(text(xs(t), bottom + 16, svg.tick_label(t), anchor="middle"))
    if ref is not None and dmin <= ref <= dmax:
        body.append(
            line(xs(ref), rows_top, xs(ref), bottom, 'stroke="#555" stroke-dasharray="4 3"')
        )
    body.append(line(px0, bottom, px1, bottom, AXIS))
    body.append(text((px0 + px1) / 2, bottom + 32, x_label, anchor="middle", size=12))
    yy = rows_top
    for b in blocks:
        # squares compare sites within one estimate, so their sizes are scaled per block
        wmax = max((r.weight for r in b.rows if r.weight), default=1.0)
        yy += 20
        body.append(text(lx, yy + 4, b.title, weight="bold"))
        for r in b.rows:
            yy += 20
            weight = "bold" if r.pooled else "normal"
            body.append(text(lx + 12, yy + 4, _short(r.label, 36), weight=weight))
            body.append(text(tx, yy + 4, r.text, weight=weight, extra=_data(r.key)))
            if r.est is None or (log and r.est <= 0):
                body.append(
                    text((px0 + px1) / 2, yy + 4, "not estimable", anchor="middle", colour="#666")
                )
                continue
            lo = r.lo if r.lo is not None and (not log or r.lo > 0) else None
            x_lo = xs.clamp(lo) if lo is not None else px0
            x_hi = xs.clamp(r.hi) if r.hi is not None else px1
            xe = xs.clamp(r.est)
            if r.pooled:
                pts = [(x_lo, yy), (xe, yy - 6), (x_hi, yy), (xe, yy + 6)]
                body.append(
                    f'<path class="series" d="{svg.path_d(pts)}Z" fill="#222" stroke="#222"/>'
                )
            else:
                size = 5.0 + 7.0 * ((r.weight or wmax) / wmax) ** 0.5
                body.append(
                    '<g class="series">'
                    + line(x_lo, yy, x_hi, yy, 'stroke="#222" stroke-width="1.3"')
                    + f'<rect x="{f(xe - size / 2)}" y="{f(yy - size / 2)}" width="{f(size)}" '
                    f'height="{f(size)}" fill="#0072B2"/></g>'
                )
            # an interval running off the axis (or not estimable) ends in an arrow head
            if lo is None or lo < dmin:
                body.append(f'<path d="M{f(px0 - 4)} {f(yy)}l5 -3.5v7z" fill="#222"/>')
            if r.hi is None or r.hi > dmax:
                body.append(f'<path d="M{f(px1 + 4)} {f(yy)}l-5 -3.5v7z" fill="#222"/>')
        if b.note:
            yy += 18
            body.append(
                text(lx + 12, yy + 4, b.note, size=10, colour="#444", extra='font-style="italic"')
            )
    return svg.document(ids, WIDTH, bottom + 42, title, desc, "".join(body))


# ---------------------------------------------------------------------------
# attrition funnel


@dataclass(frozen=True)
class Segment:
    name: str
    label: str
    value: float | None  # None = suppressed cell
    colour: str
    dark: bool  # white text on it


def funnel_figure(
    ids: Ids,
    *,
    title: str,
    desc: str,
    lines: Sequence[str],
    started: Sequence[float | None],
    started_text: Sequence[str],
    segments: Sequence[Sequence[Segment]],  # per line, in drawing order
    fmt_count: Callable[[float | None], str],
) -> str:
    """Horizontal bars per line, split by the end state after the line.

    The 'next line' share of each bar is joined to the next bar, so the bars
    read as a funnel. Suppressed cells are one hatched remainder without a
    number: showing started minus the released cells would undo suppression
    only as far as the released numbers already do.
    """
    ml, mr, bh, gap = 118.0, 24.0, 28.0, 30.0
    hatch = ids.new("hatch")
    known = [
        max(fnum(s) or 0.0, sum(seg.value or 0.0 for seg in segs))
        for s, segs in zip(started, segments, strict=True)
    ]
    scale = svg.Linear(0.0, max(known, default=1.0) or 1.0, ml, WIDTH - mr)
    body: list[str] = []
    y0 = 14.0
    prev_next: tuple[float, float, float] | None = None
    for i, (lab, segs) in enumerate(zip(lines, segments, strict=True)):
        y = y0 + i * (bh + gap)
        total = fnum(started[i])
        if prev_next is not None:
            a, b, py = prev_next
            right = scale(total if total is not None else known[i])
            pts = [(a, py), (b, py), (right, y), (ml, y)]
            body.append(f'<path d="{svg.path_d(pts)}Z" fill="#0072B2" fill-opacity="0.12"/>')
        body.append(text(8, y + 12, lab, weight="bold"))
        body.append(text(8, y + 25, f"started {started_text[i]}", size=10, colour="#444"))
        x = ml
        prev_next = None
        for seg in segs:
            if seg.value is None or seg.value <= 0:
                continue
            w = scale(seg.value) - ml
            body.append(
                f'<rect class="series" x="{f(x)}" y="{f(y)}" width="{f(w)}" height="{f(bh)}" '
                f'fill="{seg.colour}" stroke="#fff" stroke-width="1"><title>'
                f"{esc(seg.label)}: {esc(fmt_count(seg.value))}</title></rect>"
            )
            label = fmt_count(seg.value)
            if w > _tw(label, 10) + 6:
                colour = "#fff" if seg.dark else "#111"
                body.append(
                    text(x + w / 2, y + bh / 2 + 4, label, anchor="middle", size=10, colour=colour)
                )
            if seg.name == "next_line":
                prev_next = (x, x + w, y + bh)
            x += w
        shown = sum(seg.value for seg in segs if seg.value is not None and seg.value > 0)
        rest = (total if total is not None else known[i]) - shown
        if any(s.value is None for s in segs) and rest > 0:
            w = scale(rest) - ml
            body.append(
                f'<rect class="series" x="{f(x)}" y="{f(y)}" width="{f(w)}" height="{f(bh)}" '
                f'fill="url(#{hatch})" stroke="#777" stroke-width="0.8"><title>suppressed cells'
                "</title></rect>"
            )
    y = y0 + len(lines) * (bh + gap) - gap + 22
    # legend: every state that occurs, plus the hatch if anything was suppressed
    seen: dict[str, Segment] = {}
    for segs in segments:
        for s in segs:
            seen.setdefault(s.name, s)
    x = 8.0
    for s in seen.values():
        w = 18 + _tw(s.label, 10) + 14
        if x + w > WIDTH - mr:
            x, y = 8.0, y + 16
        body.append(f'<rect x="{f(x)}" y="{f(y - 9)}" width="12" height="10" fill="{s.colour}"/>')
        body.append(text(x + 16, y, s.label, size=10))
        x += w
    if any(seg.value is None for segs in segments for seg in segs):
        if x + 150 > WIDTH - mr:
            x, y = 8.0, y + 16
        body.append(
            f'<rect x="{f(x)}" y="{f(y - 9)}" width="12" height="10" fill="url(#{hatch})" '
            'stroke="#777" stroke-width="0.8"/>'
        )
        body.append(text(x + 16, y, "suppressed cells (small counts)", size=10))
    return svg.document(
        ids, WIDTH, y + 12, title, desc, "".join(body), defs=svg.hatch_pattern(hatch)
    )


# ---------------------------------------------------------------------------
# point estimates with intervals (attrition definitions side by side)


@dataclass(frozen=True)
class DotSeries:
    label: str
    style: Style
    points: Sequence[tuple[float | None, float | None, float | None]]  # per category


def dots_figure(
    ids: Ids,
    *,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[DotSeries],
    y_label: str,
    percent: bool,
) -> str:
    ml, mr = 64.0, 20.0
    legend, ly = _legend([(s.label, s.style) for s in series], ml, 16, WIDTH - mr, markers=True)
    top, ph = ly + 16, 230.0
    y = svg.Linear(0.0, 1.0, top + ph, top)
    body = [legend]
    for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        body.append(line(ml, y(t), WIDTH - mr, y(t), GRID))
        body.append(
            text(ml - 6, y(t) + 4, f"{round(100 * t)}%" if percent else f"{t:g}", anchor="end")
        )
    body.append(line(ml, top + ph, WIDTH - mr, top + ph, AXIS))
    body.append(line(ml, top, ml, top + ph, AXIS))
    body.append(
        text(
            14,
            top + ph / 2,
            y_label,
            anchor="middle",
            size=12,
            extra=f'transform="rotate(-90 14 {f(top + ph / 2)})"',
        )
    )
    band = (WIDTH - mr - ml) / max(len(categories), 1)
    k = max(len(series), 1)
    for ci, cat in enumerate(categories):
        cx = ml + band * (ci + 0.5)
        body.append(text(cx, top + ph + 18, cat, anchor="middle"))
        for si, s in enumerate(series):
            est, lo, hi = s.points[ci] if ci < len(s.points) else (None, None, None)
            xx = cx + (si - (k - 1) / 2) * min(22.0, band / (k + 1))
            if est is None:
                continue
            g = []
            if lo is not None and hi is not None:
                g.append(
                    line(
                        xx,
                        y.clamp(lo),
                        xx,
                        y.clamp(hi),
                        f'stroke="{s.style.colour}" stroke-width="1.4"',
                    )
                )
                for v in (lo, hi):
                    g.append(
                        line(
                            xx - 3,
                            y.clamp(v),
                            xx + 3,
                            y.clamp(v),
                            f'stroke="{s.style.colour}" stroke-width="1.4"',
                        )
                    )
            g.append(svg.marker(s.style.marker, xx, y.clamp(est), 8, s.style.colour))
            body.append(f'<g class="series">{"".join(g)}</g>')
    return svg.document(ids, WIDTH, top + ph + 30, title, desc, "".join(body))


# ---------------------------------------------------------------------------
# regimen sequences (Sankey)


@dataclass(frozen=True)
class Flow:
    from_line: int
    source: str
    target: str
    count: float | None  # None = suppressed
    terminal: bool


# terminal states of a pathway: the draft contract's two, plus the end states
# (her2fed.endpoints.END_STATES) a finer pathway count may use instead
TERMINAL_LABELS = {
    "no_next_line": "alive, no further line",
    "off_treatment_follow_up": "off treatment, in follow-up",
    "on_treatment": "still on treatment",
    "lost_to_follow_up": "lost to follow-up",
    "other": "other end state",
    "palliative": "palliative care",
    "death": "death",
}
TERMINAL_SHADES = {
    "no_next_line": "#9a9a9a",
    "off_treatment_follow_up": "#9a9a9a",
    "on_treatment": "#c4c4c4",
    "lost_to_follow_up": "#c4c4c4",
    "other": "#c4c4c4",
    "palliative": "#666666",
    "death": "#222222",
}
REGIMEN_NODE = "#3d5a80"
LINK_NEXT = "#0072B2"


def sankey_figure(
    ids: Ids,
    *,
    title: str,
    desc: str,
    n_lines: int,
    regimens: Sequence[str],
    flows: Sequence[Flow],
    fmt_count: Callable[[float | None], str],
) -> str:
    """Regimen at line k -> regimen at line k+1 (or a terminal state).

    Node heights are the released flows; a suppressed flow has no width and is
    drawn as a dashed thread so the reader sees that a flow exists without its size.
    """
    cols = max([n_lines] + [fl.from_line + 1 for fl in flows])
    order = {r: i for i, r in enumerate(regimens)}
    extra = sorted(
        {n for fl in flows for n in (fl.source, fl.target) if n not in order} - set(TERMINAL_LABELS)
    )
    for name in extra:
        order[name] = len(order)
    term_rank = {name: 10_000 + i for i, name in enumerate(TERMINAL_LABELS)}

    def rank(node: tuple[int, str, bool]) -> int:
        return term_rank.get(node[1], 0) if node[2] else order[node[1]]

    out_sum: dict[tuple[int, str, bool], float] = {}
    in_sum: dict[tuple[int, str, bool], float] = {}
    for fl in flows:
        s = (fl.from_line, fl.source, False)
        t = (fl.from_line + 1, fl.target, fl.terminal)
        out_sum[s] = out_sum.get(s, 0.0) + (fl.count or 0.0)
        in_sum[t] = in_sum.get(t, 0.0) + (fl.count or 0.0)
        out_sum.setdefault(t, 0.0)
        in_sum.setdefault(s, 0.0)
    nodes = sorted(set(out_sum) | set(in_sum), key=lambda n: (n[0], rank(n)))
    value = {n: max(out_sum.get(n, 0.0), in_sum.get(n, 0.0)) for n in nodes}
    top, bottom_pad, avail, gap, nw = 30.0, 16.0, 440.0, 10.0, 14.0
    by_col: dict[int, list[tuple[int, str, bool]]] = {}
    for n in nodes:
        by_col.setdefault(n[0], []).append(n)
    k = min(
        (avail - gap * (len(ns) - 1)) / max(sum(value[n] for n in ns), 1.0)
        for ns in by_col.values()
    )
    x0, x_last = 16.0, WIDTH - 150.0
    step = (x_last - x0) / max(cols - 1, 1)
    pos: dict[tuple[int, str, bool], tuple[float, float, float]] = {}  # x, y, height
    for c, ns in by_col.items():
        yy = top
        for n in ns:
            h = max(value[n] * k, 2.0)
            pos[n] = (x0 + (c - 1) * step, yy, h)
            yy += h + gap
    body: list[str] = []
    for c in range(1, cols + 1):
        head = f"Line {c}" if c <= n_lines else f"after line {n_lines}"
        body.append(text(x0 + (c - 1) * step, 18, head, weight="bold"))

    def node_colour(n: tuple[int, str, bool]) -> str:
        return TERMINAL_SHADES.get(n[1], "#9a9a9a") if n[2] else REGIMEN_NODE

    def link_colour(target: tuple[int, str, bool]) -> str:
        # coloured by where patients go: on to a next line, or out of treatment
        return node_colour(target) if target[2] else LINK_NEXT

    out_off = {n: 0.0 for n in nodes}
    in_off = {n: 0.0 for n in nodes}
    flows_sorted = sorted(
        flows,
        key=lambda fl: (
            fl.from_line,
            rank((fl.from_line, fl.source, False)),
            rank((fl.from_line + 1, fl.target, fl.terminal)),
        ),
    )
    links: list[str] = []
    hidden: dict[tuple[int, str, bool], list[str]] = {}
    for fl in flows_sorted:
        s = (fl.from_line, fl.source, False)
        t = (fl.from_line + 1, fl.target, fl.terminal)
        sx, sy, _ = pos[s]
        tx_, ty, _ = pos[t]
        w = (fl.count or 0.0) * k
        ya, yb = sy + out_off[s], ty + in_off[t]
        xa, xb = sx + nw, tx_
        xm = (xa + xb) / 2
        label = (
            f"line {fl.from_line} {fl.source} \u2192 {TERMINAL_LABELS.get(fl.target, fl.target)}: "
            f"{fmt_count(fl.count) if fl.count is not None else 'suppressed'}"
        )
        if fl.count is None:
            hidden.setdefault(s, []).append(TERMINAL_LABELS.get(fl.target, fl.target))
            continue
        out_off[s] += w
        in_off[t] += w
        d = (
            f"M{f(xa)} {f(ya)}C{f(xm)} {f(ya)} {f(xm)} {f(yb)} {f(xb)} {f(yb)}"
            f"L{f(xb)} {f(yb + w)}C{f(xm)} {f(yb + w)} {f(xm)} {f(ya + w)} {f(xa)} {f(ya + w)}Z"
        )
        links.append(
            f'<path class="series" d="{d}" fill="{link_colour(t)}" fill-opacity="0.3" '
            f'stroke="none"><title>{esc(label)}</title></path>'
        )
    body.extend(links)
    # suppressed flows: one dashed stub per source node, destinations in its tooltip;
    # threads across the figure would bury the large flows under the small ones
    for node, targets in hidden.items():
        x, yy, h = pos[node]
        ys = yy + min(out_off[node], h) + 1.5
        tip = (
            f"line {node[0]} {node[1]}: {len(targets)} flow(s) below the minimum cell size, "
            f"to {', '.join(targets)}"
        )
        body.append(
            f'<path class="suppressed-flow" d="M{f(x + nw)} {f(ys)}h16" stroke="#444" '
            f'stroke-width="1.6" stroke-dasharray="2.5 2"><title>{esc(tip)}</title></path>'
        )
    last_label: dict[int, float] = {}
    for n in nodes:
        x, yy, h = pos[n]
        name = TERMINAL_LABELS.get(n[1], n[1]) if n[2] else n[1]
        body.append(
            f'<rect class="node" x="{f(x)}" y="{f(yy)}" width="{f(nw)}" height="{f(h)}" '
            f'fill="{node_colour(n)}"><title>{esc(name)}: {esc(fmt_count(value[n]))}</title></rect>'
        )
        # label every node that has room; never let two labels of a column overlap
        ly = yy + h / 2 + 4
        if h >= 3 and ly - last_label.get(n[0], -1e9) >= 11:
            last_label[n[0]] = ly
            body.append(
                text(
                    x + nw + (20 if n in hidden else 4),  # after the dashed stub, if any
                    yy + h / 2 + 4,
                    f"{name} {fmt_count(value[n])}",
                    size=10,
                    extra='paint-order="stroke" stroke="#fff" stroke-width="3"',
                )
            )
    height = max((p[1] + p[2] for p in pos.values()), default=top) + bottom_pad
    legend_y = height + 8
    x = 16.0
    for label, mark in (
        ("to a next-line regimen", f'fill="{LINK_NEXT}" fill-opacity="0.3"'),
        ("to death", 'fill="#222222" fill-opacity="0.3"'),
        ("to another end state", 'fill="#9a9a9a" fill-opacity="0.3"'),
    ):
        body.append(f'<rect x="{f(x)}" y="{f(legend_y - 9)}" width="18" height="10" {mark}/>')
        body.append(text(x + 22, legend_y, label, size=10))
        x += 30 + _tw(label, 10)
    dash = 'stroke="#555" stroke-width="1.2" stroke-dasharray="3 2"'
    body.append(line(x, legend_y - 4, x + 22, legend_y - 4, dash))
    body.append(text(x + 26, legend_y, "small flows not drawn (see table)", size=10))
    return svg.document(ids, WIDTH, legend_y + 10, title, desc, "".join(body))
