"""The site's release policy, enforced before anything is computed or sent.

Each rule that refuses a query raises ``PolicyRefusal`` carrying the rule's
name and threshold, so the coordinator receives a clean reason (no data) and
the privacy officer can see which setting to change. Rules here look at the
query and at the site's own rows; rules on the pooled release (small cells
after secure summation, leave-one-out) run where the pooled vector exists.
"""

from __future__ import annotations

from her2fed.errors import Her2fedError
from her2fed.protocol import Query
from her2fed.study import Analysis, Study
from site_agent.config import Policy


class PolicyRefusal(Her2fedError):
    """A query the site's policy does not allow; names the rule and its threshold."""

    def __init__(self, rule: str, threshold: object, reason: str, fix: str) -> None:
        self.rule = rule
        self.threshold = threshold
        super().__init__(f"refused by site policy {rule} = {threshold!r}: {reason}. Fix: {fix}")


def _allowed(policy_list: tuple[str, ...], value: str) -> bool:
    return not policy_list or value in policy_list


def check_study(policy: Policy, study: Study) -> None:
    """Rules that depend only on the study: checked once, before any data are read."""
    grid = study.grid.grid_days
    if grid < policy.min_grid_days:
        raise PolicyRefusal(
            "min_grid_days",
            policy.min_grid_days,
            f"the study's grid of {grid} day(s) is finer than the coarsest grid this site allows",
            f"ask the consortium for grid_days >= {policy.min_grid_days}, or have the privacy "
            "officer lower min_grid_days in [policy]",
        )
    check_dp_study(policy, study)
    for a in study.analyses:
        check_analysis(policy, a)


def check_dp_study(policy: Policy, study: Study) -> None:
    """Differential-privacy rules that depend only on the study (docs/privacy.md).

    The study declares the noise every site adds (so the coordinator knows to
    post-process and label the results); the site's policy value is a floor.
    Only integer counts can carry Skellam noise, so float summaries (Cox sums,
    site-stratified log-rank parts) are refused under DP instead of released exact.
    """
    declared = study.dp_noise_variance
    if declared < policy.dp_noise_variance:
        raise PolicyRefusal(
            "dp_noise_variance",
            policy.dp_noise_variance,
            f"the study declares dp_noise_variance = {declared}, less noise than this site "
            "requires",
            f"declare dp_noise_variance >= {policy.dp_noise_variance} in the study's [study] "
            "table, or have the privacy officer lower dp_noise_variance in [policy]",
        )
    if declared == 0:
        return
    for a in study.analyses:
        if a.kind == "cox":
            raise PolicyRefusal(
                "dp_cox_unsupported",
                declared,
                f"analysis {a.id!r} is a Cox model, whose float sums differential privacy "
                "here cannot protect",
                "run Cox models in a study without dp_noise_variance, or drop the analysis",
            )
        if a.kind == "logrank" and a.strata_by_site:
            raise PolicyRefusal(
                "dp_float_summary_unsupported",
                declared,
                f"analysis {a.id!r} is a site-stratified log-rank test, whose float parts "
                "differential privacy here cannot protect",
                "stratify by a declared column instead of strata = \"site\", or drop the analysis",
            )


def check_analysis(policy: Policy, a: Analysis) -> None:
    if not _allowed(policy.allowed_kinds, a.kind):
        raise PolicyRefusal(
            "allowed_kinds",
            list(policy.allowed_kinds),
            f"analysis {a.id!r} is of kind {a.kind!r}",
            "remove the analysis or extend allowed_kinds",
        )
    if not _allowed(policy.allowed_datasets, a.dataset):
        raise PolicyRefusal(
            "allowed_datasets",
            list(policy.allowed_datasets),
            f"analysis {a.id!r} reads dataset {a.dataset!r}",
            "remove the analysis or extend allowed_datasets",
        )
    if a.endpoint is not None and not _allowed(policy.allowed_endpoints, a.endpoint):
        raise PolicyRefusal(
            "allowed_endpoints",
            list(policy.allowed_endpoints),
            f"analysis {a.id!r} uses endpoint {a.endpoint!r}",
            "remove the analysis or extend allowed_endpoints",
        )
    for cov in a.covariates:
        if not _allowed(policy.allowed_covariates, cov.column):
            raise PolicyRefusal(
                "allowed_covariates",
                list(policy.allowed_covariates),
                f"analysis {a.id!r} uses covariate {cov.column!r}",
                "remove the covariate or extend allowed_covariates",
            )
    levels = len(a.group_labels) * a.n_strata
    if levels > policy.max_levels:
        raise PolicyRefusal(
            "max_levels",
            policy.max_levels,
            f"analysis {a.id!r} asks for {levels} group x stratum cells",
            "declare fewer levels or merge rare ones",
        )


Applied = tuple[tuple[str, object], ...]
"""(rule, threshold) pairs a query passed: what the audit log says was checked."""


def check_query(policy: Policy, a: Analysis, query: Query, n: int, steps_seen: int) -> Applied:
    """Rules that need the site's cohort size (complete cases) or the session so far.

    Returns the rules the query passed, so the audit record of the payload
    can list them; a rule the query breaks raises instead.
    """
    if n < policy.min_cohort:
        raise PolicyRefusal(
            "min_cohort",
            policy.min_cohort,
            f"analysis {a.id!r} has fewer complete cases at this site than the minimum cohort",
            "widen the cohort, or this site sits this analysis out",
        )
    if a.kind == "cox":
        p = len(a.coef_names)
        if p > policy.cox_max_params_per_row * n:
            raise PolicyRefusal(
                "cox_max_params_per_row",
                policy.cox_max_params_per_row,
                f"analysis {a.id!r} fits {p} parameters on too few rows at this site",
                "use fewer covariates or levels",
            )
        if query.step in ("cox_sums", "cox_derivs") and steps_seen >= policy.cox_max_iterations:
            raise PolicyRefusal(
                "cox_max_iterations",
                policy.cox_max_iterations,
                f"analysis {a.id!r} has already asked for {steps_seen} Newton evaluations",
                "a fit needing more evaluations is refused; check the model",
            )
        return (
            ("min_cohort", policy.min_cohort),
            ("cox_max_params_per_row", policy.cox_max_params_per_row),
            ("cox_max_iterations", policy.cox_max_iterations),
        )
    return (("min_cohort", policy.min_cohort),)


def check_participants(policy: Policy, n: int, what: str) -> None:
    """The site's own minimum of contributing sites, checked by the site on each secure sum.

    The coordinator refuses fewer than three anyway; a site whose officer
    wants more (``min_sites``) must not rely on that: it refuses to mask or
    to confirm a sum with fewer.
    """
    if n < policy.min_sites:
        raise PolicyRefusal(
            "min_sites",
            policy.min_sites,
            f"{what} has {n} contributing site(s), fewer than this site's minimum",
            "the consortium runs the study with more sites, or the privacy officer lowers "
            "min_sites in [policy]",
        )
