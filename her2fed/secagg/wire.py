"""Canonical byte encoding shared by messages, signatures, AEAD data and KDF labels.

One encoding for everything that is signed, authenticated or hashed means two
different values can never produce the same bytes: every variable-length item
carries its length, integers have fixed widths, and the reader refuses
truncated input and trailing bytes, so ``to_bytes(from_bytes(b)) == b`` for
every accepted ``b``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable

from her2fed.secagg.errors import MalformedMessageError

COORDINATOR = "@coordinator"
"""The coordinator's name in sender/recipient fields (site ids cannot start with '@')."""
EVERYONE = "*"
"""Recipient of messages broadcast by the coordinator to every addressed site."""

SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TEXT = 256
MAX_ITEMS = 1 << 20
MAX_BLOB = 1 << 31


def is_site_id(value: str) -> bool:
    """Site ids are short and plain, so they can appear in logs and TOML keys unquoted."""
    return SITE_ID.fullmatch(value) is not None


class Writer:
    """Appends canonically encoded fields (big-endian, length-prefixed)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(struct.pack(">B", value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(struct.pack(">I", value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(struct.pack(">Q", value))
        return self

    def fixed(self, data: bytes, size: int) -> Writer:
        if len(data) != size:
            raise ValueError(f"expected {size} bytes, got {len(data)}")
        self._parts.append(bytes(data))
        return self

    def blob(self, data: bytes) -> Writer:
        self._parts += (struct.pack(">I", len(data)), bytes(data))
        return self

    def text(self, value: str) -> Writer:
        return self.blob(value.encode("utf-8"))

    def texts(self, values: Iterable[str]) -> Writer:
        encoded = [v.encode("utf-8") for v in values]
        self._parts.append(struct.pack(">I", len(encoded)))
        for item in encoded:
            self._parts += (struct.pack(">I", len(item)), item)
        return self

    def blobs(self, values: Iterable[bytes]) -> Writer:
        items = list(values)
        self.u32(len(items))
        for item in items:
            self.blob(item)
        return self

    def to_bytes(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads what ``Writer`` wrote and refuses anything else."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._data):
            raise MalformedMessageError(
                f"{self._what}: truncated at byte {self._pos} (needs {n} more bytes)"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def fixed(self, size: int) -> bytes:
        return bytes(self._take(size))

    def blob(self, max_len: int = MAX_BLOB) -> bytes:
        n = self.u32()
        if n > max_len:
            raise MalformedMessageError(f"{self._what}: field of {n} bytes exceeds {max_len}")
        return bytes(self._take(n))

    def text(self) -> str:
        raw = self.blob(MAX_TEXT)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessageError(f"{self._what}: text field is not UTF-8") from None

    def count(self) -> int:
        n = self.u32()
        if n > MAX_ITEMS:
            raise MalformedMessageError(f"{self._what}: {n} items exceed the limit {MAX_ITEMS}")
        return n

    def texts(self) -> tuple[str, ...]:
        """A list of texts; inlined because survivor lists are parsed at every site and step."""
        n = self.count()
        data, pos, end = self._data, self._pos, len(self._data)
        out = []
        try:
            for _ in range(n):
                if pos + 4 > end:
                    raise MalformedMessageError(f"{self._what}: truncated at byte {pos}")
                size = int.from_bytes(data[pos : pos + 4], "big")
                pos += 4
                if size > MAX_TEXT or pos + size > end:
                    raise MalformedMessageError(f"{self._what}: bad text field at byte {pos}")
                out.append(str(data[pos : pos + size], "utf-8"))
                pos += size
        except UnicodeDecodeError:
            raise MalformedMessageError(f"{self._what}: text field is not UTF-8") from None
        self._pos = pos
        return tuple(out)

    def blobs(self) -> tuple[bytes, ...]:
        return tuple(self.blob() for _ in range(self.count()))

    def end(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessageError(
                f"{self._what}: {len(self._data) - self._pos} trailing bytes after the message"
            )


def encode(*fields: bytes | str | int) -> bytes:
    """Canonical encoding of a short tuple (for KDF info, AEAD data, commitments)."""
    w = Writer()
    for f in fields:
        if isinstance(f, bool):
            raise TypeError("booleans have no canonical encoding here")
        if isinstance(f, int):
            w.u8(1).u64(f)
        elif isinstance(f, str):
            w.u8(2).text(f)
        else:
            w.u8(3).blob(f)
    return w.to_bytes()
