"""Layer decompression: the kind of a stream detected by its magic bytes (gzip,
zstd or plain tar), and streaming decoders that turn bad or truncated input into
CorruptContent - a zstd stream's frame structure is followed (ZstdFrameTracker)
because zstandard's reader returns a clean EOF for a cut frame.

Reads sequentially, never seeks; `read(n)` returns n bytes unless at EOF. gzip is
inflated with python-isal (ISA-L, the same zlib API and output, about twice as fast
as zlib here: every pulled or loaded gzip layer goes through it).
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

import zstandard
from isal import isal_zlib as inflate  # zlib's API, ~2x faster inflate (Intel ISA-L)

from lamina.store.errors import CorruptContent, StoreError

READ_SIZE = 1 << 20  # bytes asked of the compressed stream per read

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class PrefixedReader:
    """A readable stream that yields `prefix` and then the rest of `raw`."""

    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        self._prefix = prefix
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            if n is None or n < 0:
                data, self._prefix = self._prefix + self._raw.read(), b""
                return data
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            if len(data) < n:
                data += self._raw.read(n - len(data))
            return data
        return self._raw.read(n)

    def readable(self) -> bool:
        return True


class _GzipReader:
    """Streaming gzip decoder (multi-member, zero padding after a member tolerated);
    CorruptContent on bad data or truncation: GzipInflater pulled by reads."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflater = GzipInflater()
        self._blocks = iter(())  # what the last chunk read inflates to, taken as needed
        self._buf = bytearray()
        self._eof = False

    def _fill(self, want: int) -> None:
        while len(self._buf) < want and not self._eof:
            block = next(self._blocks, None)
            if block is not None:
                self._buf += block
                continue
            src = self._raw.read(READ_SIZE)
            if not src:
                self._inflater.finish()  # CorruptContent when a member is cut
                self._eof = True
                break
            self._blocks = self._inflater.feed(src)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while True:
                chunk = self.read(READ_SIZE)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        self._fill(n)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readable(self) -> bool:
        return True


class GzipInflater:
    """Push-style streaming gzip decoder (multi-member, zero padding between and after
    members tolerated, CorruptContent on bad data or truncation): `feed(chunk)` yields
    the uncompressed blocks (at most OUT_BLOCK bytes each) that chunk completes, as isal
    returns them - no copies, so a download's inflate thread hands them on as they
    are; `finish()` at the end of the input.

    Once a member has ended, the input goes to the decompressor in pieces of at most
    MEMBER_WINDOW bytes: at each member's end isal copies what follows it in the piece
    it was given (unused_data), so a stream of tiny members (an empty one is 20 bytes)
    fed whole chunks cost a chunk-sized copy per member - about a second of CPU per
    MiB of such a layer."""

    OUT_BLOCK = READ_SIZE
    MEMBER_WINDOW = 4096

    def __init__(self) -> None:
        self._z = inflate.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._started = False  # the current member has received input
        self._window = 0  # 0: whole chunks (one member so far), else the piece size

    def feed(self, data: bytes):
        view = memoryview(data)
        pos, n = 0, len(view)
        while True:
            if not self._started:
                while pos < n and view[pos] == 0:  # zero padding between or after members
                    piece = bytes(view[pos:pos + self.MEMBER_WINDOW])
                    pos += len(piece) - len(piece.lstrip(b"\0"))
                if pos >= n:
                    return
                self._started = True
            piece = view[pos:pos + self._window] if self._window else view[pos:]
            try:
                out = self._z.decompress(piece, self.OUT_BLOCK)
            except (inflate.error, zlib.error) as e:
                raise CorruptContent(f"gzip stream is corrupt: {e}") from None
            if self._z.eof:
                pos += len(piece) - len(self._z.unused_data)
                self._z = inflate.decompressobj(wbits=16 + zlib.MAX_WBITS)
                self._started = False
                self._window = self.MEMBER_WINDOW
            else:
                pos += len(piece) - len(self._z.unconsumed_tail)
            if out:
                yield out
            if self._started and len(out) == self.OUT_BLOCK:
                continue  # output may be pending with all input taken: ask again
            if pos >= n:
                return

    def finish(self) -> None:
        if self._started:
            raise CorruptContent("gzip stream is truncated")


class ZstdFrameTracker:
    """Follows zstd frame structure (RFC 8878: frame header, block headers, checksum,
    skippable frames) over the compressed bytes, without decompressing, so a stream cut
    at any point is told apart from one that ends between frames. (zstandard's stream
    reader returns a clean EOF for a truncated frame.)"""

    def __init__(self) -> None:
        self._need = 4  # bytes wanted for the current header piece
        self._state = "magic"
        self._buf = b""
        self._skip = 0  # body bytes still to pass over
        self._checksum = False
        self.frames = 0

    @property
    def at_boundary(self) -> bool:
        return self._state == "magic" and not self._buf and not self._skip

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                if not self._skip and self._state == "after_skip":
                    self._state, self._need = "magic", 4
                continue
            k = min(self._need - len(self._buf), n - pos)
            self._buf += data[pos:pos + k]
            pos += k
            if len(self._buf) == self._need:
                piece, self._buf = self._buf, b""
                self._advance(piece)

    def _advance(self, piece: bytes) -> None:
        st = self._state
        if st == "magic":
            magic = int.from_bytes(piece, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = "fhd", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skip_size", 4
            else:
                raise CorruptContent("zstd stream is corrupt: bad frame magic")
        elif st == "skip_size":
            self._skip = int.from_bytes(piece, "little")
            self._state = "after_skip"
            if not self._skip:
                self._state, self._need = "magic", 4
        elif st == "fhd":
            fhd = piece[0]
            single = fhd & 0x20
            fcs = (0, 2, 4, 8)[fhd >> 6] or (1 if single else 0)
            did = (0, 1, 2, 4)[fhd & 3]
            self._checksum = bool(fhd & 4)
            rest = (0 if single else 1) + did + fcs
            if rest:
                self._state, self._need = "fh_rest", rest
            else:
                self._state, self._need = "block", 3
        elif st == "fh_rest":
            self._state, self._need = "block", 3
        elif st == "block":
            hdr = int.from_bytes(piece, "little")
            last, btype, size = hdr & 1, (hdr >> 1) & 3, hdr >> 3
            if btype == 3:
                raise CorruptContent("zstd stream is corrupt: reserved block type")
            self._skip = 1 if btype == 1 else size
            if last:
                if self._checksum:
                    self._state, self._need = "checksum", 4
                else:
                    self._end_frame()
            # else: stay in "block" for the next header
        elif st == "checksum":
            self._end_frame()

    def _end_frame(self) -> None:
        self.frames += 1
        if self._skip:
            self._state = "after_skip"
        else:
            self._state, self._need = "magic", 4


class _TrackedRaw:
    def __init__(self, raw: BinaryIO, tracker: ZstdFrameTracker) -> None:
        self._raw = raw
        self._tracker = tracker
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._tracker.feed(data)
        elif n != 0:
            self.eof = True
        return data

    def readable(self) -> bool:
        return True


class _ZstdReader:
    """Streaming zstd decoder (all frames); CorruptContent on bad data or truncation."""

    def __init__(self, raw: BinaryIO) -> None:
        self._tracker = ZstdFrameTracker()
        self._raw = _TrackedRaw(raw, self._tracker)
        self._r = zstandard.ZstdDecompressor().stream_reader(self._raw, read_across_frames=True,
                                                             closefd=False)
        self._done = False

    def _read(self, n: int) -> bytes:
        out = bytearray()
        try:
            while len(out) < n and not self._done:  # stream_reader may return short reads
                chunk = self._r.read(n - len(out))
                if not chunk:
                    self._finish()
                    break
                out += chunk
        except zstandard.ZstdError as e:
            raise CorruptContent(f"zstd stream is corrupt: {e}") from None
        return bytes(out)

    def _finish(self) -> None:
        while self._raw.read(READ_SIZE):
            pass
        self._done = True
        if not self._tracker.at_boundary or not self._tracker.frames:
            raise CorruptContent("zstd stream is truncated")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while chunk := self._read(READ_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        return self._read(n)

    def readable(self) -> bool:
        return True


def detect(prefix: bytes) -> str:
    """The compression kind of a stream starting with `prefix` (>= 4 bytes if any)."""
    if prefix.startswith(GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(ZSTD_MAGIC):
        return "zstd"
    if prefix.startswith(b"\xfd7zXZ\x00") or prefix.startswith(b"BZh"):
        raise StoreError("layer is xz/bzip2-compressed: only gzip, zstd and plain tar are supported")
    return "none"


def open_decompressed(fileobj: BinaryIO) -> BinaryIO:
    """Readable stream of the uncompressed bytes of `fileobj` (gzip, zstd or plain),
    detected by magic bytes; reads sequentially, never seeks. Full reads: `read(n)`
    returns n bytes unless at EOF."""
    prefix = b""
    while len(prefix) < 6:
        chunk = fileobj.read(6 - len(prefix))
        if not chunk:
            break
        prefix += chunk
    kind = detect(prefix)
    raw = PrefixedReader(prefix, fileobj)
    if kind == "gzip":
        return _GzipReader(raw)  # type: ignore[return-value]
    if kind == "zstd":
        return _ZstdReader(raw)  # type: ignore[return-value]
    return raw  # type: ignore[return-value]
