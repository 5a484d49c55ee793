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
from her2fed.cif import CIFCurve
from her2fed.cox import ChiSquareTest, CoxResult
from her2fed.estimate import CurvesResult, LogrankOutcome, Result
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


def pooled_json(analysis: Analysis, result: Result) -> dict[str, Any]:
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
            "aggregation": "plain sum (secure aggregation not yet enabled)",
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
