"""Hand-written SVG primitives: scales, ticks, step paths, bands, markers.

SVG written by hand keeps the report one small self-contained file with no
plotting dependency, and it stays vector-sharp when printed. Styles combine a
colour-blind-safe palette (Okabe-Ito) with dash patterns and marker shapes so
series remain distinguishable in grayscale print.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coordinator.reporting.fmt import esc

FONT = "'DejaVu Sans', 'Liberation Sans', Arial, Helvetica, sans-serif"

# Okabe-Ito, ordered so neighbours differ in lightness as well as hue (grayscale print)
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#000000", "#CC79A7", "#E69F00", "#56B4E9")
DASHES = ("", "7 4", "2 3", "10 3 2 3", "4 2", "1 2", "12 4")
MARKERS = ("circle", "square", "triangle", "diamond", "circle-open", "square-open")


@dataclass(frozen=True)
class Style:
    colour: str
    dash: str
    marker: str

    def stroke_attrs(self, width: float = 1.8) -> str:
        dash = f' stroke-dasharray="{self.dash}"' if self.dash else ""
        return f'stroke="{self.colour}" stroke-width="{width:g}" fill="none"{dash}'


def style(i: int) -> Style:
    return Style(COLOURS[i % len(COLOURS)], DASHES[i % len(DASHES)], MARKERS[i % len(MARKERS)])


class Ids:
    """Element ids unique within one page, deterministic for a given document."""

    def __init__(self) -> None:
        self._n = 0

    def new(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"


def f(x: float) -> str:
    """A coordinate: 0.1 px is finer than any printer needs and keeps the file small."""
    text = f"{x:.1f}"
    return "0" if text in ("0.0", "-0.0") else text.removesuffix(".0")


class Linear:
    def __init__(self, d0: float, d1: float, r0: float, r1: float) -> None:
        self.d0, self.d1, self.r0, self.r1 = d0, d1, r0, r1
        if d1 == d0:
            self.d1 = d0 + 1.0

    def __call__(self, v: float) -> float:
        return self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)

    def clamp(self, v: float) -> float:
        lo, hi = self.domain()
        return self(min(max(v, lo), hi))

    def domain(self) -> tuple[float, float]:
        """The data range shown, in data units."""
        return min(self.d0, self.d1), max(self.d0, self.d1)


class Log(Linear):
    """A log axis (hazard ratios, medians): equal ratios get equal distances."""

    def __init__(self, d0: float, d1: float, r0: float, r1: float) -> None:
        super().__init__(math.log(d0), math.log(d1), r0, r1)

    def __call__(self, v: float) -> float:
        return super().__call__(math.log(max(v, 1e-300)))

    def domain(self) -> tuple[float, float]:
        return math.exp(min(self.d0, self.d1)), math.exp(max(self.d0, self.d1))


def nice_ticks(lo: float, hi: float, max_n: int = 6) -> list[float]:
    """Ticks at 1, 2, 2.5 or 5 times a power of ten; the first <= lo, the last >= hi."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(max_n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    end = math.ceil(hi / step - 1e-9) * step
    n = round((end - start) / step)
    return [round(start + i * step, 10) for i in range(n + 1)]


LOG_CANDIDATES = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0,
    50.0, 100.0,
)  # fmt: skip
LOG_OPTIONAL = (0.25, 0.75, 1.5, 3.0, 4.0)


def log_range(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """A log axis that starts and ends on a readable ratio (0.5, 1, 2 ...) and its ticks."""
    lo, hi = max(lo, LOG_CANDIDATES[0]), min(hi, LOG_CANDIDATES[-1])
    a = max((c for c in LOG_CANDIDATES if c <= lo * (1 + 1e-9)), default=LOG_CANDIDATES[0])
    b = min((c for c in LOG_CANDIDATES if c >= hi * (1 - 1e-9)), default=LOG_CANDIDATES[-1])
    if a == b:
        a, b = a / 2.0, b * 2.0
    ticks = [c for c in LOG_CANDIDATES if a <= c <= b]
    if len(ticks) > 7:
        ticks = [c for c in ticks if c not in LOG_OPTIONAL or c in (a, b)]
    return a, b, ticks


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels with the same number of decimals on one axis (0.0, 0.2, ... 1.0)."""
    digits = 4
    for d in range(5):
        if all(abs(round(t, d) - t) < 1e-9 for t in ticks):
            digits = d
            break
    return [f"{t:.{digits}f}" for t in ticks]


def tick_label(t: float) -> str:
    if abs(t - round(t)) < 1e-9:
        return str(round(t))
    return f"{t:g}"


def step_segments(
    xs: Sequence[float | None], ys: Sequence[float | None], x0: float, y0: float | None
) -> list[list[tuple[float, float]]]:
    """Points of a right-continuous step function from (x0, y0), split where y is NA."""
    segs: list[list[tuple[float, float]]] = []
    cur: list[tuple[float, float]] = [(x0, y0)] if y0 is not None else []
    prev = y0
    for x, y in zip(xs, ys, strict=True):
        if x is None:
            continue
        if y is None:
            if cur:
                if prev is not None:
                    cur.append((x, prev))
                segs.append(cur)
            cur, prev = [], None
            continue
        if prev is not None:
            cur.append((x, prev))
        cur.append((x, y))
        prev = y
    if len(cur) > 1:
        segs.append(cur)
    return [s for s in segs if len(s) > 1]


def path_d(points: Iterable[tuple[float, float]]) -> str:
    out = []
    last: tuple[str, str] | None = None
    for i, (x, y) in enumerate(points):
        p = (f(x), f(y))
        if p == last:
            continue
        out.append(("M" if i == 0 else "L") + p[0] + " " + p[1])
        last = p
    return "".join(out)


def step_band(
    xs: Sequence[float | None],
    lower: Sequence[float | None],
    upper: Sequence[float | None],
    x0: float,
    y0: float | None,
) -> list[str]:
    """Closed step-shaped polygons between two bounds, one per stretch where both exist."""
    out = []
    lo_segs = step_segments(xs, lower, x0, y0)
    hi_segs = step_segments(xs, upper, x0, y0)
    # both bounds are NA on the same rows in practice; pair segments by their x range
    for lo_seg in lo_segs:
        match = [s for s in hi_segs if s[0][0] == lo_seg[0][0] and s[-1][0] == lo_seg[-1][0]]
        if not match:
            continue
        poly = list(match[0]) + list(reversed(lo_seg))
        out.append(path_d(poly) + "Z")
    return out


def marker(shape: str, x: float, y: float, size: float, colour: str) -> str:
    """Distinct shapes so definitions and groups survive grayscale printing."""
    r = size / 2.0
    filled = not shape.endswith("-open")
    fill = colour if filled else "#fff"
    attrs = f'fill="{fill}" stroke="{colour}" stroke-width="1.4"'
    base = shape.removesuffix("-open")
    if base == "circle":
        return f'<circle cx="{f(x)}" cy="{f(y)}" r="{f(r)}" {attrs}/>'
    if base == "square":
        return f'<rect x="{f(x - r)}" y="{f(y - r)}" width="{f(size)}" height="{f(size)}" {attrs}/>'
    if base == "triangle":
        pts = [(x, y - r * 1.15), (x + r * 1.1, y + r * 0.85), (x - r * 1.1, y + r * 0.85)]
    else:  # diamond
        pts = [(x, y - r * 1.25), (x + r * 1.25, y), (x, y + r * 1.25), (x - r * 1.25, y)]
    return f'<path d="{path_d(pts)}Z" {attrs}/>'


def text(
    x: float,
    y: float,
    content: str,
    *,
    anchor: str = "start",
    size: float = 11,
    weight: str = "normal",
    colour: str = "#222",
    extra: str = "",
) -> str:
    """A label; ``content`` is escaped here so no caller can forget."""
    w = f' font-weight="{weight}"' if weight != "normal" else ""
    fill = f' fill="{colour}"' if colour != "#222" else ""
    return (
        f'<text x="{f(x)}" y="{f(y)}" text-anchor="{anchor}" font-size="{size:g}"{w}{fill}'
        f"{(' ' + extra) if extra else ''}>{esc(content)}</text>"
    )


def line(x1: float, y1: float, x2: float, y2: float, attrs: str) -> str:
    return f'<line x1="{f(x1)}" y1="{f(y1)}" x2="{f(x2)}" y2="{f(y2)}" {attrs}/>'


def hatch_pattern(pid: str, colour: str = "#777") -> str:
    return (
        f'<pattern id="{pid}" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{colour}" stroke-width="2"/></pattern>'
    )


def document(
    ids: Ids, width: float, height: float, title: str, desc: str, body: str, defs: str = ""
) -> str:
    """An accessible figure: role=img, labelled by its own <title> and <desc>."""
    tid, did = ids.new("t"), ids.new("d")
    defs_block = f"<defs>{defs}</defs>" if defs else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="fig" role="img" '
        f'aria-labelledby="{tid} {did}" viewBox="0 0 {f(width)} {f(height)}" '
        f'width="{f(width)}" height="{f(height)}" font-family="{esc(FONT)}">'
        f'<title id="{tid}">{esc(title)}</title><desc id="{did}">{esc(desc)}</desc>'
        f'{defs_block}<rect class="bg" x="0" y="0" width="{f(width)}" height="{f(height)}" '
        f'fill="#fff"/>{body}</svg>'
    )
