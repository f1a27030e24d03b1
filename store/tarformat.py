"""The tar byte format as lamina writes and reads it: headers, PAX records, a strict
streaming reader. No filesystem access here (that is tarwrite / tarextract).

Written format (decided once, documented here):
- POSIX ustar headers (magic "ustar\\0", version "00"), one per entry, 512-byte blocks;
  numeric fields in zero-padded octal ending in NUL (checksum: 6 digits, NUL, space);
  mode holds only the 12 permission bits (incl. setuid/setgid/sticky), never the
  file-type bits; uname/gname empty; devmajor/devminor always filled (0 when not a
  device); the ustar prefix field is never used.
- A PAX extended header ('x', name "././@PaxHeader", mode 0644, everything else 0)
  precedes an entry only when needed: path > 100 bytes or not ASCII, linkpath likewise,
  uid/gid > 0o7777777, size > 0o77777777777, mtime negative or > 0o77777777777, or any
  xattr (SCHILY.xattr.<name>=<raw bytes>). Records are sorted by key bytes; mtime is an
  integer (never fractional). The ustar field of a value moved to PAX holds 0 / the
  first 100 bytes of the name.
- The archive ends with two zero blocks and is not padded to a record size (as Go's
  archive/tar, hence docker/buildkit, do).

The reader accepts ustar, old v7, PAX ('x' and 'g') and GNU long names ('L'/'K') with
octal or base-256 numbers; it rejects bad checksums, truncation, sparse files and
oversized metadata with CorruptContent, so a damaged layer never extracts silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from lamina.store.errors import CorruptContent

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

REGTYPE = b"0"
AREGTYPE = b"\0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
CONTTYPE = b"7"
PAX_LOCAL = b"x"
PAX_GLOBAL = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"

MAX_META = 16 << 20  # largest PAX / GNU long-name block we accept (bytes)
# PAX records pile up: every `x` header before a member and every `g` header of the
# stream are merged (Go's archive/tar keeps only the last `x` and applies no `g`), so
# a hostile layer of thousands of 16 MiB headers (a few MB gzipped) asked for
# gigabytes. What one member's local headers and the stream's global headers may add
# up to (the global ones are merged into every member: kept small, git archive's
# comment is 52 bytes):
MAX_LOCAL_PAX = MAX_META
MAX_GLOBAL_PAX = 64 << 10
_MAX_OCTAL7 = 0o7777777
_MAX_OCTAL11 = 0o77777777777
XATTR_PREFIX = "SCHILY.xattr."
_NO_DATA_TYPES = {LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE}


@dataclass
class Entry:
    """One tar member as both writer and reader see it. Paths are raw bytes."""

    name: bytes
    type: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0  # seconds (the reader rounds fractional PAX mtimes down)
    mtime_ns: int = 0  # the reader keeps the full precision here
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


# -- writing ---------------------------------------------------------------------------

def _octal(value: int, width: int) -> bytes:
    """Zero-padded octal in a field of `width` bytes (width-1 digits + NUL)."""
    return b"%0*o" % (width - 1, value) + b"\0"


def _field(raw: bytes, width: int) -> bytes:
    return raw[:width].ljust(width, b"\0")


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while True:
        rec = str(n).encode() + body
        if len(rec) == n:
            return rec
        n = len(rec)


def _header(name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int,
            mtime: int, linkname: bytes, devmajor: int, devminor: int) -> bytes:
    parts = [
        _field(name, 100), _octal(mode, 8), _octal(uid, 8), _octal(gid, 8),
        _octal(size, 12), _octal(mtime, 12), b" " * 8, typeflag,
        _field(linkname, 100), b"ustar\x00", b"00", bytes(32), bytes(32),
        _octal(devmajor, 8), _octal(devminor, 8), bytes(155), bytes(12),
    ]
    buf = bytearray(b"".join(parts))
    assert len(buf) == BLOCK
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def _fits(raw: bytes) -> bool:
    return len(raw) <= 100 and raw.isascii()


def encode_entry(e: Entry) -> bytes:
    """The header block(s) of `e`: an optional PAX header + its records, then the ustar
    header. Data blocks are the caller's."""
    pax: dict[bytes, bytes] = {}
    name, linkname = e.name, e.linkname
    uid, gid, size, mtime = e.uid, e.gid, e.size, e.mtime
    if not _fits(name):
        pax[b"path"] = name
        name = name[:100]
    if not _fits(linkname):
        pax[b"linkpath"] = linkname
        linkname = linkname[:100]
    if not 0 <= uid <= _MAX_OCTAL7:
        pax[b"uid"], uid = str(uid).encode(), 0
    if not 0 <= gid <= _MAX_OCTAL7:
        pax[b"gid"], gid = str(gid).encode(), 0
    if not 0 <= size <= _MAX_OCTAL11:
        pax[b"size"], size = str(size).encode(), 0
    if not 0 <= mtime <= _MAX_OCTAL11:
        pax[b"mtime"], mtime = str(mtime).encode(), 0
    for k, v in e.xattrs.items():
        pax[XATTR_PREFIX.encode() + k] = v
    out = b""
    if pax:
        records = b"".join(_pax_record(k, pax[k]) for k in sorted(pax))
        out = _header(b"././@PaxHeader", PAX_LOCAL, 0o644, 0, 0, len(records), 0, b"", 0, 0)
        out += records + padding(len(records))
    return out + _header(name, e.type, e.mode & 0o7777, uid, gid, size, mtime, linkname,
                         e.devmajor, e.devminor)


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


END_OF_ARCHIVE = ZERO_BLOCK * 2


# -- reading ---------------------------------------------------------------------------

def _parse_number(raw: bytes, what: str) -> int:
    if raw and raw[0] & 0x80:  # base-256 (GNU/star): two's complement after the marker bit
        inv = 0xFF if raw[0] & 0x40 else 0
        n = int.from_bytes(bytes([(raw[0] ^ inv) & 0x7F]) + bytes(b ^ inv for b in raw[1:]), "big")
        return ~n if inv else n
    s = raw.replace(b"\0", b" ").strip()
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise CorruptContent(f"tar header has an invalid {what} field {raw!r}") from None


def _cstr(raw: bytes) -> bytes:
    i = raw.find(b"\0")
    return raw if i < 0 else raw[:i]


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the records
            break
        sp = data.find(b" ", pos)
        if sp < 0 or sp - pos > 20:
            raise CorruptContent("tar PAX header is malformed")
        try:
            n = int(data[pos:sp])
        except ValueError:
            raise CorruptContent("tar PAX header has an invalid record length") from None
        end = pos + n
        if n <= sp - pos + 1 or end > len(data) or data[end - 1:end] != b"\n":
            raise CorruptContent("tar PAX header has an invalid record length")
        rec = data[sp + 1:end - 1]
        eq = rec.find(b"=")
        if eq <= 0:
            raise CorruptContent("tar PAX record has no key")
        out[rec[:eq]] = rec[eq + 1:]
        pos = end
    return out


def _add_pax(into: dict[bytes, bytes], data: bytes, held: int, limit: int, what: str) -> int:
    """Merge the records of PAX header `data` into `into`; `held` bytes of such headers
    were merged before. Returns the new total, CorruptContent past `limit`."""
    held += len(data)
    if held > limit:
        raise CorruptContent(f"tar {what}s add up to more than allowed ({limit} bytes)")
    into.update(parse_pax(data))
    return held


def _pax_int(value: bytes, key: str) -> int:
    if len(value) > 30:  # (and int() refuses more than 4300 digits with ValueError)
        raise CorruptContent(f"tar PAX record {key}={value[:40]!r}... is out of range")
    try:
        return int(value)
    except ValueError:
        raise CorruptContent(f"tar PAX record {key}={value!r} is not an integer") from None


def _pax_mtime_ns(value: bytes) -> int:
    s = value.decode("ascii", "replace")
    neg = s.startswith("-")
    whole, _, frac = s.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(whole) > 30:
        raise CorruptContent(f"tar PAX record mtime={value[:40]!r} is invalid")
    ns = int(whole) * 10**9 + int((frac + "000000000")[:9] or 0)
    return -ns if neg else ns


def _check_header(block: bytes, start: int) -> tuple[bytes, int]:
    """(typeflag, size field) of the non-zero header `block` at stream offset `start`;
    CorruptContent for a bad checksum or size."""
    stored = _parse_number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    if stored != unsigned:
        signed = sum(b - 256 if b > 127 else b for b in block[:148]) + 256 + \
            sum(b - 256 if b > 127 else b for b in block[156:])
        if stored != signed:
            raise CorruptContent(f"tar header at byte {start} has a bad checksum")
    size = _parse_number(block[124:136], "size")
    if size < 0:
        raise CorruptContent(f"tar header at byte {start} has a negative size")
    return block[156:157], size


def _entry(block: bytes, typeflag: bytes, size: int, merged: dict[bytes, bytes],
           longname: bytes | None, longlink: bytes | None) -> Entry:
    """The Entry of member header `block` with its PAX records (global and local,
    `merged`) and GNU long names applied; CorruptContent for a field that is invalid."""
    for key in merged:
        if key.startswith(b"GNU.sparse."):
            raise CorruptContent("tar member is a sparse file (not supported)")
    if typeflag == b"S":
        raise CorruptContent("tar member is a GNU sparse file (not supported)")
    name = _cstr(block[0:100])
    if block[257:262] == b"ustar":
        prefix = _cstr(block[345:500])
        if prefix and block[257:265] == b"ustar\x0000":
            name = prefix + b"/" + name
    linkname = _cstr(block[157:257])
    if longname is not None:
        name = longname
    if longlink is not None:
        linkname = longlink
    e = Entry(
        name=merged.get(b"path", name),
        type=AREGTYPE if typeflag == AREGTYPE else typeflag,
        mode=_parse_number(block[100:108], "mode") & 0o7777,
        uid=_parse_number(block[108:116], "uid"),
        gid=_parse_number(block[116:124], "gid"),
        size=size,
        mtime=_parse_number(block[136:148], "mtime"),
        linkname=merged.get(b"linkpath", linkname),
        devmajor=_parse_number(block[329:337], "devmajor") if block[257:262] == b"ustar" else 0,
        devminor=_parse_number(block[337:345], "devminor") if block[257:262] == b"ustar" else 0,
    )
    e.mtime_ns = e.mtime * 10**9
    if b"uid" in merged:
        e.uid = _pax_int(merged[b"uid"], "uid")
    if b"gid" in merged:
        e.gid = _pax_int(merged[b"gid"], "gid")
    if b"size" in merged:
        e.size = _pax_int(merged[b"size"], "size")
        if e.size < 0:
            raise CorruptContent("tar PAX size is negative")
    if b"mtime" in merged:
        e.mtime_ns = _pax_mtime_ns(merged[b"mtime"])
        e.mtime = e.mtime_ns // 10**9
    pre = XATTR_PREFIX.encode()
    for key, value in merged.items():
        if key.startswith(pre):
            e.xattrs[key[len(pre):]] = value
    if e.type in (REGTYPE, AREGTYPE, CONTTYPE):
        if e.type == AREGTYPE and e.name.endswith(b"/"):
            e.type = DIRTYPE
        else:
            e.type = REGTYPE
    return e


def _data_size(e: Entry) -> int:
    """Bytes of data that follow the header of `e` (before padding): regular files and
    members of unknown type carry data (as tarfile and GNU tar read them)."""
    return e.size if e.type == REGTYPE or e.type not in _NO_DATA_TYPES else 0


_EXTENDED = {PAX_LOCAL: "PAX header", PAX_GLOBAL: "PAX global header",
             GNU_LONGNAME: "GNU long name", GNU_LONGLINK: "GNU long link name"}


class TarReader:
    """Iterates the members of an uncompressed tar stream. After `next()` returns an
    Entry, its data is read with `read_data(sink)` or skipped automatically by the
    following `next()`. `next()` returns None at the end-of-archive marker."""

    def __init__(self, stream: BinaryIO) -> None:
        self._s = stream
        self._remaining = 0  # data bytes of the current member not yet read
        self._pad = 0
        self._global: dict[bytes, bytes] = {}
        self._global_bytes = 0
        self.offset = 0

    def _read_exact(self, n: int) -> bytes:
        parts = []
        got = 0
        while got < n:
            chunk = self._s.read(n - got)
            if not chunk:
                raise CorruptContent(f"tar stream is truncated at byte {self.offset + got}")
            parts.append(chunk)
            got += len(chunk)
        self.offset += n
        return b"".join(parts)

    def _read_upto(self, n: int) -> bytes:
        parts = []
        got = 0
        while got < n:
            chunk = self._s.read(n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            k = min(n, 1 << 20)
            self._read_exact(k)
            n -= k

    def read_data(self, sink: Callable[[bytes], object], chunk: int = 1 << 20) -> int:
        """Stream the current member's remaining data to `sink`; returns bytes passed."""
        total = 0
        while self._remaining:
            data = self._read_exact(min(chunk, self._remaining))
            self._remaining -= len(data)
            total += len(data)
            sink(data)
        return total

    def _finish_member(self) -> None:
        self._skip(self._remaining + self._pad)
        self._remaining = self._pad = 0

    def _read_meta(self, size: int, what: str) -> bytes:
        if size > MAX_META:
            raise CorruptContent(f"tar {what} of {size} bytes is larger than allowed ({MAX_META})")
        data = self._read_exact(size)
        self._skip(-size % BLOCK)
        return data

    def next(self) -> Entry | None:
        self._finish_member()
        pax: dict[bytes, bytes] = {}
        pax_bytes = 0
        longname = longlink = None
        while True:
            start = self.offset
            block = self._read_upto(BLOCK)
            if len(block) < BLOCK:
                if not block and start == 0:
                    raise CorruptContent("tar stream is empty")
                if not block and not pax and longname is None and longlink is None:
                    raise CorruptContent(
                        f"tar stream ends at byte {start} without an end-of-archive marker")
                raise CorruptContent(f"tar stream is truncated at byte {start}")
            self.offset += BLOCK
            if block == ZERO_BLOCK:
                if pax or longname is not None or longlink is not None:
                    raise CorruptContent(f"tar stream ends inside an extended header at byte {start}")
                return None
            typeflag, size = _check_header(block, start)
            if typeflag == PAX_LOCAL:
                pax_bytes = _add_pax(pax, self._read_meta(size, "PAX header"), pax_bytes,
                                     MAX_LOCAL_PAX, "PAX header of one member")
                continue
            if typeflag == PAX_GLOBAL:
                self._global_bytes = _add_pax(
                    self._global, self._read_meta(size, "PAX global header"),
                    self._global_bytes, MAX_GLOBAL_PAX, "PAX global header")
                continue
            if typeflag == GNU_LONGNAME:
                longname = _cstr(self._read_meta(size, "GNU long name"))
                continue
            if typeflag == GNU_LONGLINK:
                longlink = _cstr(self._read_meta(size, "GNU long link name"))
                continue
            break

        e = _entry(block, typeflag, size, {**self._global, **pax}, longname, longlink)
        data = _data_size(e)
        self._remaining, self._pad = data, -data % BLOCK
        return e

    def drain(self) -> None:
        """Read the stream to EOF (padding after the end marker), e.g. to hash it all."""
        while self._s.read(1 << 20):
            pass
