"""The site's side of the federation: the aggregation client and the Flower task runner.

- ``wire``: the her2fed.v1 messages (proto/her2fed/v1/aggregation.proto), hand-encoded;
- ``client``: ``SiteClient`` dials the coordinator's aggregation service and answers requests
  with a ``Handler`` (``handle(step, payload) -> bytes``);
- ``session``: ``SiteRuntime`` opens sessions when Flower's "open session" message arrives;
- ``clientapp``: the installed Flower ClientApp; ``agent``: ``her2fed-site-agent``, the
  process that runs it for a SuperNode started with ``--isolation process``;
- ``allowlist`` / ``fab``: which app bundles the site accepts a run for;
- ``card``: the site card (public keys for the lead); ``deploy``: ``her2fed site keys`` and
  ``her2fed site start`` (SuperNode + agent, supervised); ``processes``: starting and stopping.

Only ``clientapp``, ``agent`` and ``fab.build_fab`` import Flower.
"""

from site_agent.federation.client import (
    Handler,
    SessionLost,
    SessionOutcome,
    SessionRefused,
    SiteClient,
    SiteRefusal,
)
from site_agent.federation.session import (
    HandlerFactory,
    OpenResult,
    OpenSession,
    SessionInfo,
    SiteIdentity,
    SiteRuntime,
)

__all__ = [
    "Handler",
    "HandlerFactory",
    "OpenResult",
    "OpenSession",
    "SessionInfo",
    "SessionLost",
    "SessionOutcome",
    "SessionRefused",
    "SiteClient",
    "SiteIdentity",
    "SiteRefusal",
    "SiteRuntime",
]
