"""The only Flower endpoint sites can reach: a TLS gateway that forwards the Fleet API only.

Flower 1.41 serves its Fleet API (what SuperNodes call), its Control API
(submit/stop runs, register nodes — no authentication in the open-source
edition) and its Runtime API (what the ServerApp process calls) on **one**
HTTP port. Exposing that port to hospitals would let anyone who reaches it
start runs. So the SuperLink listens on 127.0.0.1 only, and this gateway,
listening on the public address, forwards ``POST /v1/fleet/...`` to it and
answers 404 to everything else. SuperNode authentication (signed request
headers) passes through untouched and is checked by the SuperLink.

In a production deployment the same rule belongs in the consortium's reverse
proxy (nginx/envoy: allow ``location /v1/fleet/`` only); this in-process
gateway is for local federations, demos and small consortia. It uses
Starlette, httpx and uvicorn, which Flower already depends on.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

log = logging.getLogger("her2fed.federation.gateway")

FLEET_PREFIX = "/v1/fleet/"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}


def make_app(upstream: str, ca_cert: Path) -> Starlette:
    """An ASGI app forwarding Fleet API calls to ``upstream`` (https://127.0.0.1:port)."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    client = httpx.AsyncClient(base_url=upstream, verify=context, timeout=60.0)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if request.method != "POST" or not path.startswith(FLEET_PREFIX) or ".." in path:
            return Response(status_code=404)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            answer = await client.post(path, content=await request.body(), headers=headers)
        except httpx.HTTPError as err:
            log.warning("fleet upstream unreachable: %s", err)
            return Response(status_code=502)
        out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        return Response(answer.content, status_code=answer.status_code, headers=out)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        try:
            yield
        finally:
            await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


class FleetGateway:
    """Run the gateway in a background thread (uvicorn, TLS with the run's server certificate)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        upstream: str,
        ca_cert: Path,
        server_cert: Path,
        server_key: Path,
    ) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(
            make_app(upstream, ca_cert),
            host=host,
            port=port,
            ssl_certfile=str(server_cert),
            ssl_keyfile=str(server_key),
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> FleetGateway:
        self._thread = threading.Thread(target=self._server.run, name="fleet-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the fleet gateway did not start on {self.address}")
            time.sleep(0.02)
        log.info("fleet gateway on %s (TLS), forwarding %s* only", self.address, FLEET_PREFIX)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._thread = None
