"""Red team: PAX extended headers that pile up in memory.

Every `x` header before a member and every `g` header of a stream were merged into
dicts without any total bound (each header alone is capped at 16 MiB): a layer or an
ADD archive of thousands of such headers - a few MB once gzipped, the records
compress ~1000:1 - made lamina hold gigabytes (measured: 12 headers of 15 MiB, 250 MB
resident). Go's archive/tar keeps only the last `x` header and applies no `g`
header; lamina keeps merging (POSIX) but refuses a member whose local headers add up
past MAX_LOCAL_PAX and a stream whose global headers add up past MAX_GLOBAL_PAX, in
TarReader (extraction, ADD) and TarScan (pull) alike.
"""

from __future__ import annotations

import io
import resource

import pytest

from lamina.store.errors import CorruptContent
from lamina.store.tarformat import MAX_GLOBAL_PAX, MAX_LOCAL_PAX, TarReader
from lamina.store.tarscan import TarScan


def _header(name: bytes, typeflag: bytes, size: int) -> bytes:
    """A ustar header block (POSIX.1-1988 layout), checksum filled in."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode() + body) != n:
        n = len(str(n).encode() + body)
    return str(n).encode() + body


def _extended(typeflag: bytes, records: bytes) -> list[bytes]:
    return [_header(b"PaxHeader", typeflag, len(records)), records,
            b"\0" * (-len(records) % 512)]


def _member(name: bytes, data: bytes = b"") -> list[bytes]:
    return [_header(name, b"0", len(data)), data, b"\0" * (-len(data) % 512)]


class _Stream(io.RawIOBase):
    """The concatenation of `pieces`, produced as read (no big buffer)."""

    def __init__(self, pieces) -> None:
        self._it = iter(pieces)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        out, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
        return out


def _pile(typeflag: bytes, count: int, each: int):
    for i in range(count):
        yield from _extended(typeflag, _record(b"LAMINA.k%d" % i, b"v" * each))
    yield from _member(b"f", b"data")
    yield b"\0" * 1024


def _read_all(pieces) -> list:
    reader = TarReader(_Stream(pieces))
    out = []
    while (e := reader.next()) is not None:
        out.append(e)
    return out


def _scan_all(pieces) -> None:
    scan = TarScan()
    for piece in pieces:
        scan.feed(piece)
    scan.finish()


@pytest.mark.parametrize("read", [_read_all, _scan_all])
def test_local_headers_of_one_member_are_bounded(read):
    each = 4 << 20
    count = MAX_LOCAL_PAX // each + 2
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CorruptContent, match="add up to more than allowed"):
        read(_pile(b"x", count, each))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 3 * (MAX_LOCAL_PAX >> 10)


@pytest.mark.parametrize("read", [_read_all, _scan_all])
def test_global_headers_of_a_stream_are_bounded(read):
    with pytest.raises(CorruptContent, match="global header"):
        read(_pile(b"g", 3, MAX_GLOBAL_PAX // 2))


def test_ordinary_pax_headers_still_apply():
    pieces = [*_extended(b"g", _record(b"comment", b"0" * 40)),
              *_extended(b"x", _record(b"path", b"long/" * 40 + b"name")),
              *_extended(b"x", _record(b"SCHILY.xattr.user.k", b"v")),
              *_member(b"short", b"data"), *_member(b"next"), b"\0" * 1024]
    entries = _read_all(pieces)
    assert [e.name for e in entries] == [b"long/" * 40 + b"name", b"next"]
    assert entries[0].xattrs == {b"user.k": b"v"} and entries[1].xattrs == {}
    _scan_all(pieces)
