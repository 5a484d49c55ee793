"""Cox proportional hazards with Efron or Breslow ties, federated exactly.

Site side: at a given beta every site sends, per stratum and grid bin, the
sums over subjects *leaving* the risk set in that bin and over subjects *dying*
in that bin of w = exp(x.beta), w*x and w*x*x^T (plus the death count and the
sum of x over deaths). All of it is additive. The coordinator turns exit sums
into risk-set sums by a reverse cumulative sum and evaluates the Efron terms,
which need only risk-set and tied-death sums at each time - so Efron ties
federate exactly, not just Breslow.

For a test stratified *by site* each site evaluates the objective on its own
sums and the log-likelihood, gradient and information are added instead.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from her2fed.dists import chi2_sf, normal_sf, z_two_sided
from her2fed.errors import EstimationError
from her2fed.grid import FloatArray, IntArray, TimeGrid
from her2fed.summary import Additive

Ties = Literal["efron", "breslow"]
# R coxph.control defaults used to flag coefficients that may be infinite.
_INF_EPS = 1e-9
_INF_TOL = float(np.sqrt(1e-9))


@dataclass(frozen=True)
class CoxMoments(Additive):
    """Complete-case count, event count, covariate sums and dropped rows (first round)."""

    n: NDArray[np.int64]
    n_events: NDArray[np.int64]
    dropped: NDArray[np.int64]
    sum_x: NDArray[np.float64]


@dataclass(frozen=True)
class CoxSums(Additive):
    """Per stratum and bin: exit and tied-death sums of w, w*x, w*x*x^T.

    The symmetric w*x*x^T is kept as its upper triangle (``p(p+1)/2`` values,
    row-major, ``numpy.triu_indices`` order): it is the bulk of what a site
    masks and sends each Newton round, so halving it matters.
    """

    death_n: NDArray[np.int64]
    exit_w: NDArray[np.float64]
    exit_wx: NDArray[np.float64]
    exit_wxx: NDArray[np.float64]
    death_w: NDArray[np.float64]
    death_wx: NDArray[np.float64]
    death_wxx: NDArray[np.float64]
    death_x: NDArray[np.float64]


@dataclass(frozen=True)
class CoxLocalFit(Additive):
    """A site's own Cox fit as information-weighted coefficients (for the warm start).

    Summed over sites, ``info`` and ``ib`` give the inverse-variance combination
    (sum I_k)^-1 sum I_k b_k, which lands Newton close to the pooled optimum
    so the pooled fit needs few network rounds. Only the sum is ever seen.
    """

    ib: NDArray[np.float64]
    info: NDArray[np.float64]
    fitted: NDArray[np.int64]


@dataclass(frozen=True)
class CoxDerivs(Additive):
    """Log partial likelihood, score and observed information at one beta."""

    loglik: NDArray[np.float64]
    grad: NDArray[np.float64]
    info: NDArray[np.float64]


def cox_moments(x: FloatArray, event: IntArray, dropped: int) -> CoxMoments:
    """First-round summary: what the coordinator needs to centre covariates."""
    return CoxMoments(
        n=np.array([x.shape[0]], np.int64),
        n_events=np.array([int((event > 0).sum())], np.int64),
        dropped=np.array([dropped], np.int64),
        sum_x=x.sum(axis=0).astype(np.float64),
    )


@dataclass(frozen=True)
class CoxRows:
    """A site's complete cases arranged once for every Newton step of a fit.

    Rows are split into deaths and censorings (a subject leaves the risk set
    in exactly one of the two, so exit sums = death sums + censoring sums and
    each row is visited once per step) and the centred design is stored
    transposed, so every covariate is one contiguous vector.
    """

    center: tuple[float, ...]
    n_strata: int
    n_bins: int
    bins: tuple[int, ...]
    dead_cell: IntArray
    dead_xt: FloatArray
    cens_cell: IntArray
    cens_xt: FloatArray
    dead_runs: tuple[IntArray, IntArray]
    """(cells present, start of each cell's run) of the sorted deaths; likewise below."""
    cens_runs: tuple[IntArray, IntArray]


def cox_rows(
    grid: TimeGrid,
    time: FloatArray,
    event: IntArray,
    stratum: IntArray,
    x: FloatArray,
    center: tuple[float, ...],
    n_strata: int,
    merged: tuple[int, ...] = (),
) -> CoxRows:
    """Arrange a site's rows for ``cox_sums``; ``center`` = pooled covariate means.

    ``merged`` (cells ``stratum * n_bins + last bin``, increasing) puts each
    row at the end of its merged risk-set bin, the rows after a stratum's last
    merged bin censored there, and leaves out strata with no merged bin (the
    disclosure rules suppressed them): the Cox model of the same rows on
    coarser times.
    """
    bins, ev = grid.bin(time, event)
    cell = stratum * grid.n_bins + bins
    keep = np.ones(cell.size, dtype=bool)
    if merged:
        ends = np.asarray(merged, dtype=np.int64)
        last = np.full(n_strata, -1, dtype=np.int64)
        last[ends // grid.n_bins] = ends  # increasing: the last write per stratum wins
        stratum_last = last[stratum]
        keep = stratum_last >= 0
        late = cell > stratum_last
        ev = np.where(late, 0, ev)
        at = np.minimum(np.searchsorted(ends, cell), ends.size - 1)
        cell = np.where(late, stratum_last, ends[at])
        ev, cell, x = ev[keep], cell[keep], x[keep]
    dead = ev > 0
    # rows sorted by cell: every Newton step then sums contiguous runs (np.add.reduceat)
    # instead of one weighted bincount per sum; numpy sorts 16-bit keys by radix, so a
    # grid of up to 65,535 cells sorts in linear time
    key = cell.astype(np.uint16) if n_strata * grid.n_bins <= 0xFFFF else cell
    dead_rows, cens_rows = np.flatnonzero(dead), np.flatnonzero(~dead)
    dead_rows = dead_rows[np.argsort(key[dead_rows], kind="stable")]
    cens_rows = cens_rows[np.argsort(key[cens_rows], kind="stable")]
    dead_cell, cens_cell = cell[dead_rows], cell[cens_rows]
    # deaths then censorings, centred and transposed (every covariate one contiguous
    # row): gathering whole rows first is the cheap order of the two copies
    order = np.concatenate([dead_rows, cens_rows])
    xt = np.empty((x.shape[1], order.size))
    np.subtract(np.take(x, order, axis=0).T, np.asarray(center, dtype=np.float64)[:, None], out=xt)
    return CoxRows(
        center=center,
        n_strata=n_strata,
        n_bins=grid.n_bins,
        bins=merged,
        dead_cell=dead_cell,
        dead_xt=xt[:, : dead_rows.size],
        cens_cell=cens_cell,
        cens_xt=xt[:, dead_rows.size :],
        dead_runs=_runs(dead_cell),
        cens_runs=_runs(cens_cell),
    )


def recentred(rows: CoxRows, center: tuple[float, ...]) -> CoxRows:
    """The same arrangement about another centre.

    A site's own fit centres on its own means before the pooled means are
    known; shifting the sorted design costs one pass, where arranging it
    again costs a sort and two gathers. Centring changes no derivative (the
    shift cancels in every risk-set ratio), only the rounding of the sums.
    """
    shift = (np.asarray(rows.center) - np.asarray(center, dtype=np.float64))[:, None]
    return replace(rows, center=center, dead_xt=rows.dead_xt + shift, cens_xt=rows.cens_xt + shift)


def _runs(sorted_cells: IntArray) -> tuple[IntArray, IntArray]:
    """The distinct cells of a sorted cell vector and where each one's run starts."""
    if sorted_cells.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    return sorted_cells[starts], starts


_SCRATCH = threading.local()

CHUNK_ROWS = 8192
"""Rows summed per pass: the (1 + p + p(p+1)/2, rows) work block of a pass stays
within a few MB (cache-sized) whatever the site's size; a whole-site block was
~80 MB at 200,000 rows and no faster."""


def _scratch(size: int) -> FloatArray:
    """A work buffer reused across the passes and Newton steps of this thread."""
    buf: FloatArray | None = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < size:
        buf = np.empty(size)
        _SCRATCH.buf = buf
    return buf[:size]


def _cell_sums(
    runs: tuple[IntArray, IntArray], n_cells: int, beta: FloatArray, xt: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-cell sums of w, w*x and w*x*x^T with w = exp(x.beta); x given as rows of xt.

    The rows are sorted by cell (``cox_rows``), so every sum is a ``reduceat``
    over the cells' contiguous ``runs``, taken ``CHUNK_ROWS`` rows at a time (a
    cell whose run crosses a chunk edge gets its two parts added).
    """
    p, n = xt.shape
    iu, ju = np.triu_indices(p)
    k = 1 + p + iu.size
    sums = np.zeros((k, n_cells))
    present, starts = runs
    work = _scratch((k + 1) * min(n, CHUNK_ROWS))
    for r0 in range(0, n, CHUNK_ROWS):
        r1 = min(n, r0 + CHUNK_ROWS)
        m = r1 - r0
        first = int(np.searchsorted(starts, r0, side="right")) - 1  # the run holding row r0
        end = int(np.searchsorted(starts, r1, side="left"))
        seg = starts[first:end] - r0
        seg[0] = 0
        x = xt[:, r0:r1]
        block = work[: k * m].reshape(k, m)
        lin = work[k * m : (k + 1) * m]
        lin.fill(0.0)
        for a in range(p):  # axpy's: no BLAS thread start-up on a matrix-vector product
            lin += beta[a] * x[a]
        np.exp(lin, out=block[0])
        np.multiply(x, block[0], out=block[1 : 1 + p])
        for q, (i, j) in enumerate(zip(iu, ju, strict=True)):
            np.multiply(block[1 + i], x[j], out=block[1 + p + q])
        sums[:, present[first:end]] += np.add.reduceat(block, seg, axis=1)
    s0: FloatArray = sums[0]
    s1: FloatArray = np.ascontiguousarray(sums[1 : 1 + p].T)
    s2: FloatArray = np.ascontiguousarray(sums[1 + p :].T)
    return s0, s1, s2


def cox_sums(rows: CoxRows, beta: FloatArray) -> CoxSums:
    """A site's risk-set and tied-death sums at ``beta``."""
    s, nb = rows.n_strata, rows.n_bins
    p = rows.dead_xt.shape[0]
    n_cells = s * nb
    d_w, d_wx, d_wxx = _cell_sums(rows.dead_runs, n_cells, beta, rows.dead_xt)
    c_w, c_wx, c_wxx = _cell_sums(rows.cens_runs, n_cells, beta, rows.cens_xt)
    death_n = np.bincount(rows.dead_cell, minlength=n_cells).astype(np.int64)
    return CoxSums(
        death_n=death_n.reshape(s, nb),
        exit_w=(d_w + c_w).reshape(s, nb),
        exit_wx=(d_wx + c_wx).reshape(s, nb, p),
        exit_wxx=(d_wxx + c_wxx).reshape(s, nb, -1),
        death_w=d_w.reshape(s, nb),
        death_wx=d_wx.reshape(s, nb, p),
        death_wxx=d_wxx.reshape(s, nb, -1),
        death_x=rows.dead_xt.sum(axis=1),
    )


def _rev_cumsum(a: FloatArray) -> FloatArray:
    out: FloatArray = np.flip(np.cumsum(np.flip(a, axis=1), axis=1), axis=1)
    return out


def derivs_from_sums(sums: CoxSums, beta: FloatArray, ties: Ties) -> CoxDerivs:
    """Log partial likelihood, score and information from (merged) sums.

    With d tied deaths at a time, Efron's l-th term (l = 0..d-1) uses the
    risk-set sums minus l/d of the tied-death sums; Breslow uses l/d = 0. The
    sums over l are written as per-time scalars (sum of 1/phi, c/phi, 1/phi^2,
    c/phi^2, c^2/phi^2, log phi) so the cost is linear in the number of deaths.
    """
    s0 = _rev_cumsum(sums.exit_w)
    s1 = _rev_cumsum(sums.exit_wx)
    s2 = _rev_cumsum(sums.exit_wxx)
    d = sums.death_n
    st, bn = np.nonzero(d > 0)
    counts = d[st, bn]
    # one entry per (time, l) pair, the pairs of each time contiguous
    starts = np.cumsum(counts) - counts
    owner = np.repeat(np.arange(st.size), counts)
    if ties == "efron":
        frac = (np.arange(owner.size) - starts[owner]) / counts[owner]
    else:
        frac = np.zeros(owner.size)
    phi = s0[st, bn][owner] - frac * sums.death_w[st, bn][owner]
    if np.any(phi <= 0) or not np.all(np.isfinite(phi)):
        return CoxDerivs(np.array([-np.inf]), np.zeros_like(beta), np.zeros((beta.size, beta.size)))
    # per time: sums over l of 1/phi, c/phi, 1/phi^2, c/phi^2, c^2/phi^2 and log phi
    terms = np.empty((6, owner.size))
    np.divide(1.0, phi, out=terms[0])
    np.multiply(frac, terms[0], out=terms[1])
    np.multiply(terms[0], terms[0], out=terms[2])
    np.multiply(frac, terms[2], out=terms[3])
    np.multiply(frac, terms[3], out=terms[4])
    np.log(phi, out=terms[5])
    per_time = np.add.reduceat(terms, starts, axis=1) if owner.size else np.zeros((6, 0))
    a0, a1, b0, b1, b2, log_phi = per_time
    S1, D1 = s1[st, bn], sums.death_wx[st, bn]
    S2, D2 = s2[st, bn], sums.death_wxx[st, bn]
    loglik = float(sums.death_x @ beta - log_phi.sum())
    grad = sums.death_x - (S1 * a0[:, None] - D1 * a1[:, None]).sum(axis=0)
    cross = S1.T @ (b1[:, None] * D1)
    outer = S1.T @ (b0[:, None] * S1) - cross - cross.T + D1.T @ (b2[:, None] * D1)
    packed = a0 @ S2 - a1 @ D2  # the weighted sum, still as an upper triangle
    iu, ju = np.triu_indices(beta.size)
    second = np.empty((beta.size, beta.size))
    second[iu, ju] = packed
    second[ju, iu] = packed
    info = second - outer
    return CoxDerivs(np.array([loglik]), grad, info)


@dataclass(frozen=True)
class NewtonOutcome:
    beta: FloatArray
    initial: CoxDerivs
    final: CoxDerivs
    iterations: int
    converged: bool


LOCAL_FIT_EPS = 1e-8
"""Convergence of a site's own fit: it only seeds the pooled Newton (which converges at
1e-12), and the inverse-variance combination is itself off by O(1/n), so iterating the
local fit further buys nothing but time."""


def local_fit(rows: CoxRows, ties: Ties, max_iter: int = 20) -> CoxLocalFit:
    """Fit the model on one site's rows; a site that cannot fit contributes nothing."""
    p = rows.dead_xt.shape[0]
    nothing = CoxLocalFit(np.zeros(p), np.zeros((p, p)), np.zeros(1, np.int64))
    if rows.dead_cell.size == 0:
        return nothing
    gen = newton(p, max_iter=max_iter, eps=LOCAL_FIT_EPS)
    beta = next(gen)
    try:
        # a small site's fit may run off (separation); the overflow is caught below
        with np.errstate(over="ignore", invalid="ignore"):
            while True:
                beta = gen.send(derivs_from_sums(cox_sums(rows, beta), beta, ties))
    except StopIteration as stop:
        outcome: NewtonOutcome = stop.value
    except EstimationError:
        return nothing
    info = outcome.final.info
    if not outcome.converged or not np.all(np.isfinite(outcome.beta)):
        return nothing
    try:
        # a site whose data separate the events (a coefficient running to infinity) would
        # drag the start away; it still counts fully in the pooled fit itself
        if maybe_infinite(outcome, np.linalg.inv(info).astype(np.float64)).any():
            return nothing
    except np.linalg.LinAlgError:
        return nothing
    return CoxLocalFit(info @ outcome.beta, info, np.ones(1, np.int64))


def warm_start(fit: CoxLocalFit) -> FloatArray | None:
    """The inverse-variance combination of the sites' fits, or None if there is none."""
    if int(fit.fitted[0]) == 0:
        return None
    try:
        start: FloatArray = np.linalg.solve(fit.info, fit.ib).astype(np.float64)
    except np.linalg.LinAlgError:
        return None
    return start if np.all(np.isfinite(start)) else None


def newton(
    p: int, *, start: FloatArray | None = None, max_iter: int = 30, eps: float = 1e-12
) -> Generator[FloatArray, CoxDerivs, NewtonOutcome]:
    """Newton-Raphson with step halving, as a coroutine over merged derivatives.

    It yields the next beta to evaluate and is sent the merged derivatives at
    that beta, so the same driver runs in-process, over secure aggregation or
    over a network. Converged when the log-likelihood changes by less than
    ``eps`` relative (R's coxph rule); a step that lowers the likelihood is
    halved towards the previous beta.
    """
    beta = np.zeros(p)
    initial = yield beta
    current = initial
    if not np.isfinite(current.loglik[0]):
        raise EstimationError("the Cox log-likelihood is not finite at beta = 0")
    if start is not None:
        # the log-likelihood at 0 (R's loglik[1], score test) is kept; Newton starts here
        at_start = yield start
        if np.isfinite(at_start.loglik[0]) and at_start.loglik[0] >= initial.loglik[0]:
            beta, current = start, at_start
    iterations, converged = 0, False
    while iterations < max_iter:
        iterations += 1
        try:
            step = np.linalg.solve(current.info, current.grad)
        except np.linalg.LinAlgError:
            raise EstimationError(
                "the Cox information matrix is singular: two covariates are collinear or one "
                "is constant in the pooled data; remove one of them from `covariates`"
            ) from None
        trial = beta + step
        result = yield trial
        halvings = 0
        while not result.loglik[0] >= current.loglik[0] - eps * abs(current.loglik[0]):
            halvings += 1
            if halvings > 40:
                raise EstimationError("Cox step halving failed to increase the likelihood")
            trial = (beta + trial) / 2
            result = yield trial
        change = abs(result.loglik[0] - current.loglik[0])
        beta, current = trial, result
        if change <= eps * abs(current.loglik[0]):
            converged = True
            break
    return NewtonOutcome(beta, initial, current, iterations, converged)


@dataclass(frozen=True)
class ChiSquareTest:
    stat: float
    df: int
    p: float


@dataclass(frozen=True)
class CoxResult:
    names: tuple[str, ...]
    coef: FloatArray
    se: FloatArray
    z: FloatArray
    p: FloatArray
    hr: FloatArray
    hr_lower: FloatArray
    hr_upper: FloatArray
    conf_level: float
    loglik_initial: float
    loglik_final: float
    iterations: int
    converged: bool
    lr_test: ChiSquareTest
    wald_test: ChiSquareTest
    score_test: ChiSquareTest
    n: int
    n_events: int
    n_dropped: int
    ties: Ties
    warnings: tuple[str, ...] = ()


def maybe_infinite(outcome: NewtonOutcome, var: FloatArray) -> NDArray[np.bool_]:
    """R's coxph check: the step Newton would still take is large next to the coefficient."""
    pending = np.abs(var @ outcome.final.grad)
    flagged: NDArray[np.bool_] = (pending > _INF_EPS) & (pending > _INF_TOL * np.abs(outcome.beta))
    return flagged


def _chisq(stat: float, df: int) -> ChiSquareTest:
    return ChiSquareTest(stat, df, chi2_sf(stat, df))


def cox_result(
    outcome: NewtonOutcome,
    names: tuple[str, ...],
    moments: CoxMoments,
    ties: Ties,
    conf_level: float = 0.95,
) -> CoxResult:
    """Coefficients, SEs, hazard ratios and the three global tests."""
    beta = outcome.beta
    try:
        var: FloatArray = np.linalg.inv(outcome.final.info).astype(np.float64)
        u0 = outcome.initial.grad
        score = float(u0 @ np.linalg.solve(outcome.initial.info, u0))
    except np.linalg.LinAlgError:
        raise EstimationError(
            "the Cox information matrix is singular at the solution; a covariate is "
            "collinear or separates the events; remove it from `covariates`"
        ) from None
    se = np.sqrt(np.diag(var))
    z = beta / se
    zc = z_two_sided(conf_level)
    df = beta.size
    ll0, ll1 = float(outcome.initial.loglik[0]), float(outcome.final.loglik[0])
    warnings: list[str] = []
    if not outcome.converged:
        warnings.append(
            f"Newton-Raphson did not converge in {outcome.iterations} iterations; "
            "a coefficient may be infinite"
        )
    for name, infinite in zip(names, maybe_infinite(outcome, var), strict=True):
        if infinite:
            warnings.append(
                f"coefficient {name!r} may be infinite: the likelihood keeps rising as it grows "
                "(a level with no events, or a covariate that separates the events)"
            )
    with np.errstate(over="ignore"):
        hr, hr_lower, hr_upper = np.exp(beta), np.exp(beta - zc * se), np.exp(beta + zc * se)
    return CoxResult(
        names=names,
        coef=beta,
        se=se,
        z=z,
        p=2 * normal_sf(np.abs(z)),
        hr=hr,
        hr_lower=hr_lower,
        hr_upper=hr_upper,
        conf_level=conf_level,
        loglik_initial=ll0,
        loglik_final=ll1,
        iterations=outcome.iterations,
        converged=outcome.converged,
        lr_test=_chisq(2 * (ll1 - ll0), df),
        wald_test=_chisq(float(beta @ outcome.final.info @ beta), df),
        score_test=_chisq(score, df),
        n=int(moments.n[0]),
        n_events=int(moments.n_events[0]),
        n_dropped=int(moments.dropped[0]),
        ties=ties,
        warnings=tuple(warnings),
    )
