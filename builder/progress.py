"""Progress display of a build: the events the executor emits, and the three ways
of showing them (`plain` for CI logs, `json` for machines, `tty` for people).

The executor only calls `Progress` methods; it never prints. Each renderer is a
small class that turns events into text on a stream:

- plain: BuildKit-like `#N` prefixed lines, full output lines (a RUN's output is
  clipped before it gets here, by builder.steplog),
  `#N CACHED`, `#N DONE 1.2s`, `#N ERROR: ...`.
- json: one JSON object per line: {"event": ..., "step": N, ...}.
- tty: a live, compact view: finished steps one line each with their timing,
  the running step with the tail of its output, redrawn in place.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from lamina.builder.steplog import controls_shown, terminal_safe

TAIL_LINES = 6  # output lines of the running step shown by the tty view


@dataclass(frozen=True)
class StepLabel:
    """How a step is named on screen: `[stage 2/5] RUN make`."""

    number: int          # BuildKit-style global vertex number (#N)
    stage: str           # stage name or index
    index: int           # 1-based position within the stage
    total: int           # steps in the stage
    text: str            # the instruction as written (first line)

    def __str__(self) -> str:
        return f"[{self.stage} {self.index}/{self.total}] {self.text}"


class Progress:
    """The interface the executor talks to. Thread-safe: stages may run in parallel."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    # events -----------------------------------------------------------------
    def note(self, message: str) -> None: ...
    def started(self, step: StepLabel) -> None: ...
    def cached(self, step: StepLabel) -> None: ...
    def missed(self, step: StepLabel, reason: str) -> None: ...
    def output(self, step: StepLabel, data: bytes) -> None: ...
    def done(self, step: StepLabel, seconds: float) -> None: ...
    def failed(self, step: StepLabel, message: str) -> None: ...
    def finished(self, image_id: str | None, tags: tuple[str, ...], seconds: float) -> None: ...
    def close(self) -> None: ...


def _split_lines(buffer: bytearray, data: bytes) -> list[str]:
    """Append data to buffer (the pending partial line); return the complete lines it
    now holds (decoded). Only `data` is searched: O(len(data)) per call, however long
    the pending line has grown."""
    first = data.find(b"\n")
    if first < 0:
        buffer.extend(data)
        return []
    buffer.extend(data[:first])
    raws = [bytes(buffer)]
    buffer.clear()
    raws.extend(data[first + 1:].split(b"\n"))
    buffer.extend(raws.pop())
    return [raw.rstrip(b"\r").decode("utf-8", "replace") for raw in raws]


class PlainProgress(Progress):
    """`--progress plain`: every line, prefixed by the step number, never shortened."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.partial: dict[int, bytearray] = {}
        self.started_at: dict[int, float] = {}

    def _print(self, text: str) -> None:
        with self.lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def note(self, message: str) -> None:
        self._print(message)

    def started(self, step: StepLabel) -> None:
        self.started_at[step.number] = time.monotonic()
        self._print(f"#{step.number} {step}")

    def cached(self, step: StepLabel) -> None:
        self._print(f"#{step.number} {step}")
        self._print(f"#{step.number} CACHED")

    def missed(self, step: StepLabel, reason: str) -> None:
        self._print(f"#{step.number} cache miss: {reason}")

    def output(self, step: StepLabel, data: bytes) -> None:
        buf = self.partial.setdefault(step.number, bytearray())
        t0 = self.started_at.get(step.number, time.monotonic())
        for line in _split_lines(buf, data):
            self._print(f"#{step.number} {time.monotonic() - t0:.3f} {line}")

    def _flush_partial(self, step: StepLabel) -> None:
        buf = self.partial.pop(step.number, None)
        if buf:
            self._print(f"#{step.number} {buf.decode('utf-8', 'replace')}")

    def done(self, step: StepLabel, seconds: float) -> None:
        self._flush_partial(step)
        self._print(f"#{step.number} DONE {seconds:.1f}s")

    def failed(self, step: StepLabel, message: str) -> None:
        self._flush_partial(step)
        self._print(f"#{step.number} ERROR: {message}")

    def finished(self, image_id: str | None, tags: tuple[str, ...], seconds: float) -> None:
        if image_id:
            self._print(f"writing image {image_id} done ({seconds:.1f}s)")
        for tag in tags:
            self._print(f"naming to {tag} done")


class JsonProgress(Progress):
    """`--progress json`: one JSON object per line, one per event."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.partial: dict[int, bytearray] = {}

    def _emit(self, event: str, step: StepLabel | None = None, **fields) -> None:
        record: dict = {"event": event, "time": round(time.time(), 3)}
        if step is not None:
            record.update(step=step.number, stage=step.stage, index=step.index,
                          total=step.total, instruction=step.text)
        record.update(fields)
        with self.lock:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()

    def note(self, message: str) -> None:
        self._emit("note", message=message)

    def started(self, step: StepLabel) -> None:
        self._emit("started", step)

    def cached(self, step: StepLabel) -> None:
        self._emit("cached", step)

    def missed(self, step: StepLabel, reason: str) -> None:
        self._emit("miss", step, reason=reason)

    def output(self, step: StepLabel, data: bytes) -> None:
        buf = self.partial.setdefault(step.number, bytearray())
        for line in _split_lines(buf, data):
            self._emit("output", step, line=line)

    def _flush_partial(self, step: StepLabel) -> None:
        buf = self.partial.pop(step.number, None)
        if buf:
            self._emit("output", step, line=buf.decode("utf-8", "replace"))

    def done(self, step: StepLabel, seconds: float) -> None:
        self._flush_partial(step)
        self._emit("done", step, seconds=round(seconds, 3))

    def failed(self, step: StepLabel, message: str) -> None:
        self._flush_partial(step)
        self._emit("error", step, message=message)

    def finished(self, image_id: str | None, tags: tuple[str, ...], seconds: float) -> None:
        self._emit("finished", image=image_id, tags=list(tags), seconds=round(seconds, 3))


@dataclass
class _Row:
    step: StepLabel
    status: str = "running"      # running | cached | done | error
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    partial: bytearray = field(default_factory=bytearray)
    miss: str = ""               # why the step missed the cache


class TtyProgress(Progress):
    """`--progress tty`: finished steps print once; running steps are redrawn in place
    with their elapsed time and the last lines of their output."""

    def __init__(self, stream: TextIO, *, width: int = 100, tick: float = 0.25) -> None:
        super().__init__(stream)
        self.width = width
        self.running: dict[int, _Row] = {}
        self.drawn_lines = 0
        self.tick = tick
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def _keep_time(self) -> None:
        """Redraw the running steps' timers while nothing else happens."""
        while not self._stop.wait(self.tick):
            with self.lock:
                if self.running:
                    self._erase()
                    self._draw()

    def _clip(self, text: str) -> str:
        # every line drawn passes here: a step title or message holds text of the
        # Dockerfile (or an image), whose control characters are shown, never sent
        text = controls_shown(text)
        return text if len(text) <= self.width else text[: self.width - 1] + "…"

    def _erase(self) -> None:
        if self.drawn_lines:
            self.stream.write(f"\x1b[{self.drawn_lines}F\x1b[J")
            self.drawn_lines = 0

    def _draw(self) -> None:
        lines = []
        now = time.monotonic()
        for row in self.running.values():
            lines.append(self._clip(f" => {row.step} {now - row.started:5.1f}s"))
            lines.extend(self._clip(f"    {t}") for t in row.tail)
        for line in lines:
            self.stream.write(line + "\n")
        self.drawn_lines = len(lines)
        self.stream.flush()

    def _settle(self, text: str) -> None:
        """Print a line that stays (above the live area)."""
        self._erase()
        self.stream.write(self._clip(text) + "\n")
        self._draw()

    def note(self, message: str) -> None:
        with self.lock:
            self._settle(message)

    def started(self, step: StepLabel) -> None:
        with self.lock:
            self.running[step.number] = _Row(step)
            self._erase()
            self._draw()
            if self._ticker is None and self.tick > 0:
                self._ticker = threading.Thread(target=self._keep_time, name="lamina-progress",
                                                daemon=True)
                self._ticker.start()

    def cached(self, step: StepLabel) -> None:
        with self.lock:
            self._settle(f" => CACHED {step}")

    def missed(self, step: StepLabel, reason: str) -> None:
        with self.lock:  # shown under the finished line, to keep the live view compact
            row = self.running.get(step.number)
            if row is not None:
                row.miss = reason

    def output(self, step: StepLabel, data: bytes) -> None:
        with self.lock:
            row = self.running.get(step.number)
            if row is None:
                return
            # the step's control characters are shown, never sent (builder.steplog)
            row.tail.extend(terminal_safe(line) for line in _split_lines(row.partial, data))
            self._erase()
            self._draw()

    def done(self, step: StepLabel, seconds: float) -> None:
        with self.lock:
            row = self.running.pop(step.number, None)
            self._settle(f" => {step} {seconds:.1f}s")
            if row is not None and row.miss:
                self._settle(f"    cache miss: {row.miss}")

    def failed(self, step: StepLabel, message: str) -> None:
        with self.lock:
            row = self.running.pop(step.number, None)
            self._settle(f" => ERROR {step}")
            if row is not None:
                for line in row.tail:
                    self._settle(f"    {line}")
            self._settle(f"    {message}")

    def finished(self, image_id: str | None, tags: tuple[str, ...], seconds: float) -> None:
        with self.lock:
            if image_id:
                self._settle(f" => writing image {image_id} ({seconds:.1f}s)")
            for tag in tags:
                self._settle(f" => naming to {tag}")

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self.lock:
            self._erase()
            self.stream.flush()


def make_progress(mode: str, stream: TextIO | None = None) -> Progress:
    """The renderer for `--progress MODE`; `auto` is tty when the stream is a terminal."""
    stream = stream if stream is not None else sys.stderr
    if mode == "auto":
        mode = "tty" if stream.isatty() else "plain"
    if mode == "tty":
        return TtyProgress(stream)
    if mode == "json":
        return JsonProgress(stream)
    return PlainProgress(stream)
