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

import her2fed
from her2fed.attrition import A3Result, AttritionCounts, Proportions, a1, a2, a4, reach
from her2fed.cif import CIFCurve
from her2fed.cox import ChiSquareTest, CoxResult
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


def _props(p: Proportions, g: int) -> list[dict[str, Any]]:
    return [
        {
            "estimate": _num(float(p.estimate[g, k])),
            "lower": _num(float(p.lower[g, k])),
            "upper": _num(float(p.upper[g, k])),
            "numerator": int(p.numerator[g, k]),
            "denominator": int(p.denominator[g, k]),
        }
        for k in range(p.estimate.shape[1])
    ]


def _attrition_group(c: AttritionCounts, a3r: A3Result, g: int) -> dict[str, Any]:
    return {
        "patients": int(c.patients[g]),
        "reached": _num(c.reached[g]),
        "started": _num(c.started[g]),
        "started_anti_her2": _num(c.started_anti_her2[g]),
        "finished": _num(c.finished[g]),
        "no_next": _num(c.no_next[g]),
        "no_next_finished": _num(c.no_next_finished[g]),
        "no_next_death_6m": _num(c.no_next_death[g]),
        "end_states": {s: _num(c.end_state[g, :, i]) for i, s in enumerate(END_STATES)},
        "A1": _props(a1(c), g),
        "A2": _props(a2(c), g),
        "A3": [
            {
                "estimate": _num(float(a3r.estimate[g, k])),
                "lower": _num(float(a3r.lower[g, k])),
                "upper": _num(float(a3r.upper[g, k])),
                "std_err": _num(float(a3r.std_err[g, k])),
            }
            for k in range(a3r.estimate.shape[1])
        ],
        "A4": _props(a4(c), g),
        "reach": _props(reach(c), g),
    }


def _attrition(r: AttritionResult, max_line: int) -> dict[str, Any]:
    groups = {"all": _attrition_group(r.overall, r.a3_overall, 0)}
    if r.labels != ("all",):
        for g, label in enumerate(r.labels):
            groups[label] = _attrition_group(r.counts, r.a3, g)
    return {
        "lines": [str(k) for k in range(1, max_line)] + [f"{max_line}+"],
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


def pooled_json(analysis: Analysis, result: Result) -> dict[str, Any]:
    if isinstance(result, AttritionResult):
        return _attrition(result, analysis.max_line)
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
) -> dict[str, Any]:
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
                "pooled": pooled_json(analyses[aid], res),
                "per_site": None,
            }
            for aid, res in results.items()
        },
    }
