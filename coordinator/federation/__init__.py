"""The coordinator's side of the federation.

- ``server``: ``AggregationServer`` (gRPC/TLS, one stream per site) and the orchestrator's
  synchronous ``AggregationSession.broadcast``; failures raise ``SitesFailed`` naming sites;
- ``sites``: ``SiteKeys``, the consortium registry of site Ed25519 keys;
- ``pki``: a run CA and server certificate;
- ``serverapp``: the Flower ServerApp that opens sessions at the sites;
- ``local``: ``LocalFederation`` (SuperLink, gateway, SuperNodes, site agents on loopback);
- ``gateway``: the fleet-only TLS gateway; ``processes``: starting and reliably stopping them;
- ``control``: the SuperLink Control API client and ``open_study_session`` (local and deployed);
- ``consortium``: FEDERATION.toml, ``consortium init`` and ``add-site`` (CA, keys, registry);
- ``deployed``: ``consortium serve`` (SuperLink + gateway) and ``study run``'s federation.

Only ``serverapp``, ``local``, ``gateway``, ``control`` and ``deployed`` import Flower (or
its web stack).
"""

from coordinator.federation.pki import RunPki, make_run_pki
from coordinator.federation.server import (
    AggregationServer,
    AggregationSession,
    SessionError,
    SitesFailed,
)
from coordinator.federation.sites import SiteKeys

__all__ = [
    "AggregationServer",
    "AggregationSession",
    "RunPki",
    "SessionError",
    "SiteKeys",
    "SitesFailed",
    "make_run_pki",
]
