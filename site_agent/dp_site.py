"""The site's side of differential privacy: its secret, its budget file, its refusals.

``her2fed.dp`` holds the mechanism and the accounting as pure functions; this
module adds what needs the site's files and policy, so the core stays free of
I/O. ``SiteAgent.answer`` makes one call, ``privatize``, on a round's exact
summaries; with the study's ``dp_noise_variance`` at 0 (the default) it returns
them untouched.

Files (next to site.toml, created on first use):

- the noise secret: derived from the site's Ed25519 identity key
  (``keys.site_key``) when that file exists, so a deployed site needs nothing
  new; otherwise ``dp/seed.key``, 32 random bytes written with mode 0600. Losing
  or changing the secret changes every future noise draw (repeats are then new
  releases and are charged again), so back it up with the site's keys.
- the budget ledger ``dp/budget.json``: per study name, the rho charged for
  each distinct release (keyed by an HMAC, never by counts). It is written
  before any noisy summary leaves, so a crash after writing over-counts,
  never under-counts.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from her2fed import dp
from her2fed.errors import SpecError
from her2fed.protocol import Query
from her2fed.study import Analysis
from her2fed.summary import Additive
from site_agent.atomic import write_atomic
from site_agent.config import SiteConfig
from site_agent.policy import PolicyRefusal

if TYPE_CHECKING:
    from site_agent.handlers import SiteAgent

log = logging.getLogger("her2fed.site.dp")

SECRET_FILE = Path("dp") / "seed.key"
LEDGER_FILE = Path("dp") / "budget.json"
_KEY_LABEL = b"her2fed differential-privacy seed v1"
_COX_STEPS = ("cox_moments", "cox_local_fit", "cox_sums", "cox_derivs")
_THREAD_LOCK = threading.Lock()  # flock alone does not exclude threads sharing a process


def site_secret(config: SiteConfig) -> bytes:
    """The key of the site's noise seeds (see the module doc for where it comes from)."""
    identity = config.key_paths.site_key
    if identity.is_file():
        return hmac.new(identity.read_bytes(), _KEY_LABEL, hashlib.sha256).digest()
    path = config.path.parent / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SpecError(
            str(path),
            f"the differential-privacy secret is readable by others (mode {mode:o})",
            f"run `chmod 600 {path}`",
        )
    data = path.read_bytes()
    if len(data) < 32:
        raise SpecError(
            str(path),
            "the differential-privacy secret is shorter than 32 bytes",
            "restore it from the site's backup, or delete it to start a new one (every "
            "later answer then counts as a new release against the budget)",
        )
    return data


def ledger_path(config: SiteConfig) -> Path:
    return config.path.parent / LEDGER_FILE


def load_ledger(config: SiteConfig) -> dict[str, dict[str, float]]:
    """Study name -> {release key: rho}; an absent file is an empty ledger."""
    path = ledger_path(config)
    if not path.exists():
        return {}
    fix = "restore dp/budget.json from the site's backup (deleting it would reset every budget)"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpecError(str(path), f"cannot be read ({type(err).__name__})", fix) from None
    if not isinstance(raw, dict) or not all(
        isinstance(v, dict) and all(isinstance(r, int | float) for r in v.values())
        for v in raw.values()
    ):
        raise SpecError(str(path), "is not a differential-privacy ledger", fix)
    return {str(s): {str(k): float(r) for k, r in v.items()} for s, v in raw.items()}


def save_ledger(config: SiteConfig, ledger: dict[str, dict[str, float]]) -> None:
    """Write atomically (temporary file + rename) so a crash never leaves half a ledger."""
    text = json.dumps(ledger, indent=1, sort_keys=True)
    write_atomic(ledger_path(config), text.encode("utf-8"))


def spent(config: SiteConfig, study_name: str) -> float:
    """The rho a study has spent at this site so far (for the audit log and the officer)."""
    return float(sum(load_ledger(config).get(study_name, {}).values()))


def _check_lines(agent: SiteAgent, analysis: Analysis) -> None:
    """Refuse when a patient has more lines than the sensitivity bound assumes."""
    bound = agent.config.policy.dp_max_lines_per_patient
    if not dp.uses_line_bound(analysis):
        return
    lines = agent.derived().lines
    most = int(lines.groupby("patient_id").size().max()) if len(lines) else 0
    if most > bound:
        raise PolicyRefusal(
            "dp_max_lines_per_patient",
            bound,
            f"analysis {analysis.id!r} reads every line of a patient, and a patient at this "
            "site has more lines than the bound the noise is calibrated for",
            "raise dp_max_lines_per_patient in [policy] (more noise per answer), or restrict "
            "the analysis to chosen lines, e.g. lines = [1, 2]",
        )


MAX_VARIANCE = 1e12
"""Beyond this the Poisson sampler fails and the counts would be pure noise anyway."""


def _check_variance(variance: float) -> None:
    if not math.isfinite(variance) or variance > MAX_VARIANCE:
        raise PolicyRefusal(
            "dp_noise_variance",
            variance,
            f"the noise variance is not a finite number up to {MAX_VARIANCE:g}",
            "declare a dp_noise_variance such as 25",
        )


@contextmanager
def _ledger_lock(config: SiteConfig) -> Iterator[None]:
    """One round at a time charges the ledger, across threads and site processes.

    Two sessions reading the ledger before either writes would each see the old
    total and could together overspend; the lock makes read-decide-write atomic.
    """
    path = ledger_path(config).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def privatize(
    agent: SiteAgent,
    queries: Sequence[Query],
    summaries: Sequence[Additive],
    n_sites: int | None = None,
) -> list[Additive]:
    """One round's summaries with the site's share of DP noise, after charging the budget.

    ``n_sites`` is the number of sites whose noise adds up in the pooled sum.
    When the caller does not know it, the policy's ``min_sites`` is used: the
    pooled sum never has fewer contributors than that, so each site adds at
    least its share and the total is at least the declared variance
    (over-noised, never under-noised). The whole round is charged or refused
    at once, before any noise is drawn.
    """
    variance = agent.study.dp_noise_variance
    if variance == 0:
        return list(summaries)
    _check_variance(variance)
    policy = agent.config.policy
    k = max(1, n_sites if n_sites is not None else policy.min_sites)
    secret = site_secret(agent.config)
    seeds: list[bytes] = []
    charges: list[dp.Charge] = []
    for q, summary in zip(queries, summaries, strict=True):
        analysis = agent.analysis(q.analysis_id)
        if q.step in _COX_STEPS:
            raise PolicyRefusal(
                "dp_cox_unsupported",
                variance,
                f"analysis {analysis.id!r} asks for Cox sums, which are floats that "
                "differential privacy here cannot protect",
                "run Cox models in a study without dp_noise_variance",
            )
        floats = [name for name, v in summary.arrays().items() if v.dtype.kind == "f"]
        if floats:
            raise PolicyRefusal(
                "dp_float_summary_unsupported",
                variance,
                f"analysis {analysis.id!r} releases float fields {floats}, which Skellam "
                "noise cannot protect",
                "run this analysis in a study without dp_noise_variance",
            )
        _check_lines(agent, analysis)
        sens = dp.sensitivity(analysis, q, policy.dp_max_lines_per_patient)
        canonical = dp.canonical_query(agent.study, analysis, q, variance=variance, n_sites=k)
        seed = dp.release_seed(secret, canonical, summary)
        seeds.append(seed)
        charges.append(dp.Charge(dp.charge_key(secret, seed), dp.skellam_rho(variance, sens)))
    with _ledger_lock(agent.config):
        decision = _charge(agent, charges)
    log.info(
        "study %r: DP noise variance %g over %d site(s); rho spent %.4g of %.4g (+%.4g this round)",
        agent.study.name,
        variance,
        k,
        decision.spent + decision.asked,
        decision.limit,
        decision.asked,
    )
    agent.last_dp = decision
    share = dp.site_share(variance, k)
    return [dp.noisy_summary(s, seed, share) for s, seed in zip(summaries, seeds, strict=True)]


def _charge(agent: SiteAgent, charges: Sequence[dp.Charge]) -> dp.BudgetDecision:
    """Charge a round's new releases to the study's budget, or refuse the round whole."""
    policy = agent.config.policy
    ledger = load_ledger(agent.config)
    mine = ledger.setdefault(agent.study.name, {})
    decision = dp.decide(mine, charges, policy.dp_rho_per_study)
    if not decision.allowed:
        log.warning(
            "study %r refused: DP budget spent %.4g, round asks %.4g, limit %.4g",
            agent.study.name,
            decision.spent,
            decision.asked,
            decision.limit,
        )
        raise PolicyRefusal(
            "dp_budget_exhausted",
            policy.dp_rho_per_study,
            f"study {agent.study.name!r} has spent rho = {decision.spent:.4g} of its "
            f"differential-privacy budget at this site and this round asks {decision.asked:.4g} "
            f"more, over the limit of {decision.limit:.4g}",
            "ask fewer or coarser questions (fewer groups, strata or lines), declare a larger "
            "dp_noise_variance (each answer then costs less), or have the privacy officer "
            "raise dp_rho_per_study in [policy]",
        )
    if decision.new:
        mine.update({c.key: c.rho for c in decision.new})
        save_ledger(agent.config, ledger)
    return decision
