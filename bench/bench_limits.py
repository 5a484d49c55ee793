"""How far each phase of a 1M-row study is from what this machine can physically do.

A ratio to lifelines says whether her2fed is fast enough; it does not say how
much faster it could be. For that, each phase of the KM and Cox studies of
``bench.bench_core`` (5 sites x 200,000 rows, secure aggregation on, in
process, sites in turn) is set against its *floor*: the work the phase does,
counted while it runs, priced at the best rate this machine reaches for that
kind of work, measured here in the same process:

- **loading**: the columns a site reads, once, at memory-copy bandwidth;
- **local summaries**: every element the site's sums touch (Cox: the
  ``1 + p + p(p+1)/2`` products per row and step and their reduction; KM: the
  event table's index arithmetic and count), at the in-cache rate of one numpy
  multiply;
- **secure aggregation**: the ChaCha20 keystream bytes of every mask, the
  SHA-256 bytes of every signed message, every Ed25519 signature and
  verification and every X25519 agreement, each at the rate of the primitive
  alone, plus one memory pass for encoding and one for decoding every vector.

The floor is that of *this protocol and these algorithms* (the same work
done at peak rates, nothing overlapped), not of any conceivable method: it
tells how much of a phase is overhead around the work and how much is the
work itself. Nothing is asserted; the script exits 1 only if a study's
answer changes while counted.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

import her2fed.cox as cox
import her2fed.protocol as protocol
import her2fed.secagg.coordinator as sa_coordinator
import her2fed.secagg.site as sa_site
from bench.bench_core import N_SITES, SEED, Her2fedRun, her2fed_run, make_sites, study_for
from bench.common import best_of, command_line, fmt_s, log, machine, publish, section
from her2fed.cox import CoxResult
from her2fed.estimate import CurvesResult
from her2fed.km import KMCurve
from her2fed.secagg import prg
from her2fed.secagg.encoding import Encoding
from her2fed.secagg.messages import Message

ROWS = 200_000
ROWS_QUICK = 20_000

# ---------------------------------------------------------------- the machine's rates


def _rate(repeats: int, units: float, fn: Callable[[], object]) -> float:
    seconds, _ = best_of(repeats, fn)
    return units / seconds


def machine_rates(repeats: int) -> dict[str, float]:
    """Best rates of each kind of work, in units per second."""
    big = np.ones(32 * 2**20 // 8)  # 32 MiB: out of cache
    out = np.empty_like(big)
    cache = np.ones(8192)  # the size her2fed's Cox chunks work on
    cache_out = np.empty_like(cache)
    data = bytes(16 * 2**20)
    sink = bytearray(len(data))
    key = Ed25519PrivateKey.generate()
    sig = key.sign(b"x" * 40)
    pub = key.public_key()
    xa, xb = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()

    def chacha() -> None:
        enc = Cipher(algorithms.ChaCha20(bytes(32), bytes(16)), mode=None).encryptor()
        enc.update_into(data, sink)

    def multiply_in_cache() -> None:
        for _ in range(1000):
            np.multiply(cache, cache, out=cache_out)

    return {
        "copy bytes/s": _rate(repeats, 2 * big.nbytes, lambda: np.copyto(out, big)),
        "multiply elements/s": _rate(repeats, 1000 * cache.size, multiply_in_cache),
        "chacha20 bytes/s": _rate(repeats, len(data), chacha),
        "sha256 bytes/s": _rate(repeats, len(data), lambda: hashlib.sha256(data).digest()),
        "ed25519 sign/s": _rate(repeats, 200, lambda: [key.sign(b"x" * 40) for _ in range(200)]),
        "ed25519 verify/s": _rate(
            repeats, 200, lambda: [pub.verify(sig, b"x" * 40) for _ in range(200)]
        ),
        "x25519/s": _rate(repeats, 200, lambda: [xa.exchange(xb) for _ in range(200)]),
    }


# ---------------------------------------------------------------- counting the work


@contextmanager
def counted() -> Iterator[Counter[str]]:
    """Count the work of a run by wrapping the functions that do it (restored after)."""
    work: Counter[str] = Counter()
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, count: Callable[..., None]) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            count(*args, **kwargs)
            return original(*args, **kwargs)

        saved.append((owner, name, original))
        setattr(owner, name, wrapper)

    def mask(acc: Any, *_: Any) -> None:
        work["keystream bytes"] += acc.nbytes

    def digest(msg: Message) -> None:
        work["sha256 bytes"] += len(msg.body())

    def sign(*_: Any) -> None:
        work["signatures"] += 1

    def verify(*_: Any) -> None:
        work["verifications"] += 1

    def agree(*_: Any) -> None:
        work["agreements"] += 1

    def encode(enc: Encoding, *_: Any) -> None:
        work["encoded bytes"] += 8 * enc.ring_length

    def decode(enc: Encoding, *_: Any) -> None:
        work["decoded bytes"] += 8 * enc.ring_length

    def cell_sums(runs: Any, n_cells: int, beta: Any, xt: Any) -> None:
        p, n = xt.shape
        work["sum elements"] += 2 * n * (1 + p + p * (p + 1) // 2)  # products + reduction

    def table(grid: Any, time: Any, *_: Any, **__: Any) -> None:
        work["sum elements"] += 8 * len(time)  # binning, index arithmetic, one count

    wrap(prg, "apply_mask", mask)
    wrap(Message, "signed_digest", digest)
    wrap(Message, "signed", sign)
    wrap(Message, "verify", verify)
    for module in (sa_site, sa_coordinator):
        wrap(module, "agree", agree)
    wrap(Encoding, "encode", encode)
    wrap(Encoding, "decode", decode)
    wrap(cox, "_cell_sums", cell_sums)
    wrap(protocol, "event_table", table)  # the step's own reference to it
    try:
        yield work
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def floors(work: Counter[str], loaded_bytes: int, rates: dict[str, float]) -> dict[str, float]:
    """Seconds each phase would take doing the counted work at the measured peak rates."""
    secure = (
        work["keystream bytes"] / rates["chacha20 bytes/s"]
        + work["sha256 bytes"] / rates["sha256 bytes/s"]
        + work["signatures"] / rates["ed25519 sign/s"]
        + work["verifications"] / rates["ed25519 verify/s"]
        + work["agreements"] / rates["x25519/s"]
        + 2 * (work["encoded bytes"] + work["decoded bytes"]) / rates["copy bytes/s"]
    )
    return {
        "loading": 2 * loaded_bytes / rates["copy bytes/s"],
        "summaries": work["sum elements"] / rates["multiply elements/s"],
        "secure": secure,
    }


# ---------------------------------------------------------------- report


def _si(x: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= factor:
            return f"{x / factor:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def report(
    rates: dict[str, float],
    runs: dict[str, tuple[Her2fedRun, Counter[str], dict[str, float]]],
    rows: int,
) -> list[str]:
    out = ["#### This machine's rates (best of the repeats, one core)", ""]
    out += ["| work | rate |", "|---|---:|"]
    units = {
        "copy bytes/s": ("memory copy (read + write)", "B/s"),
        "multiply elements/s": ("numpy multiply, 8,192 float64 in cache", "elements/s"),
        "chacha20 bytes/s": ("ChaCha20 keystream (the masks)", "B/s"),
        "sha256 bytes/s": ("SHA-256 (what every signature covers)", "B/s"),
        "ed25519 sign/s": ("Ed25519 signatures", "/s"),
        "ed25519 verify/s": ("Ed25519 verifications", "/s"),
        "x25519/s": ("X25519 agreements", "/s"),
    }
    for key, (label, unit) in units.items():
        out.append(f"| {label} | {_si(rates[key], unit)} |")
    out += ["", f"#### {N_SITES} sites x {rows:,} rows: measured phase / its floor", ""]
    out += ["| study | phase | measured | floor | measured / floor | the counted work |"]
    out += ["|---|---|---:|---:|---:|---|"]
    for name, (run, work, floor) in runs.items():
        what = {
            "loading": "the analysis columns of every site, read once",
            "summaries": f"{work['sum elements'] / 1e6:,.0f} M element operations",
            "secure": (
                f"{work['keystream bytes'] / 1e6:,.0f} MB keystream, "
                f"{work['sha256 bytes'] / 1e6:,.0f} MB hashed, {work['signatures']} signatures, "
                f"{work['verifications']} verifications, {work['agreements']} agreements, "
                f"{(work['encoded bytes'] + work['decoded bytes']) / 1e6:,.0f} MB encoded/decoded"
            ),
        }
        for phase in ("loading", "summaries", "secure"):
            measured = run.phases[phase]
            out.append(
                f"| {name} | {phase} | {fmt_s(measured)} | {fmt_s(floor[phase])} | "
                f"**{measured / floor[phase]:.1f}x** | {what[phase]} |"
            )
        out.append(
            f"| {name} | estimation | {fmt_s(run.phases['estimation'])} | – | – | "
            "the coordinator's own arithmetic (no floor counted) |"
        )
    out += [
        "",
        "- The floor prices the counted work at the rates above with nothing overlapped; "
        "a phase at 1x would be doing nothing but that work. Element operations are priced "
        "at one in-cache multiply each (a multiply-add or a reduction step costs about "
        "the same in numpy).",
    ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help=f"{ROWS_QUICK:,} rows per site")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many (default 3)")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of the sites' rows (bench_core's)")
    ap.add_argument("--markdown", type=Path, help="write this run's section into this file")
    args = ap.parse_args(argv)
    info = machine()
    rows = ROWS_QUICK if args.quick else ROWS
    log("measuring the machine's rates")
    rates = machine_rates(args.repeats)
    frames = make_sites(N_SITES, rows, args.seed)
    runs: dict[str, tuple[Her2fedRun, Counter[str], dict[str, float]]] = {}
    ok = True
    for est, label in (("km", "Kaplan-Meier"), ("cox", "Cox (10 covariates, Efron)")):
        study = study_for(est)
        log(f"{label}: timing (best of {args.repeats}), then counting its work")
        _, run = best_of(args.repeats, lambda s=study: her2fed_run(s, frames))  # type: ignore[misc]
        with counted() as work:
            again = her2fed_run(study, frames)
        ok &= _same(run, again, est)
        analysis = study.analyses[0]
        loaded = sum(8 * len(f) * len(analysis.columns()) for f in frames)
        runs[label] = (run, work, floors(work, loaded, rates))
    key = "limits-quick" if args.quick else "limits"
    title = f"Physical limits: {N_SITES} sites x {rows:,} rows against this machine's rates"
    publish(
        args.markdown,
        key,
        section(
            key, title, command_line("bench.bench_limits", argv), info, report(rates, runs, rows)
        ),
    )
    return 0 if ok else 1


def _same(a: Her2fedRun, b: Her2fedRun, est: str) -> bool:
    """The counted run must give the timed run's answer (the wrappers change nothing)."""
    x, y = a.outcome.results[est], b.outcome.results[est]
    if isinstance(x, CoxResult) and isinstance(y, CoxResult):
        same = bool(np.array_equal(x.coef, y.coef))
    else:
        assert isinstance(x, CurvesResult) and isinstance(y, CurvesResult)
        cx, cy = x.groups["all"], y.groups["all"]
        assert isinstance(cx, KMCurve) and isinstance(cy, KMCurve)
        same = bool(np.array_equal(cx.surv, cy.surv))
    if not same:
        print(f"{est}: the counted run changed the answer", file=sys.stderr)
    return same


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    log(f"done in {time.perf_counter() - t0:.0f} s")
    sys.exit(code)
