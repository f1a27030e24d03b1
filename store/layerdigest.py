"""A layer's diff_id computed while its compressed bytes arrive (a download), in a
thread beside the one receiving them: the chunks pass through a bounded queue to a
thread that decompresses, hashes and walks the tar (as layers.diff_id_of does), so
decompression overlaps the transfer instead of following it.

    digest = LayerDigester()
    for chunk in chunks: digest.feed(chunk)
    diff_id, size, kind = digest.finish()     # CorruptContent if not a valid layer

`abandon()` drops a digest whose stream starts over (a server without Range support).
"""

from __future__ import annotations

import queue
import threading

from lamina.store.decompress import PrefixedReader, detect
from lamina.store.layers import diff_id_of

QUEUE_CHUNKS = 32


class _QueueReader:
    """A readable stream over the chunks put into `q` (None: end of stream)."""

    def __init__(self, q: "queue.Queue[bytes | None]") -> None:
        self._q = q
        self._buf = b""
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            chunk = self._q.get()
            if chunk is None:
                self._eof = True
            else:
                self._buf += chunk
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while not self._eof:
            if self._q.get() is None:
                self._eof = True
        self._buf = b""


class LayerDigester:
    def __init__(self) -> None:
        self._q: "queue.Queue[bytes | None]" = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._result: tuple[str, int, str] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="layer-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        reader = _QueueReader(self._q)
        try:
            head = reader.read(6)
            kind = detect(head)
            diff_id, size = diff_id_of(PrefixedReader(head, reader))
            self._result = (diff_id, size, kind)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self._error = e
        finally:
            reader.drain()  # never leave the feeding thread blocked on a full queue

    def feed(self, chunk: bytes) -> None:
        if chunk and not self._closed:
            self._q.put(chunk)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._q.put(None)
        self._thread.join()

    def finish(self) -> tuple[str, int, str]:
        """(diff_id, uncompressed size, compression kind) of everything fed."""
        self._close()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def abandon(self) -> None:
        self._close()
