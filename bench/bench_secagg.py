"""What secure aggregation costs on top of plain summation.

Three measurements, all in one process and one run so that ratios compare
like with like: (1) the masking primitives per core (ChaCha20 keystream plus
ring addition, encoding, decoding); (2) the one-off key set-up per session
for 3, 10, 30 and 100 sites, per site and at the coordinator; (3) a typical
study vector (50,000 ints + 400,000 floats, 5 sites, 6 Cox-like rounds):
secure sum against the plain ``np.add`` merge it replaces, with and without
a dropout. Every party's work is timed separately (parse incoming bytes, the
state-machine step, serialise the reply), so both the in-process total and
the critical path (sites in parallel, network free) are reported.

``--quick`` uses fewer repeats and skips 100 sites; ``--markdown PATH``
rewrites only this script's section of PATH. Timings are reported, never
asserted: the script exits 1 only if a secure sum differs from the plain sum.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import cryptography
import numpy as np
from numpy.typing import NDArray

from bench.common import best_of, command_line, fmt_s, log, machine, publish, section
from her2fed.secagg import messages, prg
from her2fed.secagg.config import SessionConfig
from her2fed.secagg.coordinator import CoordinatorSession, SecureSum
from her2fed.secagg.driver import simulated_consortium
from her2fed.secagg.encoding import Encoding
from her2fed.secagg.messages import Message
from her2fed.secagg.randomness import SeededRandom
from her2fed.secagg.site import SiteSession

TYPICAL = (50_000, 400_000)
TYPICAL_SITES, TYPICAL_ROUNDS = 5, 6
SETUP_SITES = (3, 10, 30, 100)
SETUP_SITES_QUICK = (3, 10, 30)
COORD = "coordinator"

M = TypeVar("M", bound=Message)
T = TypeVar("T")

# ---------------------------------------------------------------- primitives


@dataclass
class Primitives:
    ring_mb: float
    limbs: int
    limb_bits: int
    mask_mbs: float
    encode_mbs: float
    decode_mbs: float


def measure_primitives(repeats: int) -> Primitives:
    n_ints, n_floats = TYPICAL
    enc = Encoding(n_ints, n_floats, max_sites=TYPICAL_SITES)
    rng = np.random.default_rng(1)
    ints = rng.integers(0, 10_000, n_ints)
    floats = rng.standard_normal(n_floats) * 1e3
    ring = enc.encode(ints, floats)
    nbytes = 8 * ring.shape[0]
    key = bytes(range(32))
    t_mask, _ = best_of(repeats, lambda: prg.apply_mask(ring, key, +1))
    t_enc, _ = best_of(repeats, lambda: enc.encode(ints, floats))
    total = sum((enc.encode(ints, floats) for _ in range(TYPICAL_SITES)), start=np.zeros_like(ring))
    t_dec, _ = best_of(repeats, lambda: enc.decode(total))
    input_mb = 8 * (n_ints + n_floats) / 1e6
    return Primitives(
        nbytes / 1e6,
        enc.limbs,
        enc.limb_bits,
        nbytes / 1e6 / t_mask,
        input_mb / t_enc,
        input_mb / t_dec,
    )


# ---------------------------------------------------------------- timed sessions


@dataclass
class Timed:
    """Seconds per (party, step, round) and bytes each party sent."""

    seconds: dict[tuple[str, str, int], float] = field(default_factory=lambda: defaultdict(float))
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sums: list[SecureSum] = field(default_factory=list)

    def run(self, party: str, step: str, r: int, fn: Callable[[], T]) -> T:
        t = time.perf_counter()
        out = fn()
        self.seconds[(party, step, r)] += time.perf_counter() - t
        return out

    def total(self, steps: Sequence[str] | None = None) -> float:
        return sum(v for (_, s, _), v in self.seconds.items() if steps is None or s in steps)

    def site_max(self, step: str, r: int) -> float:
        vals = [v for (p, s, rr), v in self.seconds.items() if p != COORD and (s, rr) == (step, r)]
        return max(vals, default=0.0)

    def coord(self, step: str, r: int) -> float:
        return self.seconds.get((COORD, step, r), 0.0)


SETUP = ("open", "advertise", "share_keys", "receive_shares")
ROUND = ("masked_input", "consistency", "unmask", "finish")


def timed_session(
    n_sites: int,
    n_rounds: int,
    n_ints: int,
    n_floats: int,
    inputs: Callable[[str, int], tuple[NDArray[np.int64], NDArray[np.float64]]] | None,
    drop_round0: Sequence[str] = (),
    seed: str = "bench",
) -> Timed:
    """One session through the state machines; every hop goes through bytes.

    Each party's timer covers parsing what it receives, the protocol step and
    serialising its reply. ``inputs=None`` stops after set-up. Sites in
    ``drop_round0`` vanish before sending their round-0 masked input.
    """
    rng = SeededRandom(seed)
    names = [f"site-{i:03d}" for i in range(n_sites)]
    cons = simulated_consortium(names, rng)
    timed = Timed()
    config = SessionConfig.create(
        names, n_rounds=n_rounds, n_ints=n_ints, n_floats=n_floats, rng=rng
    )
    coord = CoordinatorSession(
        config, cons.coordinator_key, cons.registry, used_sessions=set(), rng=rng
    )
    sites = {
        s: SiteSession(s, cons.site_keys[s], cons.registry, used_sessions=set(), rng=rng)
        for s in names
    }

    def hop(
        party: str, step: str, r: int, data: bytes, cls: type[M], act: Callable[[M], Message | None]
    ) -> bytes | None:
        def work() -> bytes | None:
            reply = act(cls.from_bytes(data))
            return None if reply is None else reply.to_bytes()

        out = timed.run(party, step, r, work)
        if out is not None:
            timed.sent[party] += len(out)
        return out

    def coord_out(step: str, r: int, fn: Callable[[], M]) -> bytes:
        data = timed.run(COORD, step, r, lambda: fn().to_bytes())
        timed.sent[COORD] += len(data) * n_sites  # one copy per addressed site
        return data

    def coord_in(
        step: str, r: int, data: bytes | None, cls: type[M], accept: Callable[[M], None]
    ) -> None:
        if data is not None:
            timed.run(COORD, step, r, lambda: accept(cls.from_bytes(data)))

    opened = coord_out("open", 0, coord.open)
    for s in names:
        reply = hop(s, "open", 0, opened, messages.SessionOpen, sites[s].open)
        coord_in("open", 0, reply, messages.Advertise, coord.receive_advertise)
    bundle = coord_out("advertise", 0, coord.advertise_bundle)
    for s in names:
        reply = hop(s, "share_keys", 0, bundle, messages.AdvertiseBundle, sites[s].share_keys)
        coord_in("share_keys", 0, reply, messages.ShareKeys, coord.receive_share_keys)
    share_bundles = timed.run(
        COORD, "share_keys", 0, lambda: {k: v.to_bytes() for k, v in coord.share_bundles().items()}
    )
    timed.sent[COORD] += sum(len(b) for b in share_bundles.values())
    for s in names:
        hop(s, "receive_shares", 0, share_bundles[s], messages.ShareBundle, sites[s].receive_shares)
    if inputs is None:
        return timed
    for r in range(n_rounds):
        begin = coord_out("masked_input", r, coord.begin_round)
        part = messages.RoundBegin.from_bytes(begin).participants
        for s in part:
            if r == 0 and s in drop_round0:
                continue

            def masked(m: messages.RoundBegin, s: str = s, r: int = r) -> Message:
                return sites[s].masked_input(m, *inputs(s, r))

            reply = hop(s, "masked_input", r, begin, messages.RoundBegin, masked)
            coord_in("masked_input", r, reply, messages.MaskedInput, coord.receive_masked_input)
        request = coord_out("consistency", r, coord.consistency_request)
        for s in messages.ConsistencyRequest.from_bytes(request).survivors:
            reply = hop(
                s, "consistency", r, request, messages.ConsistencyRequest, sites[s].consistency
            )
            coord_in("consistency", r, reply, messages.ConsistencyAck, coord.receive_consistency)
        unmask = coord_out("unmask", r, coord.unmask_request)
        for a in messages.UnmaskRequest.from_bytes(unmask).acks:
            s = a.sender
            reply = hop(s, "unmask", r, unmask, messages.UnmaskRequest, sites[s].unmask)
            coord_in("unmask", r, reply, messages.UnmaskResponse, coord.receive_unmask)
        timed.sums.append(timed.run(COORD, "finish", r, coord.finish_round))
    return timed


def critical_path(t: Timed, n_rounds: int) -> float:
    """Slowest site per step plus the coordinator's work, steps in sequence."""
    path = 0.0
    for step in SETUP:
        path += t.site_max(step, 0) + t.coord(step, 0)
    for r in range(n_rounds):
        for step in ROUND:
            path += t.site_max(step, r) + t.coord(step, r)
    return path


# ---------------------------------------------------------------- set-up cost


@dataclass
class SetupCost:
    n_sites: int
    threshold: int
    site_mean: float
    site_max: float
    coordinator: float
    critical: float
    site_kib: float
    coord_kib: float


def measure_setup(n_sites: int, n_rounds: int) -> SetupCost:
    t = timed_session(n_sites, n_rounds, 1, 1, None, seed=f"setup-{n_sites}")
    per_site: dict[str, float] = defaultdict(float)
    for (p, _, _), v in t.seconds.items():
        if p != COORD:
            per_site[p] += v
    sites_sent = [v for p, v in t.sent.items() if p != COORD]
    return SetupCost(
        n_sites=n_sites,
        threshold=max(3, n_sites // 2 + 1),
        site_mean=sum(per_site.values()) / n_sites,
        site_max=max(per_site.values()),
        coordinator=sum(v for (p, _, _), v in t.seconds.items() if p == COORD),
        critical=critical_path(t, 0),
        site_kib=max(sites_sent) / 1024,
        coord_kib=t.sent[COORD] / 1024,
    )


# ---------------------------------------------------------------- typical study vector


@dataclass
class Typical:
    plain: float
    secure_total: float
    secure_critical: float
    setup_critical: float
    round_critical: float
    masked_input_site: float
    finish_coord: float
    dropout_finish_coord: float
    dropout_critical: float
    masked_mib: float
    exact: bool
    float_err: float


def measure_typical(repeats: int) -> Typical:
    n_ints, n_floats = TYPICAL
    names = [f"site-{i:03d}" for i in range(TYPICAL_SITES)]
    rng = np.random.default_rng(7)
    data = {
        (s, r): (
            rng.integers(0, 5_000, n_ints),
            rng.standard_normal(n_floats) * 10.0 ** rng.integers(-3, 6),
        )
        for s in names
        for r in range(TYPICAL_ROUNDS)
    }

    def plain() -> list[tuple[NDArray[np.int64], NDArray[np.float64]]]:
        out = []
        for r in range(TYPICAL_ROUNDS):
            ints = data[(names[0], r)][0].copy()
            floats = data[(names[0], r)][1].copy()
            for s in names[1:]:
                np.add(ints, data[(s, r)][0], out=ints)
                np.add(floats, data[(s, r)][1], out=floats)
            out.append((ints, floats))
        return out

    t_plain, plain_sums = best_of(repeats, plain)

    def secure(drop: Sequence[str] = ()) -> Timed:
        return timed_session(
            TYPICAL_SITES,
            TYPICAL_ROUNDS,
            n_ints,
            n_floats,
            lambda s, r: data[(s, r)],
            drop_round0=drop,
            seed=f"typical-{len(drop)}",
        )

    runs = []
    for _ in range(repeats):
        gc.collect()
        runs.append(secure())
    best = min(runs, key=lambda t: critical_path(t, TYPICAL_ROUNDS))
    dropped = min(
        (secure(drop=[names[-1]]) for _ in range(max(1, repeats // 2))),
        key=lambda t: critical_path(t, TYPICAL_ROUNDS),
    )
    exact = all(np.array_equal(s.ints, p[0]) for s, p in zip(best.sums, plain_sums, strict=True))
    err = 0.0  # against the exact (correctly rounded) sum, not numpy's rounded one
    for r, got in enumerate(best.sums):
        stacked = np.stack([data[(s, r)][1] for s in names], axis=1)
        fsum = np.array([math.fsum(row) for row in stacked.tolist()])
        bound = Encoding(n_ints, n_floats, TYPICAL_SITES).float_error_bound(TYPICAL_SITES, fsum)
        allowed = bound + np.abs(fsum) * 2.0**-53  # fsum's own final rounding
        err = max(err, float(np.max(np.abs(got.floats - fsum) / allowed)))
    setup = sum(best.site_max(st, 0) + best.coord(st, 0) for st in SETUP)
    rounds = critical_path(best, TYPICAL_ROUNDS) - setup
    return Typical(
        plain=t_plain,
        secure_total=best.total(),
        secure_critical=critical_path(best, TYPICAL_ROUNDS),
        setup_critical=setup,
        round_critical=rounds / TYPICAL_ROUNDS,
        masked_input_site=sum(best.site_max("masked_input", r) for r in range(TYPICAL_ROUNDS))
        / TYPICAL_ROUNDS,
        finish_coord=sum(best.coord("finish", r) for r in range(TYPICAL_ROUNDS)) / TYPICAL_ROUNDS,
        dropout_finish_coord=dropped.coord("finish", 0),
        dropout_critical=critical_path(dropped, TYPICAL_ROUNDS),
        masked_mib=8 * Encoding(n_ints, n_floats, TYPICAL_SITES).ring_length / 2**20,
        exact=exact,
        float_err=err,
    )


# ---------------------------------------------------------------- report


def report(p: Primitives, setups: Sequence[SetupCost], ty: Typical, n_rounds: int) -> str:
    n_ints, n_floats = TYPICAL
    lines = [
        "#### Masking primitives (one core)",
        "",
        "| operation | throughput |",
        "|---|---:|",
        f"| ChaCha20 keystream + add into the ring vector | {p.mask_mbs:,.0f} MB/s |",
        f"| encode (ints + floats -> ring; MB of float64/int64 input) | {p.encode_mbs:,.0f} MB/s |",
        f"| decode (ring sum -> ints + floats; MB of output) | {p.decode_mbs:,.0f} MB/s |",
        "",
        f"Ring vector of the typical study vector: {p.ring_mb:.1f} MB "
        f"({n_ints:,} ints + {n_floats:,} floats x {p.limbs} limbs of {p.limb_bits} bits, "
        f"8 bytes each: {TYPICAL_SITES} sites use the default format).",
        "",
        f"#### Key set-up per session ({n_rounds} rounds of keys and seeds)",
        "",
        "| sites | threshold | per site: mean (max) | coordinator | critical path | "
        "sent per site | sent by coordinator |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in setups:
        lines.append(
            f"| {s.n_sites} | {s.threshold} | {fmt_s(s.site_mean)} ({fmt_s(s.site_max)}) | "
            f"{fmt_s(s.coordinator)} | {fmt_s(s.critical)} | {s.site_kib:,.0f} KiB | "
            f"{s.coord_kib:,.0f} KiB |"
        )
    ratio_total = ty.secure_total / ty.plain
    lines += [
        "",
        f"#### Typical study vector: {n_ints:,} ints + {n_floats:,} floats, "
        f"{TYPICAL_SITES} sites, {TYPICAL_ROUNDS} rounds",
        "",
        "| | time |",
        "|---|---:|",
        f"| plain summation (`np.add`, all rounds) | {fmt_s(ty.plain)} |",
        f"| secure, in process (every party in turn, all rounds incl. set-up) | "
        f"{fmt_s(ty.secure_total)} |",
        f"| secure, critical path (sites in parallel, free network) | "
        f"{fmt_s(ty.secure_critical)} |",
        f"| of which key set-up (once per session) | {fmt_s(ty.setup_critical)} |",
        f"| of which per round | {fmt_s(ty.round_critical)} |",
        f"| per round: slowest site's masked input (encode + {TYPICAL_SITES} masks) | "
        f"{fmt_s(ty.masked_input_site)} |",
        f"| per round: coordinator's unmask + decode | {fmt_s(ty.finish_coord)} |",
        f"| **added time, critical path** (secure - plain) | "
        f"**{fmt_s(ty.secure_critical - ty.plain)}** |",
        f"| **ratio in process** secure / plain | **{ratio_total:,.0f}x** |",
        f"| **ratio critical path** secure / plain | **{ty.secure_critical / ty.plain:,.0f}x** |",
        f"| 1 site drops before its round-0 input: coordinator's round-0 unmask | "
        f"{fmt_s(ty.dropout_finish_coord)} |",
        f"| 1 site drops before its round-0 input: critical path (4 sites from then on) | "
        f"{fmt_s(ty.dropout_critical)} |",
        f"| masked vector per site and round | {ty.masked_mib:.1f} MiB |",
        "",
        f"- integer sums equal the plain sums bit for bit: {'yes' if ty.exact else 'NO'}",
        f"- float sums: largest |secure - exact| / documented bound = {ty.float_err:.2f} "
        "(must be <= 1; exact = `math.fsum`)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer repeats; set-up up to 30 sites")
    ap.add_argument("--repeats", type=int, help="best of this many (default 5, quick 2)")
    ap.add_argument("--setup-rounds", type=int, default=TYPICAL_ROUNDS, help="rounds of keys")
    ap.add_argument("--markdown", type=Path, help="write this run's section into this file")
    args = ap.parse_args(argv)
    info = machine({"cryptography": cryptography.__version__})
    repeats = args.repeats or (2 if args.quick else 5)
    if repeats < 1 or args.setup_rounds < 1:
        ap.error("--repeats and --setup-rounds must be >= 1")
    log("masking primitives")
    prims = measure_primitives(repeats)
    setups = []
    for n in SETUP_SITES_QUICK if args.quick else SETUP_SITES:
        log(f"set-up, {n} sites")
        setups.append(
            min(
                (measure_setup(n, args.setup_rounds) for _ in range(1 if n >= 30 else repeats)),
                key=lambda s: s.critical,
            )
        )
    log("typical study vector")
    typical = measure_typical(repeats)
    text = report(prims, setups, typical, args.setup_rounds)
    key = "secagg-quick" if args.quick else "secagg"
    title = "Secure aggregation" + (" (quick run)" if args.quick else "")
    publish(
        args.markdown,
        key,
        section(key, title, command_line("bench.bench_secagg", argv), info, [text]),
    )
    ok = typical.exact and typical.float_err <= 1.0
    if not ok:
        log("secure and plain sums DISAGREE (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
