"""A container's log file, ROOT/containers/<id>/ctr.log, in docker's json-file shape:
one JSON object per line, {"log": TEXT, "stream": "stdout"|"stderr", "time": RFC 3339
with nanoseconds}. Output is cut at newlines, each record holding one line with its
"\\n" (or a partial line as it came). Bytes that are not UTF-8 round-trip: TEXT is
decoded with surrogateescape and JSON escapes the lone surrogates.

The monitor is the only writer (appends, flushed per record); readers (`logs`, a
foreground `run` following its container) read whole lines from an offset.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


@dataclass(frozen=True)
class Record:
    stream: str
    data: bytes
    time: str


def rfc3339_nano(t: float | None = None) -> str:
    t = time.time() if t is None else t
    ns = int(t * 1e9)
    base = datetime.fromtimestamp(ns // 10**9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns % 10**9:09d}Z"


def encode(stream: str, data: bytes, when: str | None = None) -> bytes:
    """The log lines for one chunk of output."""
    when = when or rfc3339_nano()
    out = []
    for piece in data.splitlines(keepends=True):
        text = piece.decode("utf-8", "surrogateescape")
        out.append(json.dumps({"log": text, "stream": stream, "time": when}).encode() + b"\n")
    return b"".join(out)


class LogWriter:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, stream: str, data: bytes) -> None:
        blob = encode(stream, data)
        while blob:
            n = os.write(self.fd, blob)
            blob = blob[n:]

    def close(self) -> None:
        os.close(self.fd)


def decode(line: bytes) -> Record | None:
    try:
        obj = json.loads(line)
        return Record(obj["stream"], obj["log"].encode("utf-8", "surrogateescape"), obj["time"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def read_from(path: Path, offset: int) -> tuple[list[Record], int]:
    """Whole records after `offset`, and the offset after the last whole line."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = [r for r in (decode(l) for l in data[:end].splitlines()) if r is not None]
    return records, offset + end


def tail(records: list[Record], n: int | None) -> list[Record]:
    """The records of the last `n` lines (a line: records of one stream up to one
    ending in a newline)."""
    if n is None or n < 0:
        return records
    if n == 0:
        return []
    starts = [0]
    for i, r in enumerate(records):
        if r.data.endswith(b"\n") and i + 1 < len(records):
            starts.append(i + 1)
    return records[starts[max(0, len(starts) - n)]:]
