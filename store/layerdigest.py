"""A layer's diff_id computed while its compressed bytes arrive (a download), beside the
thread receiving them, in two more threads so that the work spreads over the cores:

    receiving thread --chunks--> inflate thread --blocks--> scan thread
    (store.registry)             (gzip/zstd/plain:          (sha256 of the tar,
                                  store.decompress)          store.tarformat.TarScan)

Decompression (isal/zstandard) and hashing (OpenSSL) release the GIL, and TarScan walks
the tar headers without copying member data, so the layer is checked about as fast as
it can be decompressed - the same checks as layers.diff_id_of (every header, checksum,
size, PAX record, the end-of-archive marker): a damaged layer is refused as it arrives.

    digest = LayerDigester()
    for chunk in chunks: digest.feed(chunk)
    diff_id, size, kind = digest.finish()     # CorruptContent if not a valid layer

`abandon()` drops a digest whose stream starts over (a server without Range support).
"""

from __future__ import annotations

import hashlib
import queue
import threading

from lamina.store.decompress import GzipInflater, PrefixedReader, detect, open_decompressed
from lamina.store.tarscan import TarScan

QUEUE_CHUNKS = 8           # compressed pieces (FEED_SIZE) waiting for the inflate thread
QUEUE_BLOCKS = 8           # decompressed blocks waiting for the scan thread
BLOCK_SIZE = 1 << 20       # decompressed bytes handed over at once
FEED_SIZE = 1 << 19        # received bytes handed to the inflate thread at once
SHORT_READS = 1 << 16      # reads this large may be short (the decompressors' reads)


class _QueueReader:
    """A readable stream over the chunks put into `q` (None: end of stream). `read(n)`
    returns n bytes unless the stream ends first - except that a read of SHORT_READS
    bytes or more may return one chunk, uncopied, as a raw stream may."""

    def __init__(self, q: "queue.Queue[bytes | None]") -> None:
        self._q = q
        self._buf = bytearray()
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        if n is not None and 0 <= n <= len(self._buf):
            data = bytes(self._buf[:n])
            del self._buf[:n]
            return data
        if not self._buf and not self._eof and n is not None and n >= 0:
            chunk = self._q.get()  # a chunk of exactly n bytes goes on uncopied
            if chunk is None:
                self._eof = True
                return b""
            if len(chunk) == n or n >= SHORT_READS and len(chunk) < n:
                return chunk
            self._buf += chunk
            return self.read(n)
        while not self._eof and (n is None or n < 0 or len(self._buf) < n):
            chunk = self._q.get()
            if chunk is None:
                self._eof = True
            else:
                self._buf += chunk
        size = len(self._buf) if n is None or n < 0 else min(n, len(self._buf))
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readable(self) -> bool:
        return True

    def next_chunk(self) -> bytes:
        """What is buffered, else the next chunk as it was put (b"" at the end)."""
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            return data
        if self._eof:
            return b""
        chunk = self._q.get()
        if chunk is None:
            self._eof = True
            return b""
        return chunk

    def drain(self) -> None:
        while not self._eof:
            if self._q.get() is None:
                self._eof = True
        self._buf = bytearray()


class LayerDigester:
    def __init__(self) -> None:
        self._chunks: "queue.Queue[bytes | None]" = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._blocks: "queue.Queue[bytes | None]" = queue.Queue(maxsize=QUEUE_BLOCKS)
        self._kind = "none"
        self._result: tuple[str, int] | None = None
        self._inflate_error: BaseException | None = None
        self._scan_error: BaseException | None = None
        self._scan_failed_early = False  # a bad header, not an early end of the stream
        self._stop = threading.Event()
        self._closed = False
        self._pending = bytearray()  # received bytes not yet handed on
        self._inflate = threading.Thread(target=self._run_inflate, name="layer-inflate", daemon=True)
        self._scan = threading.Thread(target=self._run_scan, name="layer-scan", daemon=True)
        self._inflate.start()
        self._scan.start()

    def _run_inflate(self) -> None:
        reader = _QueueReader(self._chunks)
        try:
            head = reader.read(6)
            self._kind = detect(head)
            if self._kind in ("gzip", "none"):  # chunks in, blocks out, nothing copied
                self._pass_on(head, reader)
                return
            stream = open_decompressed(PrefixedReader(head, reader))
            while not self._stop.is_set():
                block = stream.read(BLOCK_SIZE)
                if not block:
                    break
                self._blocks.put(block)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self._inflate_error = e
        finally:
            self._blocks.put(None)
            reader.drain()  # never leave the receiving thread blocked on a full queue

    def _pass_on(self, head: bytes, reader: _QueueReader) -> None:
        """gzip or plain tar: each received chunk inflated (or not) straight into the
        scan thread's queue."""
        inflater = GzipInflater() if self._kind == "gzip" else None
        chunk = head
        while chunk and not self._stop.is_set():
            if inflater is None:
                self._blocks.put(chunk)
            else:
                for block in inflater.feed(chunk):
                    self._blocks.put(block)
            chunk = reader.next_chunk()
        if inflater is not None and not self._stop.is_set():
            inflater.finish()

    def _run_scan(self) -> None:
        sha, size, scan = hashlib.sha256(), 0, TarScan()
        ended = False  # the inflate thread's None was taken
        try:
            while True:
                block = self._blocks.get()
                if block is None:
                    ended = True
                    break
                sha.update(block)
                size += len(block)
                if not scan.ended:
                    try:
                        scan.feed(block)
                    except BaseException:
                        self._scan_failed_early = True
                        raise
            scan.finish()
            self._result = ("sha256:" + sha.hexdigest(), size)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self._scan_error = e
            self._stop.set()
            while not ended:  # let the inflate thread end
                ended = self._blocks.get() is None

    def feed(self, chunk: bytes) -> None:
        """Take the next received chunk; handed on in FEED_SIZE pieces (fewer, larger
        calls into the decompressor, fewer hand-overs between the threads)."""
        if chunk and not self._closed:
            self._pending += chunk
            if len(self._pending) >= FEED_SIZE:
                self._chunks.put(bytes(self._pending))
                self._pending = bytearray()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pending:
                self._chunks.put(bytes(self._pending))
                self._pending = bytearray()
            self._chunks.put(None)
        self._inflate.join()
        self._scan.join()

    def finish(self) -> tuple[str, int, str]:
        """(diff_id, uncompressed size, compression kind) of everything fed."""
        self._close()
        # the first fault in stream order: a bad tar header before the point where
        # decompression failed, else the decompression error, else the tar's
        if self._scan_error is not None and self._scan_failed_early:
            raise self._scan_error
        if self._inflate_error is not None:
            raise self._inflate_error
        if self._scan_error is not None:
            raise self._scan_error
        assert self._result is not None
        return (*self._result, self._kind)

    def abandon(self) -> None:
        self._stop.set()
        self._close()
