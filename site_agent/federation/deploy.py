"""A hospital's side of a deployed federation: ``her2fed site keys`` and ``her2fed site start``.

``site keys`` creates the site's two private keys (Ed25519 identity for the
aggregation channel, EC P-256 node key for Flower's fleet authentication),
owner-readable only, and the *site card* with their public halves for the
consortium lead.

``site start`` is the one command hospital IT runs (under systemd or in a
terminal). It checks every key and consortium file first — so a missing or
mismatched file is one line naming it and the fix, not a Flower traceback
minutes later — and then supervises two processes:

- ``flower-supernode --isolation process``: dials **out** to the consortium's
  fleet gateway over TLS (consortium CA), authenticated by the node key; its
  Runtime API listens on 127.0.0.1 only; node config
  ``site-config='<absolute path of site.toml>'``; runtime dependency
  installation, telemetry and update checks off; a private ``FLWR_HOME``;
- ``her2fed-site-agent`` (``python -m site_agent.federation.agent``): takes
  the SuperNode's tasks and runs the installed study handler
  (``site_agent.federation.study_handler:factory``) with the site's identity
  key, the pinned coordinator key, the CA, the consortium registry and the
  allowlist; it dials out to the aggregation service, only to hosts listed
  with ``--coordinator-host``.

Nothing listens on a non-loopback address. Both processes' output is shown
with a prefix. On Ctrl-C or SIGTERM both are stopped. If one exits on its
own, the supervisor says why: a refusal that retrying cannot fix (the
SuperLink does not know the node key, the TLS certificate does not verify, a
configuration error) stops the site with one line naming the fix; anything
else is restarted with back-off, and the site gives up (exit status 2) after
too many restarts in a short time, so systemd's restart policy takes over.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from her2fed import __version__
from her2fed.errors import Her2fedError, SpecError
from her2fed.secagg.registry import public_key_bytes
from site_agent.config import KeyPaths, SiteConfig, require_key_files
from site_agent.federation.allowlist import Allowlist
from site_agent.federation.card import SiteCard, node_public_pem, read_node_key
from site_agent.federation.keys import (
    KeyFileError,
    generate_key,
    load_consortium,
    public_hex,
    read_private_key,
    read_public_key,
    write_private_key,
    write_supernode_key,
)
from site_agent.federation.processes import (
    ProcessSet,
    flower_env,
    free_port,
    signal_guard,
    signals_ignored,
    tool,
)

STUDY_HANDLER = "site_agent.federation.study_handler:factory"
RESTART_WINDOW = 600.0
"""Restarts older than this (seconds) no longer count towards ``max_restarts``."""

Say = Callable[[str], None]


class SiteStartError(Her2fedError):
    """The site cannot run (or keep running) as configured; the message names the fix."""


# ---------------------------------------------------------------------- site keys


@dataclass(frozen=True)
class KeysResult:
    card: SiteCard
    card_path: Path
    created: tuple[Path, ...]


def card_path(cfg: SiteConfig) -> Path:
    """Where ``site keys`` writes the site card: next to the identity key."""
    return cfg.key_paths.site_key.parent / f"{cfg.site_id}.card.toml"


def _card(cfg: SiteConfig, keys: KeyPaths) -> SiteCard:
    identity = read_private_key(keys.site_key)
    node = read_node_key(keys.node_key, f"{cfg.path}: keys.node_key")
    return SiteCard(
        cfg.site_id, cfg.country, identity.public_key(), node_public_pem(node.public_key())
    )


def make_site_keys(cfg: SiteConfig, *, force: bool = False) -> KeysResult:
    """Create whichever of the site's two keys is missing (both with ``force``) and the card.

    Existing keys are kept unless ``force``: a new key would no longer match
    what the consortium registered, and the site would be refused until the
    lead re-adds its card.
    """
    keys = cfg.key_paths
    created: list[Path] = []
    for path in (keys.site_key, keys.node_key):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if force or not keys.site_key.exists():
            write_private_key(generate_key(), keys.site_key)
            created.append(keys.site_key)
        if force or not keys.node_key.exists():
            write_supernode_key(keys.node_key)
            created.append(keys.node_key)
        card = _card(cfg, keys)
    except KeyFileError as err:
        raise SpecError(f"{cfg.path}: keys", str(err), "move the file away and run again") from None
    path = card_path(cfg)
    path.write_text(card.to_toml(), encoding="utf-8")
    return KeysResult(card, path, tuple(created))


# ---------------------------------------------------------------------- preflight


@dataclass(frozen=True)
class SiteLaunch:
    """Everything ``site start`` checked and will use."""

    cfg: SiteConfig
    keys: KeyPaths
    superlink: str
    coordinator_hosts: tuple[str, ...]
    card: SiteCard
    allowlist: Allowlist
    ca_subject: str


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(
            flag, f"{text!r} is not HOST:PORT", "e.g. --superlink consortium.example:9092"
        )
    return host.strip("[]"), int(port)


def preflight(cfg: SiteConfig, superlink: str, coordinator_hosts: tuple[str, ...]) -> SiteLaunch:
    """Check every file and key before anything starts; raise one error naming the first problem."""
    host, _ = _host_port(superlink, "--superlink")
    hosts = coordinator_hosts or (host,)
    keys = require_key_files(cfg)
    where = f"{cfg.path}: keys"
    try:
        identity = read_private_key(keys.site_key)
        coordinator = read_public_key(keys.coordinator_key)
        registry = load_consortium(keys.consortium_registry)
    except Her2fedError as err:
        text = str(err)
        if "Fix:" not in text:
            text = f"{text.rstrip('.')}. Fix: ask the consortium lead for the file again"
        raise SiteStartError(f"{where}: {text}") from None
    card = _card(cfg, keys)
    try:
        ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
    except ValueError:
        raise SpecError(
            f"{where}.ca_cert",
            f"{keys.ca_cert} is not a PEM certificate",
            "copy the consortium's ca.pem unchanged",
        ) from None
    if ca.not_valid_after_utc.timestamp() < time.time():
        raise SpecError(
            f"{where}.ca_cert",
            f"the consortium CA certificate expired on {ca.not_valid_after_utc:%Y-%m-%d}",
            "ask the consortium lead for the current ca.pem",
        )
    registry_file = keys.consortium_registry
    if cfg.site_id not in registry.sites:
        raise SpecError(
            f"{registry_file}",
            f"the consortium registry does not list site {cfg.site_id!r}",
            f"send {card_path(cfg)} to the consortium lead; after `her2fed consortium add-site` "
            "they send you the updated consortium.toml",
        )
    if registry.sites[cfg.site_id] != public_key_bytes(identity):
        raise SpecError(
            f"{registry_file}",
            f"it pins another identity key for {cfg.site_id!r} than {keys.site_key}",
            "if you made new keys, send the new site card (the lead re-adds it with --replace); "
            "otherwise point keys.site_key at the key you enrolled with",
        )
    if registry.coordinator != public_key_bytes(coordinator):
        raise SpecError(
            f"{keys.coordinator_key}",
            f"this coordinator key differs from the one in {registry_file}",
            "ask the consortium lead for both files again (they must come from one consortium)",
        )
    site_config = str(cfg.path.resolve())
    if any(c in site_config for c in "'\"\n"):
        raise SpecError(
            str(cfg.path),
            "the path contains a quote or newline, which Flower's --node-config cannot carry",
            "move the site directory to a path without quotes",
        )
    allowlist = Allowlist.load(keys.allowlist) if keys.allowlist else Allowlist.installed()
    subject = ca.subject.rfc4514_string() or "(no subject)"
    return SiteLaunch(cfg, keys, superlink, tuple(hosts), card, allowlist, subject)


def private_key_warnings(keys: KeyPaths) -> list[str]:
    """Private keys readable by others: worth a warning, not a refusal (IT may use ACLs)."""
    out = []
    for path in (keys.site_key, keys.node_key):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            out.append(f"{path} is readable by others (mode {mode:o}); run chmod 600 {path}")
    return out


# ---------------------------------------------------------------------- supervision


@dataclass
class _Child:
    name: str
    label: str
    argv: list[str]
    env: dict[str, str]
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=60))
    restarts: list[float] = field(default_factory=list)


_CONNECTED = re.compile(r"SuperNode ID: (\d+)")


def classify_exit(child: str, lines: list[str], launch: SiteLaunch) -> str | None:
    """A one-line reason with its fix if retrying cannot help, else None (restart)."""
    text = "\n".join(lines)
    keys = launch.keys
    if child == "supernode":
        if "Failed to activate SuperNode" in text or "must be registered" in text:
            return (
                f"the consortium's SuperLink ({launch.superlink}) refused this site's node key "
                f"{keys.node_key} ({launch.card.node_fingerprint}): it is not registered there. "
                f"Fix: send {card_path(launch.cfg)} to the consortium lead for `her2fed consortium "
                "add-site` (if you made new keys, they re-add it with --replace)"
            )
        if re.search(r"certificate|SSL|TLS handshake", text, re.IGNORECASE):
            return (
                f"the TLS certificate of {launch.superlink} does not verify with {keys.ca_cert}. "
                "Fix: use the consortium's current ca.pem and a --superlink host name that the "
                "server certificate lists (the lead's `consortium init --host`)"
            )
    if child == "agent":
        for line in reversed(lines):
            if "her2fed-site-agent: error:" in line:
                return line.split("error:", 1)[1].strip()
    return None


class SiteService:
    """``her2fed site start``: the SuperNode and the site agent, supervised together."""

    def __init__(
        self,
        launch: SiteLaunch,
        *,
        say: Say,
        runtime_port: int = 0,
        state_dir: Path | None = None,
        max_restarts: int = 5,
        log_level: str = "INFO",
    ) -> None:
        self.launch = launch
        self.say = say
        self.runtime_port = runtime_port or free_port()
        self._own_state = state_dir is None
        self.state = Path(
            state_dir or tempfile.mkdtemp(prefix=f"her2fed-site-{launch.cfg.site_id}-")
        )
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_restarts = max_restarts
        self.log_level = log_level
        self.processes = ProcessSet(self.state / "logs")
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._children: dict[str, _Child] = {}

    # ---------------------------------------------------------------- commands

    def _secret(self) -> Path:
        """A fresh SuperExec secret per start, shared only by our SuperNode and agent."""
        path = self.state / "superexec.secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(32))
        return path

    def _build(self) -> None:
        launch, keys = self.launch, self.launch.keys
        secret = self._secret()
        runtime = f"127.0.0.1:{self.runtime_port}"
        supernode = [
            tool("flower-supernode"),
            "--superlink", launch.superlink,
            "--root-certificates", str(keys.ca_cert.resolve()),
            "--auth-supernode-private-key", str(keys.node_key.resolve()),
            "--isolation", "process",
            "--host", "127.0.0.1",
            "--port", str(self.runtime_port),
            "--superexec-auth-secret-file", str(secret),
            "--node-config", f"site-config='{launch.cfg.path.resolve()}'",
        ]  # fmt: skip
        agent = [
            sys.executable, "-m", "site_agent.federation.agent",
            "--runtime-api", runtime,
            "--site-id", launch.cfg.site_id,
            "--site-key", str(keys.site_key.resolve()),
            "--coordinator-key", str(keys.coordinator_key.resolve()),
            "--ca-cert", str(keys.ca_cert.resolve()),
            "--consortium-registry", str(keys.consortium_registry.resolve()),
            "--handler", STUDY_HANDLER,
            "--superexec-auth-secret-file", str(secret),
            "--parent-pid", str(os.getpid()),
            "--log-level", self.log_level,
        ]  # fmt: skip
        for host in launch.coordinator_hosts:
            agent += ["--coordinator-host", host]
        if keys.allowlist is not None:
            agent += ["--allowlist", str(keys.allowlist.resolve())]
        self._children = {
            "supernode": _Child(
                "supernode", "supernode", supernode, flower_env(self.state / "flwr-supernode")
            ),
            "agent": _Child("agent", "agent    ", agent, flower_env(self.state / "flwr-agent")),
        }

    def describe(self) -> list[str]:
        launch, keys, cfg = self.launch, self.launch.keys, self.launch.cfg
        fab = sorted(launch.allowlist.apps, key=lambda a: (a.fab_id, a.version))
        apps = ", ".join(f"{a.fab_id} {a.version} (sha256 {a.sha256[:12]}…)" for a in fab)
        return [
            f"her2fed site start: site {cfg.site_id} ({cfg.country}), her2fed {__version__}",
            f"  site config      {cfg.path.resolve()}",
            f"  SuperLink        {launch.superlink} (outbound; TLS verified with {keys.ca_cert})",
            f"  consortium CA    {launch.ca_subject}",
            f"  node key         {keys.node_key} ({launch.card.node_fingerprint})",
            f"  identity key     {keys.site_key} (ed25519 {launch.card.public_hex})",
            f"  coordinator key  {keys.coordinator_key} "
            f"(ed25519 {public_hex(read_public_key(keys.coordinator_key))})",
            f"  registry         {keys.consortium_registry}",
            f"  aggregation      dials only {', '.join(launch.coordinator_hosts)} (outbound, TLS)",
            f"  runtime API      127.0.0.1:{self.runtime_port} (loopback only; no inbound port)",
            f"  accepts          {apps}",
            f"  work directory   {self.state}",
        ]

    # ---------------------------------------------------------------- running

    def _output(self, child: _Child) -> Callable[[str], None]:
        def show(line: str) -> None:
            if not line.strip():
                return
            with self._lock:
                child.tail.append(line)
            self.say(f"{child.label} | {line}")
            if child.name == "supernode" and (m := _CONNECTED.search(line)):
                self.connected.set()
                self.say(f"connected: the SuperLink accepted this site's node key (node {m[1]})")

        return show

    def _spawn(self, child: _Child) -> None:
        proc = self.processes.spawn(child.name, child.argv, child.env, output=self._output(child))
        self.say(f"started {child.name} (pid {proc.pid})")

    def run(self, stop: threading.Event | None = None) -> None:
        """Start both processes and supervise them until ``stop``, a signal or a fatal exit."""
        stop = stop or threading.Event()
        self._build()
        for line in self.describe():
            self.say(line)
        for warning in private_key_warnings(self.launch.keys):
            self.say(f"warning: {warning}")
        guard = signal_guard().__enter__()
        try:
            for child in self._children.values():
                self._spawn(child)
            while not stop.wait(0.2):
                for child in self._children.values():
                    code = self.processes.get(child.name).poll()
                    if code is not None:
                        self._exited(child, code)
        except KeyboardInterrupt:
            self.say("interrupted (Ctrl-C)")
        except SystemExit as exc:
            self.say(f"signal received (exit {exc.code}); stopping")
        finally:
            with signals_ignored():  # a second signal must not cut the clean-up short
                self.stop()
            guard.__exit__()

    def _exited(self, child: _Child, code: int) -> None:
        time.sleep(0.3)  # let the output pump deliver the last lines
        with self._lock:
            lines = list(child.tail)
        fatal = classify_exit(child.name, lines, self.launch)
        if fatal is not None:
            raise SiteStartError(fatal)
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW]
        if len(child.restarts) >= self.max_restarts:
            last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
            raise SiteStartError(
                f"{child.name} exited {len(child.restarts) + 1} times within "
                f"{RESTART_WINDOW / 60:g} minutes (last status {code}; last line: {last[:200]}). "
                "Fix: read its output above"
            )
        delay = min(60.0, 2.0 ** len(child.restarts))
        self.say(f"{child.name} exited with status {code}; restarting in {delay:g} s")
        child.restarts.append(now)
        time.sleep(delay)
        if child.name == "supernode":
            self.connected.clear()
        self._spawn(child)

    def stop(self) -> None:
        self.say("stopping the SuperNode and the site agent")
        survivors = self.processes.stop()
        if survivors:
            self.say(f"warning: processes {survivors} did not stop")
        else:
            self.say("stopped")
        if self._own_state:
            shutil.rmtree(self.state, ignore_errors=True)


def start_site(
    cfg: SiteConfig,
    *,
    superlink: str,
    coordinator_hosts: tuple[str, ...] = (),
    runtime_port: int = 0,
    state_dir: Path | None = None,
    max_restarts: int = 5,
    log_level: str = "INFO",
    say: Say = print,
) -> None:
    """``her2fed site start``: preflight, then run until stopped (raises ``SiteStartError``)."""
    launch = preflight(cfg, superlink, coordinator_hosts)
    SiteService(
        launch,
        say=say,
        runtime_port=runtime_port,
        state_dir=state_dir,
        max_restarts=max_restarts,
        log_level=log_level,
    ).run()
