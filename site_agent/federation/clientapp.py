"""her2fed's Flower ClientApp: installed code, run only by ``her2fed-site-agent``.

It understands two message types:

- ``query.open_session``: content ``{"session": ConfigRecord(session-id,
  study-hash, aggregation-address)}``; the site's ``SiteRuntime`` dials the
  aggregation service and the reply says whether the coordinator welcomed the
  site (``{"status": ConfigRecord(site-id, ok, code, reason)}``);
- ``query.ping``: answered at once (used to measure a Flower message round).

The runtime (site identity, keys, handler factory) is installed by the agent
process before any task runs; a SuperNode that somehow loaded this module
without the agent gets a refusal, not a half-configured session.
"""

from __future__ import annotations

import threading

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from site_agent.federation.session import OpenResult, OpenSession, SiteRuntime

app = ClientApp()

_runtime: SiteRuntime | None = None
_lock = threading.Lock()


def install_runtime(runtime: SiteRuntime | None) -> None:
    global _runtime
    with _lock:
        _runtime = runtime


def _status(site_id: str, result: OpenResult) -> RecordDict:
    return RecordDict(
        {
            "status": ConfigRecord(
                {"site-id": site_id, "ok": result.ok, "code": result.code, "reason": result.reason}
            )
        }
    )


@app.query("open_session")
def open_session(message: Message, context: Context) -> Message:
    runtime = _runtime
    if runtime is None:
        result = OpenResult(
            False, "NO_RUNTIME", "this ClientApp runs only inside her2fed-site-agent"
        )
        return Message(_status("", result), reply_to=message)
    record = message.content.config_records.get("session")
    if record is None:
        result = OpenResult(False, "MALFORMED", "the message has no 'session' record")
    else:
        request = OpenSession(
            session_id=str(record.get("session-id", "")),
            study_hash=str(record.get("study-hash", "")),
            address=str(record.get("aggregation-address", "")),
        )
        result = runtime.open_session(request, dict(context.node_config))
    return Message(_status(runtime.identity.site_id, result), reply_to=message)


@app.query("ping")
def ping(message: Message, context: Context) -> Message:
    runtime = _runtime
    site = runtime.identity.site_id if runtime is not None else ""
    return Message(RecordDict({"pong": ConfigRecord({"site-id": site})}), reply_to=message)
