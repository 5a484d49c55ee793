"""``results.json``: the machine-readable contract of DESIGN.md.

Fields may be added, never renamed. Non-finite numbers (a median never
reached, a CI where S(t) = 0) are written as ``null``.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

import her2fed
from her2fed.attrition import A3Result, AttritionCounts, Proportions, a1, a2, a4, reach
from her2fed.cif import CIFCurve
from her2fed.cox import ChiSquareTest, CoxResult
from her2fed.disclosure import Release, ReleaseRule
from her2fed.endpoints import END_STATES
from her2fed.estimate import (
    AttritionResult,
    CurvesResult,
    LogrankOutcome,
    PathwaysResult,
    Result,
)
from her2fed.km import KMCurve, NACurve
from her2fed.study import Analysis


def _num(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_num(x) for x in v.tolist()]
    if isinstance(v, list | tuple):
        return [_num(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _km(c: KMCurve) -> dict[str, Any]:
    m = c.median
    return {
        "time": _num(c.time),
        "n_risk": _num(c.n_risk),
        "n_event": _num(c.n_event),
        "n_censor": _num(c.n_censor),
        "surv": _num(c.surv),
        "std_err": _num(c.std_err),
        "lower": _num(c.lower),
        "upper": _num(c.upper),
        "median": _num(m.estimate),
        "median_lower": _num(m.lower),
        "median_upper": _num(m.upper),
        "quantiles": {
            str(q.prob): {"time": _num(q.estimate), "lower": _num(q.lower), "upper": _num(q.upper)}
            for q in c.quantiles
        },
        "conf_type": c.conf_type,
        "conf_level": c.conf_level,
    }


def _na(c: NACurve) -> dict[str, Any]:
    return {
        "time": _num(c.time),
        "n_risk": _num(c.n_risk),
        "n_event": _num(c.n_event),
        "cumhaz": _num(c.cumhaz),
        "std_err": _num(c.std_err),
    }


def _cif(c: CIFCurve, causes: tuple[int, ...]) -> dict[str, Any]:
    return {
        "time": _num(c.time),
        "n_risk": _num(c.n_risk),
        "n_censor": _num(c.n_censor),
        "n_event": {str(k): _num(c.n_event[:, i]) for i, k in enumerate(causes)},
        "cif": {str(k): _num(c.cif[:, i]) for i, k in enumerate(causes)},
        "std_err": {str(k): _num(c.std_err[:, i]) for i, k in enumerate(causes)},
        "std_err_method": "infinitesimal jackknife (as R survfit)",
    }


def _test(t: ChiSquareTest) -> dict[str, Any]:
    return {"stat": _num(t.stat), "df": t.df, "p": _num(t.p)}


def _cox(r: CoxResult) -> dict[str, Any]:
    def named(v: np.ndarray) -> dict[str, Any]:
        return {n: _num(float(x)) for n, x in zip(r.names, v, strict=True)}

    return {
        "coef": named(r.coef),
        "se": named(r.se),
        "z": named(r.z),
        "p": named(r.p),
        "hr": named(r.hr),
        "hr_lower": named(r.hr_lower),
        "hr_upper": named(r.hr_upper),
        "conf_level": r.conf_level,
        "ties": r.ties,
        "loglik_initial": _num(r.loglik_initial),
        "loglik_final": _num(r.loglik_final),
        "iterations": r.iterations,
        "converged": r.converged,
        "lr_test": _test(r.lr_test),
        "wald_test": _test(r.wald_test),
        "score_test": _test(r.score_test),
        "n": r.n,
        "n_events": r.n_events,
        "n_dropped": r.n_dropped,
        "warnings": list(r.warnings),
    }


ATTRITION_DEFINITIONS = {
    "A1": "no next line / patients who started line k",
    "A2": "no next line / patients who finished line k (still on treatment removed)",
    "A3": "1 - cumulative incidence of a next line at 5 years (death competing)",
    "A4": "no next line and death within 6 months of the end of line k / patients whose "
    "line k ended",
    "reach": "patients who reached line k / all patients",
}


Hidden = Mapping[str, NDArray[np.bool_]]
"""Per count field, the cells of one group (or of the total) withheld: [slot(, state)]."""


def _hidden(hide: Hidden, name: str, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    mask = hide.get(name)
    return np.zeros(shape, dtype=bool) if mask is None else mask


def _shown(values: NDArray[np.int64], hidden: NDArray[np.bool_]) -> list[Any]:
    """Counts as JSON, ``null`` where disclosure control withheld the cell."""
    return [None if h else v for v, h in zip(_num(values), hidden.tolist(), strict=True)]


def _props(
    p: Proportions, g: int, n: int, hidden: NDArray[np.bool_] | None = None
) -> list[dict[str, Any]]:
    """A proportion whose numerator or denominator is withheld is withheld whole."""
    out: list[dict[str, Any]] = []
    for k in range(n):
        if hidden is not None and hidden[k]:
            out.append(dict.fromkeys(("estimate", "lower", "upper", "numerator", "denominator")))
            continue
        out.append(
            {
                "estimate": _num(float(p.estimate[g, k])),
                "lower": _num(float(p.lower[g, k])),
                "upper": _num(float(p.upper[g, k])),
                "numerator": int(p.numerator[g, k]),
                "denominator": int(p.denominator[g, k]),
            }
        )
    return out


def _attrition_group(
    c: AttritionCounts, a3r: A3Result, g: int, n: int, hide: Hidden
) -> dict[str, Any]:
    """Group g's counts and A1-A4 for the first n line slots (n < K after top-coding)."""
    k = c.k

    def cells(name: str) -> list[Any]:
        values: NDArray[np.int64] = getattr(c, name)[g, :n]
        return _shown(values, _hidden(hide, name, (k,))[:n])

    def either(a: str, b: str) -> NDArray[np.bool_]:
        both: NDArray[np.bool_] = _hidden(hide, a, (k,)) | _hidden(hide, b, (k,))
        return both

    states = _hidden(hide, "end_state", (k, len(END_STATES)))
    return {
        "patients": int(c.patients[g]),
        "reached": cells("reached"),
        "started": cells("started"),
        "started_anti_her2": cells("started_anti_her2"),
        "finished": cells("finished"),
        "no_next": cells("no_next"),
        "no_next_finished": cells("no_next_finished"),
        "no_next_death_6m": cells("no_next_death"),
        "end_states": {
            s: _shown(c.end_state[g, :n, i], states[:n, i]) for i, s in enumerate(END_STATES)
        },
        "A1": _props(a1(c), g, n, either("no_next", "started")),
        "A2": _props(a2(c), g, n, either("no_next_finished", "finished")),
        "A3": [
            {
                "estimate": _num(float(a3r.estimate[g, k])),
                "lower": _num(float(a3r.lower[g, k])),
                "upper": _num(float(a3r.upper[g, k])),
                "std_err": _num(float(a3r.std_err[g, k])),
            }
            for k in range(n)
        ],
        "A4": _props(a4(c), g, n, either("no_next_death", "finished")),
        "reach": _props(reach(c), g, n, _hidden(hide, "reached", (k,))),
    }


def _attrition(r: AttritionResult, top_line: int) -> dict[str, Any]:
    """``top_line`` is the study's max_line, or lower when disclosure control merged the
    later lines into it."""
    groups = {"all": _attrition_group(r.overall, r.a3_overall, 0, top_line, r.withheld_total)}
    if r.labels != ("all",):
        for g, label in enumerate(r.labels):
            hide = {name: mask[g] for name, mask in r.withheld.items()}
            groups[label] = _attrition_group(r.counts, r.a3, g, top_line, hide)
    return {
        "lines": [str(k) for k in range(1, top_line)] + [f"{top_line}+"],
        "definitions": ATTRITION_DEFINITIONS,
        "groups": groups,
        "n_dropped": int(r.counts.dropped[0]),
    }


def _pathways(r: PathwaysResult, max_line: int) -> dict[str, Any]:
    t = r.table
    first = t.first.sum(axis=0)
    trans = t.transitions.sum(axis=0)
    targets = [*t.labels, *t.terminal_states]
    transitions = [
        {"from_line": k + 1, "from": t.labels[a], "to": targets[b], "count": int(trans[k, a, b])}
        for k in range(trans.shape[0])
        for a, b in zip(*np.nonzero(trans[k]), strict=True)
    ]
    return {
        "lines": max_line,
        "regimens": list(t.labels),
        "terminal_states": list(t.terminal_states),
        "first_line": {lab: int(first[i]) for i, lab in enumerate(t.labels) if first[i]},
        "transitions": transitions,
        "merged_into_other": list(t.merged),
        "min_count": t.min_count,
    }


def pooled_json(
    analysis: Analysis, result: Result, release: Release | None = None
) -> dict[str, Any]:
    if isinstance(result, AttritionResult):
        top = analysis.max_line
        if release is not None and release.top_slot is not None:
            top = min(top, release.top_slot + 1)
        return _attrition(result, top)
    if isinstance(result, PathwaysResult):
        return _pathways(result, analysis.max_line)
    if isinstance(result, CoxResult):
        return _cox(result)
    if isinstance(result, LogrankOutcome):
        t = result.test
        return {
            "chisq": _num(t.chisq),
            "df": t.df,
            "p": _num(t.p),
            "rho": t.rho,
            "observed": dict(zip(result.labels, _num(t.observed), strict=True)),
            "expected": dict(zip(result.labels, _num(t.expected), strict=True)),
            "variance": _num(t.variance),
            "n_dropped": result.n_dropped,
        }
    assert isinstance(result, CurvesResult)
    groups: dict[str, Any] = {}
    for label, curve in result.groups.items():
        if isinstance(curve, KMCurve):
            groups[label] = _km(curve)
        elif isinstance(curve, NACurve):
            groups[label] = _na(curve)
        else:
            groups[label] = _cif(curve, analysis.causes)
    return {"groups": groups, "n_dropped": result.n_dropped}


def results_document(
    *,
    name: str,
    study_hash: str,
    analyses: Mapping[str, Analysis],
    results: Mapping[str, Result],
    sites: tuple[str, ...],
    grid_days: int,
    horizon_days: int,
    rounds: int,
    transport: str,
    aggregation: dict[str, Any] | None = None,
    rules: dict[str, Any] | None = None,
    countries: dict[str, str] | None = None,
    release_rule: ReleaseRule | None = None,
    releases: Mapping[str, Release] | None = None,
) -> dict[str, Any]:
    releases = releases or {}
    return {
        "study": {
            "name": name,
            "hash": study_hash,
            "sites": list(sites),
            "grid_days": grid_days,
            "horizon_days": horizon_days,
            "rounds": rounds,
            "transport": transport,
            "countries": countries or {},
            "rule_set": rules,
            "aggregation": aggregation,
            "disclosure": None
            if release_rule is None
            else {
                "min_cell": release_rule.min_cell,
                "min_at_risk": release_rule.min_at_risk,
                "method": "docs/privacy.md#disclosure-control-on-the-pooled-release",
            },
            "software": {
                "her2fed": her2fed.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "analyses": {
            aid: {
                "kind": analyses[aid].kind,
                "pooled": pooled_json(analyses[aid], res, releases.get(aid)),
                "disclosure": releases[aid].as_json() if aid in releases else None,
                "per_site": None,
            }
            for aid, res in results.items()
        },
    }
