"""Optional distributed differential privacy: Skellam noise on integer summaries.

Pure functions, no I/O; the site's secret, its budget file and its policy
live in ``site_agent.dp_site``. See docs/privacy.md for the full story.

Mechanism. Each of the ``k`` contributing sites adds, to every integer count
of its summary, independent noise ``Poisson(v / 2k) - Poisson(v / 2k)``
(a symmetric Skellam variable of variance ``v / k``). Skellam variables are
closed under addition, so after secure aggregation the pooled count carries
exactly ``Skellam`` noise of variance ``v`` (the study's
``dp_noise_variance``), and no party - the coordinator included - ever sees a
count with less noise than that, as long as the sites follow the protocol.

Determinism. The noise comes from numpy's ``Generator(PCG64)`` seeded with
HMAC-SHA256(site secret, canonical query || exact summary). Asking the same
question of the same data again therefore returns the identical noisy answer
(averaging repeats learns nothing), while a changed query *or* changed data
draws fresh noise - never the same noise on different counts, which would let
the difference of two answers cancel the noise. numpy documents that
``Generator`` streams may change between numpy versions, so the numpy version
is part of the canonical query: after an upgrade a repeat is a new release and
is charged as one.

Accounting. Per release we charge a parameter ``rho`` with ``eps(a) <= rho * a``
for the release's Renyi DP at every integer order ``a >= 2``; RDP composes
order by order, so rhos add up across releases like zCDP. The Renyi bound of
Agarwal, Kairouz and Liu (2021, "The Skellam Mechanism for Differentially
Private Federated Learning", Thm 3.5 / Cor 3.6, their ``mu`` = our total
variance ``v``) is, for sensitivities ``D1`` (L1) and ``D2`` (L2) and integer
``a > 1``::

    eps(a) <= a D2^2 / (2 v) + min(((2a - 1) D2^2 + 6 D1) / (4 v^2), 3 D1 / (2 v))

We use the slightly larger numerator ``2a D2^2`` and divide by ``a``; the
extra term then falls with ``a``, so ``eps(a) <= rho * a`` with::

    rho = D2^2 / (2 v) + min((2 D2^2 + 6 D1) / (4 v^2), 3 D1 / (2 v))

(the first term alone is the Gaussian's zCDP). The bound is stated for integer
orders only, so ``rho`` is not claimed as zCDP over real orders, and
``epsilon_delta`` converts with integer orders only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from her2fed.attrition import AttritionCounts
from her2fed.catalog import ENDPOINTS
from her2fed.protocol import Query
from her2fed.study import REGISTRY, Analysis, Study
from her2fed.summary import Additive

SCHEME = "her2fed-dp-skellam-v1"
"""Versions the canonical bytes: a change of scheme is a new release, charged anew."""

# Fields of an analysis that only the coordinator reads (confidence level and
# type, quantiles, rare-regimen grouping, Cox ties): two queries that differ only
# in these make the same site summary, so they share a seed and a charge.
_COORDINATOR_ONLY = ("id", "conf_type", "conf_level", "quantiles", "min_count", "ties")


class DPUnsupported(ValueError):
    """A summary DP cannot protect (float fields); the site turns it into a refusal."""


@dataclass(frozen=True)
class Sensitivity:
    """How much one patient can change a summary: L1 and L2 norms over all its counts."""

    l1: float
    l2: float


def skellam_rho(variance: float, sens: Sensitivity) -> float:
    """zCDP rho of one release with total Skellam noise variance ``variance`` (see module doc)."""
    if variance <= 0:
        return math.inf
    d1, d2sq = sens.l1, sens.l2**2
    extra = min((2 * d2sq + 6 * d1) / (4 * variance**2), 3 * d1 / (2 * variance))
    return d2sq / (2 * variance) + extra


def epsilon_delta(rho: float, delta: float = 1e-6) -> float:
    """(eps, delta)-DP of RDP curve ``rho * a`` at integer orders (Mironov 2017, Prop. 3).

    ``eps = min over integer a >= 2 of rho a + log(1/delta) / (a - 1)``; over
    real orders this would be the zCDP conversion ``rho + 2 sqrt(rho log(1/delta))``,
    which it can only exceed.
    """
    if rho <= 0:
        return 0.0
    log_inv = math.log(1 / delta)
    best = 1 + math.sqrt(log_inv / rho)  # the real optimum; the integer one is a neighbour
    orders = {max(2, math.floor(best)), max(2, math.ceil(best))}
    return min(rho * a + log_inv / (a - 1) for a in orders)


def sensitivity(analysis: Analysis, query: Query, max_lines: int) -> Sensitivity:
    """Per-patient sensitivity of the summary a query releases (add/remove one patient).

    ``max_lines`` bounds the rows one patient contributes to a per-line
    endpoint or registry summary; the site checks its data against the bound
    (``site_agent.dp_site``). Bounds are worst cases: all of a patient's rows
    may fall in the same cell, so L2 is not the square root of L1's row count.

    - patient-level event table: one row -> one cell (event, censored or
      dropped): L1 = L2 = 1. Tables of a site's own dataset are taken as one
      row per patient (the site vouches for its table).
    - per-line event table: L rows, each one cell: L1 = L2 = L, with
      L = number of lines the study selects, else ``max_lines``.
    - ``attrition_cif`` (an event table of line slots): L1 = L2 = L.
    - ``attrition_counts``: ``patients`` 1, ``reached`` up to K (one per line
      slot, never top-coded), and per line row at most 7 cells (started,
      anti-HER2, finished, no_next, no_next_finished, no_next_death, end_state)
      or 1 (dropped): L1 = 1 + K + 7L, L2^2 = 1 + K + 7L^2.
    - ``pathways``: line 1's regimen (or dropped) and one transition per line
      up to K-1, all in different cells: L1 = K, L2^2 = K.
    """
    K = analysis.max_line
    if query.step == "pathways":
        return Sensitivity(float(K), math.sqrt(K))
    lines = lines_per_patient(analysis, max_lines)
    if query.step == "attrition_counts":
        return Sensitivity(float(1 + K + 7 * lines), math.sqrt(1 + K + 7 * lines**2))
    return Sensitivity(float(lines), float(lines))


def uses_line_bound(analysis: Analysis) -> bool:
    """Whether a patient's rows here are bounded only by the policy (every line is read)."""
    if analysis.dataset != REGISTRY or analysis.lines:
        return False
    return analysis.endpoint is None or ENDPOINTS[analysis.endpoint].per_line


def lines_per_patient(analysis: Analysis, max_lines: int) -> int:
    """Rows one patient contributes to this analysis (1 unless it reads per-line rows)."""
    if uses_line_bound(analysis):
        return max_lines
    if analysis.dataset == REGISTRY and analysis.lines:
        return len(analysis.lines)
    return 1


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def canonical_query(
    study: Study, analysis: Analysis, query: Query, *, variance: float, n_sites: int
) -> bytes:
    """The bytes that say which release a query is, independent of naming and order.

    Sorted-key JSON of: the scheme, the numpy version (its streams seed the
    noise), the grid, the line-of-therapy rules (registry analyses only), every
    analysis field the site's summary depends on (not its id, nor fields only
    the coordinator reads), the step, its parameters and the noise settings.
    The study's name, file bytes and session id are left out on purpose: the
    same question about the same data in a renamed or amended study returns
    the same noisy answer instead of a fresh draw that could be averaged.
    """
    spec = {
        k: v for k, v in _jsonable(analysis).items() if k not in _COORDINATOR_ONLY
    }
    doc = {
        "scheme": SCHEME,
        "numpy": np.__version__,
        "grid": [study.grid.grid_days, study.grid.horizon_days],
        "rules": _jsonable(study.rules) if analysis.dataset == REGISTRY else None,
        "analysis": spec,
        "step": query.step,
        "beta": list(query.beta),
        "center": list(query.center),
        "variance": variance,
        "n_sites": n_sites,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def summary_bytes(summary: Additive) -> bytes:
    """The exact summary, layout included, as bytes (mixed into the seed, never stored)."""
    h = hashlib.sha256(json.dumps([type(summary).__name__, summary.layout()]).encode())
    for value in summary.arrays().values():
        dtype = "<i8" if value.dtype.kind in "iu" else "<f8"
        h.update(np.ascontiguousarray(value, dtype).tobytes())
    return h.digest()


def release_seed(secret: bytes, canonical: bytes, summary: Additive) -> bytes:
    """HMAC-SHA256 keyed by the site secret: unpredictable to anyone without it."""
    if not secret:
        raise ValueError("the DP seed needs a non-empty site secret")
    return hmac.new(secret, canonical + b"\x00" + summary_bytes(summary), hashlib.sha256).digest()


def skellam_noise(seed: bytes, size: int, variance: float) -> NDArray[np.int64]:
    """``size`` independent symmetric Skellam integers of variance ``variance``.

    ``Poisson(variance / 2) - Poisson(variance / 2)`` from numpy's
    ``Generator(PCG64)`` seeded with all 256 bits of ``seed``; the values are
    integers by construction (numpy's Poisson sampler returns int64).
    """
    if variance < 0 or not math.isfinite(variance):
        raise ValueError(f"noise variance must be finite and >= 0, got {variance}")
    if variance == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(seed))))
    lam = variance / 2
    plus = rng.poisson(lam, size)
    minus = rng.poisson(lam, size)
    return (plus - minus).astype(np.int64)


def noisy_summary(summary: Additive, seed: bytes, site_variance: float) -> Additive:
    """The summary with Skellam noise of variance ``site_variance`` on every integer count.

    Float fields (Cox sums, log-rank parts) cannot be protected this way, so
    a summary that has any is refused rather than released half-noised.
    """
    floats = [k for k, v in summary.arrays().items() if v.dtype.kind == "f"]
    if floats:
        raise DPUnsupported(
            f"{type(summary).__name__} has float fields {floats}, "
            "which Skellam noise cannot protect"
        )
    ints, empty = summary.flatten()
    noise = skellam_noise(seed, ints.size, site_variance)
    return summary.unflatten(ints + noise, empty)


def site_share(variance: float, n_sites: int) -> float:
    """Each site's share of the noise variance so that ``n_sites`` shares sum to ``variance``."""
    if n_sites < 1:
        raise ValueError(f"the number of contributing sites must be >= 1, got {n_sites}")
    return variance / n_sites


# --- the coordinator's side: post-processing (free under DP) -----------------------------


def _attrition_consistent(c: AttritionCounts) -> AttritionCounts:
    """Noisy attrition counts made logically consistent (numerator <= denominator)."""
    patients = np.maximum(c.patients, 0)
    started = np.maximum(c.started, 0)
    finished = np.clip(c.finished, 0, started)
    no_next = np.clip(c.no_next, 0, started)
    no_next_finished = np.clip(c.no_next_finished, 0, np.minimum(no_next, finished))
    return AttritionCounts(
        patients=patients,
        reached=np.clip(c.reached, 0, patients[:, None]),
        started=started,
        started_anti_her2=np.clip(c.started_anti_her2, 0, started),
        finished=finished,
        no_next=no_next,
        no_next_finished=no_next_finished,
        no_next_death=np.clip(c.no_next_death, 0, no_next_finished),
        end_state=np.maximum(c.end_state, 0),
        dropped=np.maximum(c.dropped, 0),
    )


def clip_counts(summary: Additive) -> Additive:
    """Pooled noisy counts clipped to >= 0 so estimators never see impossible tables.

    Clipping is post-processing of a DP release, so it costs no privacy. With
    every event and censoring count >= 0 the derived numbers at risk are
    non-increasing and never below the events of a bin, so Kaplan-Meier,
    Nelson-Aalen and Aalen-Johansen stay well defined; attrition numerators
    are also capped by their denominators. Float fields are left untouched.
    """
    if isinstance(summary, AttritionCounts):
        return _attrition_consistent(summary)
    fields = {
        k: (np.maximum(v, 0) if v.dtype.kind in "iu" else v) for k, v in summary.arrays().items()
    }
    return type(summary)(**fields)


def clip_all(summaries: Sequence[Additive]) -> list[Additive]:
    return [clip_counts(s) for s in summaries]


# --- the site's side: the budget ledger (state kept by the caller) ------------------------


@dataclass(frozen=True)
class Charge:
    """One release's cost: its key (an HMAC, never a count) and its rho."""

    key: str
    rho: float


@dataclass(frozen=True)
class BudgetDecision:
    """What a round would cost against a study's ledger, before anything is released."""

    spent: float
    asked: float
    limit: float
    new: tuple[Charge, ...]

    @property
    def allowed(self) -> bool:
        # a tiny tolerance so a budget met exactly by float sums is not refused
        return self.spent + self.asked <= self.limit * (1 + 1e-12)


def decide(ledger: Mapping[str, float], charges: Sequence[Charge], limit: float) -> BudgetDecision:
    """Charge only releases the ledger has not seen; identical repeats cost nothing."""
    new: dict[str, Charge] = {}
    for c in charges:
        if c.key not in ledger and c.key not in new:
            new[c.key] = c
    return BudgetDecision(
        spent=float(sum(ledger.values())),
        asked=float(sum(c.rho for c in new.values())),
        limit=limit,
        new=tuple(new.values()),
    )


def charge_key(secret: bytes, seed: bytes) -> str:
    """The ledger's key for a release: a second HMAC, so the ledger reveals no seed."""
    return hmac.new(secret, b"ledger\x00" + seed, hashlib.sha256).hexdigest()
