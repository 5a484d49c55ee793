"""``her2fed-site-agent``: the only process that executes Flower tasks at a site.

The site's SuperNode runs with ``--isolation process``: it talks to the
SuperLink (outbound) and queues tasks on its loopback Runtime API, but starts
no app itself. This agent is the "independent process" that takes those
tasks. For each task it pulls the message, the run and the app bundle (FAB)
from the SuperNode and then:

- if the bundle's id, version and SHA-256 are on the site's allowlist (and
  its bytes match that hash), it runs **its installed** her2fed ClientApp
  (``site_agent.federation.clientapp``) on the message — the bundle itself
  is never unpacked, installed or imported;
- otherwise it replies with a Flower error naming the refusal and runs
  nothing.

It uses Flower's own Runtime API client (``RuntimeHttpClient``) and the same
pull/push helpers as ``flwr-clientapp``; the only difference from Flower's
executor is that the code to run comes from this installation, never from
the coordinator.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import RetryInvoker, make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from her2fed.errors import Her2fedError
from site_agent.federation import clientapp
from site_agent.federation.allowlist import Allowlist
from site_agent.federation.fab import her2fed_fab
from site_agent.federation.keys import (
    generate_key,
    load_consortium,
    public_hex,
    read_private_key,
    read_public_key,
    write_private_key,
)
from site_agent.federation.session import HandlerFactory, SiteIdentity, SiteRuntime

log = logging.getLogger("her2fed.federation.agent")

DEFAULT_HANDLER = "site_agent.federation.selftest:factory"
TASK_RETRY_SECONDS = 120.0
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"


@dataclass(frozen=True)
class AgentConfig:
    runtime_api: str
    """The SuperNode's Runtime API, host:port on loopback."""
    identity: SiteIdentity
    allowlist: Allowlist
    handler_factory: HandlerFactory
    superexec_secret: bytes | None = None
    runtime_root_certificates: bytes | None = None
    poll_interval: float = 0.2
    connect_timeout: float = 15.0


def _client(
    config: AgentConfig,
    interceptors: list[ProtobufClientInterceptor],
    max_time: float | None = None,
) -> tuple[RuntimeHttpClient, RetryInvoker]:
    """Flower's Runtime API client; ``max_time`` bounds its retries (None: retry forever)."""
    retry = make_simple_http_retry_invoker()
    retry.max_time = max_time
    client = RuntimeHttpClient.from_server_address(
        server_address=config.runtime_api,
        insecure=config.runtime_root_certificates is None,
        root_certificates=config.runtime_root_certificates,
        interceptors=interceptors,
        retry_invoker=retry,
    )
    return client, retry


def run_task(config: AgentConfig, token: str, stop: threading.Event | None = None) -> str:
    """Execute one acquired task; returns what happened (for the log)."""
    client, retry = _client(
        config,
        [
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        max_time=TASK_RETRY_SECONDS,
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context: Context | None = None
    message: Message | None = None
    sub_status, details = SubStatus.FAILED, "the site agent could not run the task"
    try:
        message, context, run, fab = pull_task_input(client)
        refusal = config.allowlist.check(
            run.fab_id, run.fab_version, run.fab_hash, fab.hash_str, fab.content
        )
        if refusal is not None:
            log.warning("refused run %s: %s", run.run_id, refusal)
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=refusal), reply_to=message)
            details = refusal
        else:
            reply = clientapp.app(message, context)
            sub_status, details = SubStatus.COMPLETED, ""
        push_message(client, reply, context)
        return details or f"answered {message.metadata.message_type}"
    except Exception:
        log.exception("task failed")
        if message is not None and context is not None:
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details)
            try:
                push_message(client, Message(error, reply_to=message), context)
            except Exception:
                log.exception("could not push the error reply")
        return details
    finally:
        if stop is not None and stop.is_set():
            retry.max_tries = 1  # shutting down: report once, do not wait for a dead SuperNode
        push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        heartbeat.stop()
        client.close()


def serve(config: AgentConfig, stop: threading.Event) -> None:
    """Take tasks from the SuperNode until ``stop`` is set."""
    runtime = SiteRuntime(
        config.identity, config.handler_factory, connect_timeout=config.connect_timeout
    )
    clientapp.install_runtime(runtime)
    interceptors: list[ProtobufClientInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name="SuperExec")
    ]
    if config.superexec_secret is not None:
        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=config.superexec_secret, protected_methods=[_ACQUIRE]
            )
        )
    client, _ = _client(config, interceptors)
    log.info(
        "site %s: taking tasks from %s (her2fed %s; allowlist: %d app(s))",
        config.identity.site_id,
        config.runtime_api,
        config.identity.her2fed_version,
        len(config.allowlist.apps),
    )
    try:
        while not stop.is_set():
            try:
                res = client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
                )
            except Exception as err:  # the SuperNode restarts or is not up yet
                log.debug("acquire failed: %s", err)
                stop.wait(1.0)
                continue
            if res.HasField("task") and res.token:
                log.info(
                    "task %s of run %s: %s",
                    res.task.task_id,
                    res.task.run_id,
                    run_task(config, res.token, stop),
                )
            else:
                stop.wait(config.poll_interval)
    finally:
        runtime.stop_all()
        clientapp.install_runtime(None)
        client.close()


def _load_factory(spec: str) -> HandlerFactory:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise Her2fedError(f"--handler {spec!r}: expected module:function")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise Her2fedError(f"--handler {spec!r}: cannot import ({err})") from None
    if not callable(factory):
        raise Her2fedError(f"--handler {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]


def _watch_parent(parent: int, stop: threading.Event) -> None:
    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                log.warning("the process that started this agent is gone; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="her2fed-site-agent",
        description="Run her2fed's installed ClientApp for the site's SuperNode "
        "(flower-supernode --isolation process).",
    )
    p.add_argument("--runtime-api", help="the SuperNode's Runtime API, e.g. 127.0.0.1:9094")
    p.add_argument("--site-id")
    p.add_argument("--site-key", type=Path, help="the site's Ed25519 private key (PEM)")
    p.add_argument("--coordinator-key", type=Path, help="the coordinator's public key (hex file)")
    p.add_argument("--ca-cert", type=Path, help="the consortium CA certificate (PEM)")
    p.add_argument(
        "--coordinator-host",
        action="append",
        default=[],
        help="a host the site may dial for aggregation (repeatable)",
    )
    p.add_argument("--allowlist", type=Path, help="allowlist.toml (default: the installed app)")
    p.add_argument("--handler", default=DEFAULT_HANDLER, help="module:factory of the handler")
    p.add_argument(
        "--consortium-registry",
        type=Path,
        help="consortium.toml: the pinned public keys of the coordinator and every site",
    )
    p.add_argument("--superexec-auth-secret-file", type=Path)
    p.add_argument("--runtime-root-certificates", type=Path)
    p.add_argument("--parent-pid", type=int, help="stop when this process is no longer the parent")
    p.add_argument("--poll-interval", type=float, default=0.2)
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--print-fab", action="store_true", help="print the installed app's allowlist entry"
    )
    p.add_argument(
        "--keygen", type=Path, help="write a new Ed25519 site key here and print its public key"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s her2fed-site-agent[{args.site_id or '-'}] %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    try:
        if args.print_fab:
            fab = her2fed_fab()
            print(
                f'[[app]]\nid = "{fab.fab_id}"\nversion = "{fab.version}"\nsha256 = "{fab.sha256}"'
            )
            return 0
        if args.keygen:
            key = generate_key()
            write_private_key(key, args.keygen)
            print(public_hex(key))
            return 0
        missing = [
            name
            for name in ("runtime_api", "site_id", "site_key", "coordinator_key", "ca_cert")
            if getattr(args, name) is None
        ]
        if missing or not args.coordinator_host:
            flags = [f"--{m.replace('_', '-')}" for m in missing]
            flags += [] if args.coordinator_host else ["--coordinator-host"]
            raise Her2fedError(f"missing {', '.join(flags)}")
        identity = SiteIdentity(
            site_id=args.site_id,
            site_key=read_private_key(args.site_key),
            coordinator_key=read_public_key(args.coordinator_key),
            ca_cert=args.ca_cert.read_bytes(),
            allowed_hosts=frozenset(args.coordinator_host),
            consortium=load_consortium(args.consortium_registry)
            if args.consortium_registry
            else None,
        )
        config = AgentConfig(
            runtime_api=args.runtime_api,
            identity=identity,
            allowlist=Allowlist.load(args.allowlist) if args.allowlist else Allowlist.installed(),
            handler_factory=_load_factory(args.handler),
            superexec_secret=(
                args.superexec_auth_secret_file.read_bytes()
                if args.superexec_auth_secret_file
                else None
            ),
            runtime_root_certificates=(
                args.runtime_root_certificates.read_bytes()
                if args.runtime_root_certificates
                else None
            ),
            poll_interval=args.poll_interval,
        )
    except (Her2fedError, OSError) as err:
        print(f"her2fed-site-agent: error: {err}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Raise in the main thread: it may be inside Flower's retry back-off, which a flag
        # would not interrupt; serve()'s finally then leaves every open session.
        del frame
        log.info("signal %d: stopping", signum)
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.parent_pid:
        _watch_parent(args.parent_pid, stop)
    with contextlib.suppress(SystemExit):
        serve(config, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
