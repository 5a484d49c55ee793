"""A handler that releases nothing: for checking a site's connection end to end.

Steps: ``echo`` returns the payload; ``sum`` reads an 8-byte big-endian
signed integer and returns it plus the length of the site id (so the sum
over sites is known in advance); ``site-config`` returns the site config
path the SuperNode was started with (to check the plumbing); anything else
is refused. Hospital IT can
run a whole federation round trip with it before any data are configured.
"""

from __future__ import annotations

from site_agent.federation.client import Handler, SiteRefusal
from site_agent.federation.session import SessionInfo


def handler_for(site_id: str, site_config: str | None = None) -> Handler:
    def handle(step: str, payload: bytes) -> bytes:
        if step == "echo":
            return payload
        if step == "site-config":
            return (site_config or "").encode("utf-8")
        if step == "sum":
            if len(payload) != 8:
                raise SiteRefusal("self-test step 'sum' takes an 8-byte integer")
            value = int.from_bytes(payload, "big", signed=True) + len(site_id)
            return value.to_bytes(8, "big", signed=True)
        raise SiteRefusal(f"the self-test handler has no step {step!r}")

    return handle


def factory(info: SessionInfo) -> Handler:
    """The ``HandlerFactory`` (``--handler site_agent.federation.selftest:factory``)."""
    return handler_for(info.site_id, info.site_config)


def encode_int(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)


def decode_int(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)
