"""her2fed's Flower ServerApp: one "open session" message per site, then out of the way.

Flower carries the control plane (which sites are enrolled and online, run
lifecycle); the study's rounds run over the aggregation service's gRPC
streams, because a Flower message round costs seconds. So a run of this app:

1. waits until ``expected-sites`` SuperNodes are online (``nodes-timeout``) —
   when ``node-ids`` (comma-separated) is set, until exactly those are, and
   only those are contacted (a registered node outside the study is not);
2. optionally sends ``flower-ping-rounds`` rounds of ``query.ping`` and times
   them (for the latency comparison in docs/federation.md);
3. sends every node one ``query.open_session`` message with the session id,
   the study hash and the aggregation service's address, and collects each
   node's status reply (``open-timeout``);
4. writes the statuses to ``status-path`` (JSON) when given, and fails the
   run if any site did not join, so Flower's run status tells the story too.

All settings come from the run config (see ``RUN_CONFIG_DEFAULTS`` in
site_agent/federation/fab.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger("her2fed.federation.serverapp")

app = ServerApp()


class SessionOpenFailed(RuntimeError):
    """Raised at the end of a run in which some site did not join (Flower marks the run failed)."""


def _wait_for_nodes(
    grid: Grid, expected: int, timeout: float, wanted: frozenset[int] = frozenset()
) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if wanted:
            nodes = [n for n in nodes if n in wanted]
        if len(nodes) >= expected or time.monotonic() >= deadline:
            return nodes
        time.sleep(0.25)


def _node_ids(text: str) -> frozenset[int]:
    return frozenset(int(part) for part in text.split(",") if part.strip())


def _write_report(path: str, report: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, target)


def _status_of(reply: Message) -> dict[str, Any]:
    if reply.has_error():
        return {
            "site-id": "",
            "ok": False,
            "code": f"FLOWER_ERROR_{reply.error.code}",
            "reason": reply.error.reason,
        }
    record = reply.content.config_records.get("status")
    if record is None:
        return {"site-id": "", "ok": False, "code": "MALFORMED", "reason": "no status record"}
    return {k: record.get(k) for k in ("site-id", "ok", "code", "reason")}


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    expected = int(cfg["expected-sites"])
    open_timeout = float(cfg["open-timeout"])
    report: dict[str, Any] = {"run_id": context.run_id, "statuses": {}, "ping_seconds": []}
    wanted = _node_ids(str(cfg.get("node-ids", "")))
    nodes = _wait_for_nodes(grid, expected, float(cfg["nodes-timeout"]), wanted)
    report["nodes"] = nodes
    if len(nodes) < expected:
        report["error"] = f"only {len(nodes)} of {expected} site(s) online"
        _write_report(str(cfg["status-path"]), report)
        raise SessionOpenFailed(report["error"])

    for _ in range(int(cfg["flower-ping-rounds"])):
        pings = [Message(RecordDict(), dst_node_id=n, message_type="query.ping") for n in nodes]
        started = time.perf_counter()
        answered = list(grid.send_and_receive(pings, timeout=open_timeout))
        report["ping_seconds"].append(round(time.perf_counter() - started, 4))
        if len(answered) < len(nodes):
            break

    session = ConfigRecord(
        {
            "session-id": str(cfg["session-id"]),
            "study-hash": str(cfg["study-hash"]),
            "aggregation-address": str(cfg["aggregation-address"]),
        }
    )
    messages = [
        Message(
            RecordDict({"session": session}),
            dst_node_id=node,
            message_type="query.open_session",
            ttl=open_timeout + 30.0,
        )
        for node in nodes
    ]
    started = time.perf_counter()
    replies = list(grid.send_and_receive(messages, timeout=open_timeout))
    report["open_seconds"] = round(time.perf_counter() - started, 4)
    statuses: dict[str, dict[str, Any]] = {}
    for reply in replies:
        statuses[str(reply.metadata.src_node_id)] = _status_of(reply)
    for node in nodes:
        statuses.setdefault(
            str(node),
            {
                "site-id": "",
                "ok": False,
                "code": "TIMEOUT",
                "reason": f"no reply within {open_timeout:g} s",
            },
        )
    report["statuses"] = statuses
    _write_report(str(cfg["status-path"]), report)
    failed = {n: s for n, s in statuses.items() if not s["ok"]}
    for key, status in sorted(statuses.items()):
        log.info("node %s (%s): %s %s", key, status["site-id"], status["code"], status["reason"])
    if failed:
        raise SessionOpenFailed(f"{len(failed)} site(s) did not join the session: {failed}")
