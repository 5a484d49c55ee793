"""The coordinator's client of a Flower SuperLink: register nodes, submit runs, open sessions.

This is what the ``flwr`` CLI would do, without its app directories and
connection profiles: ``LocalFederation`` (everything on one machine) and the
deployed commands (``her2fed consortium serve``, ``her2fed study run``) share
it, so the study session is opened the same way in both.

The Control API has no authentication in Flower's open-source edition, so
this client only ever talks to a SuperLink on the coordinator's own host
(127.0.0.1); hospitals reach the fleet gateway, never this API.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from flwr.common.serde import fab_to_proto, run_from_proto, user_config_to_proto
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
    UnregisterNodeRequest,
)
from flwr.proto.node_pb2 import NodeInfo
from flwr.supercore.control.control_http_client import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

from coordinator.federation.server import AggregationServer, AggregationSession
from her2fed.errors import Her2fedError
from site_agent.federation.card import public_key_der
from site_agent.federation.fab import FabBundle, her2fed_fab

__all__ = ["FederationError", "FlowerControl", "RunOutcome", "open_study_session", "public_key_der"]


class FederationError(Her2fedError):
    """A federation could not start or a run did not finish (names the log to read)."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str
    sub_status: str
    details: str
    report: dict[str, Any] = field(default_factory=dict)


class FlowerControl:
    """A Control API client for the SuperLink at ``address`` (TLS verified with ``ca_pem``)."""

    def __init__(self, address: str, ca_pem: bytes, *, log_hint: str = "the SuperLink's log"):
        self.address = address
        self.log_hint = log_hint
        self._client: ControlHttpClient | None = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=False,
            root_certificates=ca_pem,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        )

    @property
    def client(self) -> ControlHttpClient:
        if self._client is None:
            raise FederationError("the federation is not running")
        return self._client

    def close(self) -> None:
        """Close our keep-alive connection first: uvicorn waits for open ones before exiting."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def reachable(self) -> bool:
        try:
            self.client.ListNodes(ListNodesRequest())
        except FederationError:
            raise
        except Exception:
            return False
        return True

    def nodes(self) -> list[NodeInfo]:
        return list(self.client.ListNodes(ListNodesRequest()).nodes_info)

    def node_id_of(self, public_key_pem: bytes) -> int | None:
        """The id of the registered node with this public key, if any."""
        want = public_key_der(public_key_pem)
        for node in self.nodes():
            if node.status == "unregistered":
                continue
            with contextlib.suppress(ValueError, TypeError):
                if public_key_der(node.public_key) == want:
                    return int(node.node_id)
        return None

    def register(self, name: str, public_key_pem: bytes) -> int:
        """Register a SuperNode key under ``name``; a key registered before keeps its node id."""
        known = self.node_id_of(public_key_pem)
        if known is not None:
            return known
        try:
            res = self.client.RegisterNode(
                RegisterNodeRequest(public_key=public_key_pem, name=name)
            )
        except httpx.HTTPStatusError as err:
            again = self.node_id_of(public_key_pem)  # registered meanwhile by another client
            if again is not None:
                return again
            raise FederationError(
                f"the SuperLink refused to register {name}'s node key "
                f"({err.response.text.strip()[:200]}); see {self.log_hint}"
            ) from None
        return int(res.node_id)

    def unregister(self, node_id: int) -> None:
        self.client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))

    def online(self, node_ids: Mapping[str, int]) -> list[str]:
        """Which of these sites' nodes the SuperLink sees online now."""
        by_id = {v: k for k, v in node_ids.items()}
        return sorted(
            by_id[n.node_id] for n in self.nodes() if n.status == "online" and n.node_id in by_id
        )

    def submit(self, fab: FabBundle, run_config: Mapping[str, str | int | float | bool]) -> int:
        """Start a Flower run of ``fab`` (the coordinator's side of ``flwr run``)."""
        request = StartRunRequest(
            fab=fab_to_proto(Fab(fab.sha256, fab.content, {})),
            override_config=user_config_to_proto(dict(run_config)),
            federation="",
        )
        res = self.client.StartRun(request)
        if not res.HasField("run_id"):
            raise FederationError(f"the SuperLink did not start the run; see {self.log_hint}")
        return int(res.run_id)

    def stop_run(self, run_id: int) -> None:
        with contextlib.suppress(Exception):
            self.client.StopRun(StopRunRequest(run_id=run_id))

    def wait_run(self, run_id: int, timeout: float, report_path: Path | None = None) -> RunOutcome:
        deadline = time.monotonic() + timeout
        while True:
            runs = self.client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict
            if run_id in runs:
                run = run_from_proto(runs[run_id])
                if run.status.status == "finished":
                    report: dict[str, Any] = {}
                    if report_path is not None and report_path.exists():
                        with contextlib.suppress(OSError, ValueError):
                            report = json.loads(report_path.read_text(encoding="utf-8"))
                    return RunOutcome(
                        run_id,
                        run.status.status,
                        run.status.sub_status,
                        run.status.details,
                        report,
                    )
            if time.monotonic() > deadline:
                self.stop_run(run_id)
                raise FederationError(
                    f"run {run_id} did not finish within {timeout:g} s; see {self.log_hint}"
                )
            time.sleep(0.2)


def open_study_session(
    control: FlowerControl,
    aggregation: AggregationServer,
    *,
    node_ids: Mapping[str, int],
    study_hash: str,
    report_dir: Path,
    aggregation_address: str | None = None,
    timeout: float = 60.0,
    flower_ping_rounds: int = 0,
    fab: FabBundle | None = None,
) -> tuple[AggregationSession, RunOutcome]:
    """Open an aggregation session at these sites through one Flower run.

    The session is opened on the aggregation service first (so the sites'
    hellos find it), then her2fed's bundle is submitted with the session id,
    the study hash, the address the sites should dial (``aggregation_address``,
    default the service's own) and the node ids to contact — only those, so a
    registered node that is not part of this study is not asked. Returns once
    every site joined and the Flower run finished; raises ``SitesFailed``
    naming the sites that did not join.
    """
    session = aggregation.open_session(study_hash, list(node_ids))
    report = report_dir / f"{session.session_id}.json"
    report_dir.mkdir(parents=True, exist_ok=True)
    run_id = control.submit(
        fab or her2fed_fab(),
        {
            "session-id": session.session_id,
            "study-hash": study_hash,
            "aggregation-address": aggregation_address or aggregation.address,
            "expected-sites": len(node_ids),
            "node-ids": ",".join(str(node_ids[s]) for s in sorted(node_ids)),
            "open-timeout": timeout,
            "nodes-timeout": timeout,
            "status-path": str(report),
            "flower-ping-rounds": flower_ping_rounds,
        },
    )
    try:
        session.wait_for_sites(timeout)
    except BaseException:
        session.close("the session could not be opened at every site")
        with contextlib.suppress(Exception):
            control.wait_run(run_id, 15.0, report)
        raise
    return session, control.wait_run(run_id, timeout, report)
