"""Start federation processes (Flower servers, site agents) and make sure every one stops.

Used by the coordinator's ``LocalFederation`` and ``consortium serve`` and by
a hospital's ``her2fed site start`` (which is why it lives on the site's side:
a site installation never needs coordinator code).

Flower's servers start helpers of their own, some detached into new sessions
(the SuperLink's SuperExec, which starts ``flwr-serverapp``), so killing our
direct children's process groups is not enough. Every process started here
gets a marker in its environment (``HER2FED_FEDERATION_MARK=<random>``),
which its descendants inherit; ``stop()`` terminates every live process that
carries the marker (read from ``/proc/<pid>/environ`` on Linux), waits, and
kills what is left. The same scan is how tests prove that nothing was left
behind.

``stop()`` runs from ``finally`` blocks of the callers, from ``atexit``, and
— while a federation is up — on SIGTERM/SIGHUP, which are turned into
``SystemExit`` so that the normal unwinding runs (Ctrl-C already raises
``KeyboardInterrupt``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from her2fed.errors import Her2fedError

log = logging.getLogger("her2fed.federation.processes")

MARK = "HER2FED_FEDERATION_MARK"
_PROC = Path("/proc")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    "PYTHONUNBUFFERED": "1",
}
"""Environment of every Flower process we start: no telemetry, no update checks, no installs."""


class ProcessError(Her2fedError):
    """A program this federation needs is missing or could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """A console script of this environment (the one running Python), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ProcessError(
            f"{name} is not installed. Fix: install her2fed with its dependencies "
            "(pip install -e . installs flwr==1.41.0)"
        )
    return found


def flower_env(home: Path) -> dict[str, str]:
    """Flower's settings plus a private ``FLWR_HOME`` and this environment's scripts first on PATH.

    A private home per process keeps Flower from reading or writing a shared
    ``~/.flwr`` (installed app bundles, connection profiles).
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**FLOWER_ENV, "FLWR_HOME": str(home), "PATH": path}


def strip_ansi(text: str) -> str:
    """Flower colours its log lines even into pipes; a log file or journal wants plain text."""
    return _ANSI.sub("", text)


def marked_pids(mark: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``MARK=mark`` (Linux)."""
    needle = f"{MARK}={mark}".encode()
    found: list[int] = []
    if not _PROC.is_dir():
        return found
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state = stat.rpartition(")")[2].split()[0]
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class ProcessSet:
    """The child processes of one federation, stoppable as a whole."""

    def __init__(self, log_dir: Path) -> None:
        self.mark = secrets.token_hex(8)
        self.log_dir = log_dir
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopped = False
        ref = weakref.ref(self)
        atexit.register(lambda: (s := ref()) is not None and s.stop())

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(extra or {})
        env[MARK] = self.mark
        return env

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        output: Callable[[str], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, output to ``log_dir/name.log``.

        With ``output``, every line (ANSI colours removed) is also handed to it
        as it arrives, e.g. to show a supervised process's log on the console.
        A name may be reused once its previous process has exited (a restart).
        """
        with self._lock:
            if self._stopped:
                raise RuntimeError("this federation's processes were stopped")
            previous = self._children.get(name)
            if previous is not None and previous.poll() is None:
                raise ValueError(f"a process named {name!r} exists already")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            logfile = self.log_dir / f"{name}.log"
            if output is None:
                with open(logfile, "ab") as out:
                    proc = subprocess.Popen(
                        list(argv),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=self.env(env),
                        start_new_session=True,
                    )
            else:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=self.env(env),
                    start_new_session=True,
                )
                threading.Thread(
                    target=_pump, args=(proc, logfile, output), name=f"log-{name}", daemon=True
                ).start()
            self._children[name] = proc
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return proc

    def get(self, name: str) -> subprocess.Popen[bytes]:
        return self._children[name]

    def names(self) -> list[str]:
        return list(self._children)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal one child's whole process group (e.g. to simulate a site crashing)."""
        proc = self._children[name]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def leftovers(self) -> list[int]:
        return marked_pids(self.mark)

    def stop(self, timeout: float = 8.0) -> list[int]:
        """Terminate everything this set started (and their descendants); returns survivors."""
        with self._lock:
            self._stopped = True
            children = list(self._children.values())
        targets = set(marked_pids(self.mark)) | {p.pid for p in children if p.poll() is None}
        for proc in children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for pid in targets:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in children:
                proc.poll()
            if not marked_pids(self.mark) and all(p.poll() is not None for p in children):
                break
            time.sleep(0.1)
        for pid in marked_pids(self.mark):
            log.warning("process %d did not stop within %g s; killing it", pid, timeout)
            _signal(pid, signal.SIGKILL)
        for proc in children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        time.sleep(0.05)
        return marked_pids(self.mark)


def _pump(proc: subprocess.Popen[bytes], logfile: Path, output: Callable[[str], None]) -> None:
    """Copy a child's output line by line to its log file and to ``output`` until it closes."""
    assert proc.stdout is not None
    with open(logfile, "ab") as out:
        for raw in proc.stdout:
            out.write(raw)
            out.flush()
            line = strip_ansi(raw.decode("utf-8", errors="replace")).rstrip()
            with contextlib.suppress(Exception):  # a broken console must not kill the pump
                output(line)


class _SignalGuard:
    """While active, SIGTERM and SIGHUP raise SystemExit in the main thread (so cleanup runs)."""

    def __init__(self) -> None:
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                self._previous[sig] = signal.signal(sig, _raise_exit)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)


def signal_guard() -> _SignalGuard:
    return _SignalGuard()


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP while stopping children, then restore the handlers.

    A service manager or ``timeout`` may deliver a second SIGTERM (or a user
    press Ctrl-C twice) while we are stopping; with the default action that
    would kill this process half-way and leave its children running.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
