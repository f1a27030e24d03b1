"""The per-step output limit, as BuildKit's step log limit: a RUN's output (stdout and
stderr merged) passes through until `max_size` bytes, then one line
`[output clipped, log limit 2MiB reached]` is shown and the rest is drained and
discarded — the command keeps running, its exit status is kept.

    DEFAULT_MAX_SIZE = 2 MiB (BuildKit's default)
    max_size_from_env(environ) -> int | None   # LAMINA_STEP_LOG_MAX_SIZE; None = unlimited
    StepLog(sink, max_size).feed(data)         # the clipping filter; O(len(data)) per call
    OutputTail(lines).feed(data) / .text()     # the last lines, for a failed step's message
    terminal_safe(text) -> str                 # control characters shown, not sent
    controls_shown(text) -> str                # the same for many lines (newlines kept)

What lamina itself draws on a terminal (the tty progress, a failed step's error message)
shows a step's output with its control characters made visible in `cat -v`'s caret form
(ESC as ^[): a RUN's escape sequences would otherwise reach the user's terminal - clear
it, rewrite the lines above, set the clipboard (OSC 52). BuildKit's tty view renders the
output in a terminal emulator of its own for the same reason. `--progress plain` and
`json` pass the bytes on unchanged, as BuildKit's plain output.

`LAMINA_STEP_LOG_MAX_SIZE` is a byte count (as BUILDKIT_STEP_LOG_MAX_SIZE); -1 means
no limit. BuildKit's speed limit (BUILDKIT_STEP_LOG_MAX_SPEED) is not modelled: lamina
never slows a command down for its output.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Mapping

from lamina.builder.errors import BuildError

DEFAULT_MAX_SIZE = 2 * 1024 * 1024
ENV_MAX_SIZE = "LAMINA_STEP_LOG_MAX_SIZE"

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: int) -> str:
    """Bytes in binary units with up to 4 significant digits: 2097152 -> '2MiB'."""
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.4g}{_UNITS[unit]}"


def clipped_message(max_size: int) -> bytes:
    return f"[output clipped, log limit {human_size(max_size)} reached]\n".encode()


def max_size_from_env(environ: Mapping[str, str]) -> int | None:
    """The step log limit the environment asks for; None means unlimited."""
    raw = environ.get(ENV_MAX_SIZE, "").strip()
    if not raw:
        return DEFAULT_MAX_SIZE
    try:
        value = int(raw)
    except ValueError:
        raise BuildError(f"{ENV_MAX_SIZE}={raw!r} is not a byte count "
                         "(an integer; -1 for no limit)") from None
    if value < 0:
        if value != -1:
            raise BuildError(f"{ENV_MAX_SIZE}={raw!r}: use a byte count, or -1 for no limit")
        return None
    return value


class StepLog:
    """Pass output to `sink` up to `max_size` bytes (None: all of it), then the clipped
    line once, then nothing. Never buffers: each call costs O(len(data))."""

    def __init__(self, sink: Callable[[bytes], None], max_size: int | None) -> None:
        self.sink = sink
        self.max_size = max_size
        self.size = 0            # bytes passed on
        self.dropped = 0         # bytes discarded after the limit
        self.clipped = False
        self._ends_line = True   # the last byte passed on was a newline (or none passed)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self.clipped:
            self.dropped += len(data)
            return
        if self.max_size is None or self.size + len(data) <= self.max_size:
            self.size += len(data)
            self._ends_line = data.endswith(b"\n")
            self.sink(data)
            return
        room = self.max_size - self.size
        head = data[:room]
        self.dropped += len(data) - room
        self.size += room
        self.clipped = True
        if head:
            self._ends_line = head.endswith(b"\n")
        note = clipped_message(self.max_size)
        self.sink(head + (b"" if self._ends_line else b"\n") + note)


_CONTROLS = {c: f"^{chr(c + 64)}" for c in range(0x20) if c != 0x09}
_CONTROLS[0x7f] = "^?"
_CONTROLS.update({c: f"M-^{chr(c - 0x80 + 64)}" for c in range(0x80, 0xa0)})  # C1: CSI, OSC...


def terminal_safe(text: str) -> str:
    """`text` with every control character but tab in caret notation (ESC -> ^[); of a
    line rewritten with carriage returns (a progress bar) only its last state."""
    if "\r" in text:
        text = text.rstrip("\r").rpartition("\r")[2]
    return text.translate(_CONTROLS)


_LINE_CONTROLS = {c: s for c, s in _CONTROLS.items() if c != 0x0a}


def controls_shown(text: str) -> str:
    """`text` (of any number of lines) with every control character but newline and
    tab in caret form (ESC -> ^[, CR -> ^M): what lamina writes to a terminal of text a
    Dockerfile, an image or a registry chose (a step title, an error message)."""
    return text.translate(_LINE_CONTROLS)


class OutputTail:
    """The last `lines` lines of a step's output (for an error message), each kept to
    at most `line_max` bytes. O(len(data)) per feed, bounded memory."""

    def __init__(self, lines: int = 20, line_max: int = 4096) -> None:
        self.lines: deque[str] = deque(maxlen=lines)
        self.line_max = line_max
        self.partial = bytearray()
        self.cut = False  # the partial line was longer than line_max

    def _add(self, piece: bytes) -> None:
        room = self.line_max - len(self.partial)
        if len(piece) > room:
            self.cut = True
            piece = piece[:max(room, 0)]
        self.partial += piece

    def _end_line(self) -> None:
        text = bytes(self.partial).decode("utf-8", "replace").rstrip("\r")
        self.lines.append(terminal_safe(text) + ("…" if self.cut else ""))
        self.partial.clear()
        self.cut = False

    def feed(self, data: bytes) -> None:
        first = data.find(b"\n")
        if first < 0:
            self._add(data)
            return
        self._add(data[:first])
        self._end_line()
        last = data.rfind(b"\n")
        if last > first:
            # only the lines that can still be shown are decoded
            middle = data[first + 1:last].split(b"\n")[-self.lines.maxlen:]
            for line in middle:
                self._add(line)
                self._end_line()
        self._add(data[last + 1:])

    def text(self) -> str:
        lines = list(self.lines)
        if self.partial:
            lines.append(bytes(self.partial).decode("utf-8", "replace")
                         + ("…" if self.cut else ""))
        return "\n".join(lines)
