"""Running a study: every analysis in flight at once, one batch per round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coordinator.transport import SitesDropped, Transport
from her2fed.disclosure import Release, ReleaseRule
from her2fed.estimate import AnalysisRun, Result
from her2fed.study import Study


@dataclass(frozen=True)
class StudyOutcome:
    results: dict[str, Result]
    rounds: int
    sites: tuple[str, ...]
    aggregation: dict[str, object]
    release_rule: ReleaseRule
    """The thresholds the pooled release was held to (the strictest site's)."""
    releases: dict[str, Release]
    """Per analysis, what disclosure control did before estimation."""


def run_study(
    study: Study, transport: Transport, progress: Callable[[str], None] = lambda _: None
) -> StudyOutcome:
    """Run every analysis; if sites drop out, start again on the remaining ones.

    Restarting (rather than continuing) keeps every estimate computed on one
    set of sites: a Cox fit never mixes Newton steps from different sites.
    """
    while True:
        try:
            return _run_once(study, transport, progress)
        except SitesDropped as err:
            progress(f"{err}; restarting the study on the remaining sites")
            transport.exclude(sorted(err.failures))


def _run_once(study: Study, transport: Transport, progress: Callable[[str], None]) -> StudyOutcome:
    rule = transport.release_rule()
    runs = [AnalysisRun(a, study.grid, rule, study.dp_noise_variance) for a in study.analyses]
    rounds = 0
    while not all(r.done for r in runs):
        active = [r for r in runs if not r.done]
        queries = [q for r in active for q in r.queries()]
        rounds += 1
        progress(
            f"round {rounds}: {len(queries)} quer{'y' if len(queries) == 1 else 'ies'} "
            f"({', '.join(sorted({q.step for q in queries}))})"
        )
        merged = transport.aggregate(queries)
        pos = 0
        for run in active:
            n = len(run.queries())
            run.receive(merged[pos : pos + n])
            pos += n
    _leave_one_out(runs, transport, progress)
    results = {r.analysis.id: r.result for r in runs if r.result is not None}
    releases = {r.analysis.id: r.release for r in runs if r.release is not None}
    aggregation = transport.describe()
    if study.dp_noise_variance > 0:
        aggregation = {**aggregation, "differential_privacy": dp_provenance(study)}
    return StudyOutcome(
        results, rounds, tuple(transport.sites()), aggregation, rule, releases
    )


def dp_provenance(study: Study) -> dict[str, object]:
    """What results.json says about DP: the numbers are noisy, and how noisy."""
    return {
        "mechanism": "distributed Skellam noise on every pooled count (docs/privacy.md)",
        "noise_variance": study.dp_noise_variance,
        "noise_sd": study.dp_noise_variance**0.5,
        "post_processing": "pooled counts clipped to >= 0 (attrition numerators to their "
        "denominators) before estimation",
        "note": "estimates and confidence intervals are computed from noisy counts; the "
        "intervals do not include the noise",
    }


MAX_RELEASE_ROUNDS = 20
"""Leave-one-out rounds before the bins still refused are suppressed outright."""


def _leave_one_out(
    runs: list[AnalysisRun], transport: Transport, progress: Callable[[str], None]
) -> None:
    """Each site checks the release minus its own rows; refused bins are merged and asked again.

    Every round merges at least one refused bin into a neighbour (or
    suppresses a series that is down to one refused bin), so the rounds end;
    after ``MAX_RELEASE_ROUNDS`` the series still refused are suppressed.
    """
    checked = {r.analysis.id: r for r in runs if r.released is not None}
    for attempt in range(1, MAX_RELEASE_ROUNDS + 1):
        if not checked:
            return
        failing = transport.confirm_release(
            {aid: (r.released, r.top_slot) for aid, r in checked.items() if r.released is not None}
        )
        if not failing:
            progress(f"release agreed by every site (leave-one-out, {attempt} round(s))")
            return
        progress(
            f"leave-one-out: {sum(len(s) for s in failing.values())} series of "
            f"{', '.join(sorted(failing))} merged further"
        )
        for aid, series in failing.items():
            checked[aid].refuse(series, suppress=attempt == MAX_RELEASE_ROUNDS)
