"""The one seam between orchestration and the sites.

``aggregate`` takes the queries of one round and returns, per query, the sum
of the sites' summaries. Nothing above this seam ever sees a single site's
summary, so swapping the in-process sum for secure aggregation or a network
changes no estimator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from her2fed.errors import Her2fedError
from her2fed.protocol import Query
from her2fed.summary import Additive, merge
from site_agent.handlers import SiteAgent


class SiteFailure(Her2fedError):
    """A site could not answer; names the site and its (sanitised) reason."""

    def __init__(self, site: str, reason: str) -> None:
        self.site = site
        self.reason = reason
        super().__init__(f"site {site!r}: {reason}")


class Transport(Protocol):
    def sites(self) -> list[str]: ...

    def aggregate(self, queries: Sequence[Query]) -> list[Additive]: ...


class InProcessTransport:
    """All site agents in this process; sums their answers in place."""

    def __init__(self, agents: Sequence[SiteAgent]) -> None:
        names = [a.site_id for a in agents]
        if len(set(names)) != len(names):
            raise Her2fedError(f"site ids must be unique, got {names}")
        self._agents = list(agents)

    def sites(self) -> list[str]:
        return [a.site_id for a in self._agents]

    def aggregate(self, queries: Sequence[Query]) -> list[Additive]:
        answers: list[list[Additive]] = []
        for agent in self._agents:
            try:
                answers.append(agent.answer(queries))
            except Her2fedError as err:
                raise SiteFailure(agent.site_id, str(err)) from None
        return [merge(site[i] for site in answers) for i in range(len(queries))]
