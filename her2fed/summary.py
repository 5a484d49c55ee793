"""Additive summaries: what a site releases and what secure aggregation adds.

A summary is a frozen dataclass whose fields are all numpy arrays of a shape
fixed by the study. Merging is element-wise addition and nothing else, which
is what lets the sum be computed under secure aggregation and what makes the
pooled estimate independent of how rows were split across sites.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Self, TypeVar

import numpy as np
from numpy.typing import NDArray

Layout = tuple[tuple[str, tuple[int, ...], str], ...]
_KINDS: dict[str, type[Additive]] = {}


class Additive:
    """Mixin for frozen dataclasses of arrays; gives ``+``, layout and flattening."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _KINDS[cls.__name__] = cls

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def layout(self) -> Layout:
        """Names, shapes and dtypes: public, fixed by the study, equal at every site."""
        return tuple((k, tuple(v.shape), v.dtype.str) for k, v in self.arrays().items())

    def require_same_layout(self, other: object) -> None:
        """Refuse to combine summaries of different types or shapes."""
        if not isinstance(other, Additive) or type(other) is not type(self):
            raise ValueError(f"cannot add a {type(other).__name__} to a {type(self).__name__}")
        if other.layout() != self.layout():
            raise ValueError(
                f"cannot add summaries of different layouts: {self.layout()} vs {other.layout()}"
            )

    def __add__(self, other: Self) -> Self:
        self.require_same_layout(other)
        mine, theirs = self.arrays(), other.arrays()
        return type(self)(**{k: mine[k] + theirs[k] for k in mine})

    def flatten(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """All integer fields in one vector and all float fields in another."""
        ints = [v.ravel() for v in self.arrays().values() if v.dtype.kind in "iu"]
        floats = [v.ravel() for v in self.arrays().values() if v.dtype.kind == "f"]
        return (
            np.concatenate(ints).astype(np.int64) if ints else np.zeros(0, np.int64),
            np.concatenate(floats).astype(np.float64) if floats else np.zeros(0, np.float64),
        )

    def unflatten(self, ints: NDArray[np.int64], floats: NDArray[np.float64]) -> Self:
        """A summary of this layout filled from flat vectors (e.g. a secure sum)."""
        fields = self.arrays()
        want_i = sum(v.size for v in fields.values() if v.dtype.kind != "f")
        want_f = sum(v.size for v in fields.values() if v.dtype.kind == "f")
        if (len(ints), len(floats)) != (want_i, want_f):
            raise ValueError(
                f"flat vectors of length {len(ints)}/{len(floats)} do not match the summary "
                f"layout ({want_i}/{want_f})"
            )
        out: dict[str, NDArray[Any]] = {}
        pos = {"i": 0, "f": 0}
        for name, value in fields.items():
            kind = "f" if value.dtype.kind == "f" else "i"
            src = floats if kind == "f" else ints
            start = pos[kind]
            pos[kind] += value.size
            out[name] = np.asarray(src[start : pos[kind]], dtype=value.dtype).reshape(value.shape)
        return type(self)(**out)


T = TypeVar("T", bound=Additive)


def merge(summaries: Iterable[T]) -> T:
    """The pooled summary: the element-wise sum of the sites' summaries.

    Sums into one set of buffers instead of allocating a new summary per site.
    """
    it = iter(summaries)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("merge needs at least one summary") from None
    total = {k: v.copy() for k, v in first.arrays().items()}
    for s in it:
        first.require_same_layout(s)
        for k, v in s.arrays().items():
            np.add(total[k], v, out=total[k])
    return type(first)(**total)


def flatten_all(summaries: Sequence[Additive]) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """One round's summaries as the two flat vectors secure aggregation adds."""
    parts = [s.flatten() for s in summaries]
    ints = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    floats = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float64)
    return ints.astype(np.int64), floats.astype(np.float64)


def split_flat(
    templates: Sequence[Additive], ints: NDArray[np.int64], floats: NDArray[np.float64]
) -> list[Additive]:
    """Cut summed flat vectors back into summaries of the templates' (public) layouts."""
    out: list[Additive] = []
    i = f = 0
    for t in templates:
        ti, tf = t.flatten()
        out.append(t.unflatten(ints[i : i + ti.size], floats[f : f + tf.size]))
        i, f = i + ti.size, f + tf.size
    return out


def zeros_like_layout(kind: str, layout: Layout) -> Additive:
    """An all-zero summary of a public layout: what a coordinator needs to unflatten a sum.

    Layouts travel in the clear (they depend only on the study and the query);
    an unknown kind, field or dtype is refused rather than guessed.
    """
    cls = _KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown summary kind {kind!r}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if [name for name, _, _ in layout] != names:
        raise ValueError(f"layout of {kind} does not list its fields {names}")
    arrays = {}
    for name, shape, dtype in layout:
        if dtype not in ("<i8", "<f8") or any(d < 0 for d in shape):
            raise ValueError(f"{kind}.{name}: unsupported dtype {dtype!r} or shape {shape}")
        arrays[name] = np.zeros(tuple(shape), dtype=np.dtype(dtype))
    return cls(**arrays)
