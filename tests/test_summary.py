"""Additive summaries: addition only between equal layouts; flattening round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from her2fed.counts import event_table
from her2fed.grid import TimeGrid
from her2fed.summary import merge


def _table(n_groups: int, seed: int = 0) -> object:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 400, 50).astype(float)
    e = rng.integers(0, 2, 50)
    g = rng.integers(0, n_groups, 50)
    return event_table(
        TimeGrid(30, 360),
        t,
        e,
        g,
        np.zeros(50, np.int64),
        n_groups=n_groups,
        n_causes=1,
        n_strata=1,
    )


def test_merge_adds_and_refuses_other_layouts() -> None:
    a, b = _table(2, 1), _table(2, 2)
    total = merge([a, b])  # type: ignore[list-item]
    np.testing.assert_array_equal(total.events, a.events + b.events)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="different layouts"):
        merge([a, _table(3)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        merge([])


def test_flatten_round_trip_and_shape_is_public() -> None:
    a = _table(2)
    ints, floats = a.flatten()  # type: ignore[attr-defined]
    assert floats.size == 0 and ints.size == 2 * 13 + 2 * 13 + 1
    back = a.unflatten(ints, floats)  # type: ignore[attr-defined]
    assert back.layout() == a.layout()  # type: ignore[attr-defined]
    np.testing.assert_array_equal(back.censored, a.censored)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="layout"):
        a.unflatten(ints[:-1], floats)  # type: ignore[attr-defined]


def test_event_table_counts_and_at_risk() -> None:
    grid = TimeGrid(10, 30)
    t = np.array([5.0, 10, 12, 25, 40])
    e = np.array([1, 0, 1, 1, 1])
    tab = event_table(
        grid,
        t,
        e,
        np.zeros(5, np.int64),
        np.zeros(5, np.int64),
        n_groups=1,
        n_causes=1,
        n_strata=1,
        dropped=3,
    )
    assert tab.events[0, 0, 0].tolist() == [0, 1, 1, 1]
    assert tab.censored[0, 0].tolist() == [0, 1, 0, 1]  # 40 > horizon: censored at 30
    assert tab.at_risk()[0, 0].tolist() == [5, 5, 3, 2]
    assert int(tab.dropped[0]) == 3


def test_flatten_all_and_split_flat_are_inverse() -> None:
    """What the transports and the site use to move a round's summaries as two vectors."""
    from her2fed.summary import flatten_all, split_flat

    a, b = _table(2, 1), _table(3, 2)
    ints, floats = flatten_all([a, b])  # type: ignore[list-item]
    back = split_flat([a, b], ints, floats)  # type: ignore[list-item]
    np.testing.assert_array_equal(back[1].events, b.events)  # type: ignore[attr-defined]
    assert [x.layout() for x in back] == [a.layout(), b.layout()]  # type: ignore[attr-defined]


def test_a_secure_session_is_reused_only_while_rounds_fit() -> None:
    from her2fed.secagg.config import SessionConfig

    cfg = SessionConfig.create(
        ("a", "b", "c"), n_rounds=2, n_ints=10, n_floats=5, rng=np.random.default_rng(0).bytes
    )
    assert cfg.fits(0, 10, 5) and cfg.fits(1, 3, 0)
    assert not cfg.fits(2, 1, 1)  # keys were made for two rounds
    assert not cfg.fits(0, 11, 5) and not cfg.fits(0, 10, 6)  # longer than the session
