"""Secure aggregation: the coordinator learns the sum of the sites' summaries, and only that.

Bonawitz et al. (2017) double masking over the full graph, as pure state
machines (``SiteSession``, ``CoordinatorSession``) exchanging signed, canonically
encoded messages, with ``run_secure_sum`` as the in-process reference
driver. Summaries are carried exactly in Z_2^64 by ``Encoding``. See
docs/secagg.md for the protocol, the threat model and the error bounds.
"""

from her2fed.secagg.config import SessionConfig, default_threshold
from her2fed.secagg.coordinator import CoordinatorSession, SecureSum
from her2fed.secagg.driver import (
    Consortium,
    Dropout,
    Hop,
    SecureSumRun,
    run_secure_sum,
    simulated_consortium,
)
from her2fed.secagg.encoding import Encoding
from her2fed.secagg.errors import SecAggError
from her2fed.secagg.randomness import SYSTEM_RANDOM, RandomSource, SeededRandom
from her2fed.secagg.registry import Registry, parse_registry_toml, registry_to_toml
from her2fed.secagg.site import SiteSession

__all__ = [
    "SYSTEM_RANDOM",
    "Consortium",
    "CoordinatorSession",
    "Dropout",
    "Encoding",
    "Hop",
    "RandomSource",
    "Registry",
    "SecAggError",
    "SecureSum",
    "SecureSumRun",
    "SeededRandom",
    "SessionConfig",
    "SiteSession",
    "default_threshold",
    "parse_registry_toml",
    "registry_to_toml",
    "run_secure_sum",
    "simulated_consortium",
]
