"""Start the processes of a local federation and make sure every one of them stops.

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
import secrets
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("her2fed.federation.processes")

MARK = "HER2FED_FEDERATION_MARK"
_PROC = Path("/proc")


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
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, output to ``log_dir/name.log``."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("this federation's processes were stopped")
            if name in self._children:
                raise ValueError(f"a process named {name!r} exists already")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"{name}.log", "ab") as out:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env(env),
                    start_new_session=True,
                )
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
