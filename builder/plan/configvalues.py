"""The small value rules of metadata instructions, BuildKit's way: Go-style
durations (HEALTHCHECK), EXPOSE port specs, STOPSIGNAL names, path cleaning and
WORKDIR joining. Pure functions only."""

from __future__ import annotations

import re
from collections.abc import Iterable

from lamina.builder.context.patterns import go_clean
from lamina.builder.errors import BuildError

MINIMUM_DURATION_NS = 1_000_000  # docker's container.MinimumDuration (1ms)


_DURATION_UNITS = {
    "ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_MAX_INT64 = (1 << 63) - 1


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds ("1m30s", "1.5h", "300ms", "0")."""
    s = text
    neg = False
    if s[:1] in ("-", "+"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError(f'time: invalid duration "{text}"')
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _DURATION_UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        scale = _DURATION_UNITS[unit]
        value = int(whole or "0") * scale
        if frac:
            value += int(frac) * scale // (10 ** len(frac))
        total += value
        if total > _MAX_INT64:
            raise ValueError(f'time: invalid duration "{text}"')
        pos = m.end()
    return -total if neg else total


def _frac_digits(value: int, digits: int) -> str:
    text = f"{value:0{digits}d}".rstrip("0")
    return "." + text if text else ""


def go_duration(ns: int) -> str:
    """Go's time.Duration.String()."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000_000_000:
        if u < 1_000:
            return f"{sign}{u}ns"
        if u < 1_000_000:
            return f"{sign}{u // 1_000}{_frac_digits(u % 1_000, 3)}\u00b5s"
        return f"{sign}{u // 1_000_000}{_frac_digits(u % 1_000_000, 6)}ms"
    seconds, frac = divmod(u, 1_000_000_000)
    text = f"{seconds % 60}{_frac_digits(frac, 9)}s"
    minutes = seconds // 60
    if minutes:
        text = f"{minutes % 60}m" + text
        hours = minutes // 60
        if hours:
            text = f"{hours}h" + text
    return sign + text


def parse_healthcheck_interval(flag: str, value: str) -> int:
    """A HEALTHCHECK duration flag, BuildKit's parseOptInterval rules."""
    if value == "":
        return 0
    try:
        ns = parse_go_duration(value)
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    if ns == 0:
        return 0
    if ns < MINIMUM_DURATION_NS:
        raise BuildError(f'Interval "{flag}" cannot be less than 1ms')
    return ns


def parse_port_range(text: str) -> tuple[int, int]:
    if text == "":
        raise ValueError("empty string specified for ports")

    def port(p: str) -> int:
        if not re.fullmatch(r"[0-9]+", p) or int(p) > 65535:
            raise ValueError(f"invalid port {p!r}")
        return int(p)

    if "-" not in text:
        n = port(text)
        return n, n
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"invalid port range format: {text}")
    start, end = port(parts[0]), port(parts[1])
    if end < start:
        raise ValueError(f"invalid range specified for port: {text}")
    return start, end


def parse_port_spec(raw: str) -> list[str]:
    """One EXPOSE word -> its `port/proto` entries (BuildKit's parsePortSpec)."""
    parts = raw.split(":")
    if len(parts) == 1:
        ip, host, container = "", "", parts[0]
    elif len(parts) == 2:
        ip, host, container = "", parts[0], parts[1]
    else:
        ip, host, container = ":".join(parts[:-2]), parts[-2], parts[-1]
    port, _, proto = container.partition("/")
    if port == "":
        raise BuildError(f"no port specified: {container}<empty>")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise BuildError(f"invalid proto: {proto}")
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip:
        import ipaddress

        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise BuildError(f"invalid IP address: {ip}") from None
    try:
        start, end = parse_port_range(port)
    except ValueError:
        raise BuildError(f"invalid containerPort: {port}") from None
    if host:
        try:
            hstart, hend = parse_port_range(host)
        except ValueError:
            raise BuildError(f"invalid hostPort: {host}") from None
        if (end - start) != (hend - hstart) and end != start:
            raise BuildError(
                f"invalid ranges specified for container and host Ports: {port} and {host}")
    return [f"{n}/{proto}" for n in range(start, end + 1)]


def parse_port_specs(words: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for word in words:
        out.extend(parse_port_spec(word))
    return tuple(out)


_SIGNAL_NAMES = frozenset(
    "ABRT ALRM BUS CHLD CLD CONT FPE HUP ILL INT IO IOT KILL PIPE POLL PROF PWR QUIT SEGV "
    "STKFLT STOP SYS TERM TRAP TSTP TTIN TTOU UNUSED URG USR1 USR2 VTALRM WINCH XCPU XFSZ "
    "RTMIN RTMAX".split()
    + [f"RTMIN+{i}" for i in range(1, 16)] + [f"RTMAX-{i}" for i in range(1, 15)]
)


def check_signal(text: str) -> str:
    """Validate a STOPSIGNAL value like moby's signal.ParseSignal; returns it unchanged."""
    if re.fullmatch(r"[+-]?[0-9]+", text):
        if int(text) == 0:
            raise BuildError(f"invalid signal: {text}")
        return text
    name = text.upper()
    if name.startswith("SIG"):
        name = name[3:]
    if name not in _SIGNAL_NAMES:
        raise BuildError(f"invalid signal: {text}")
    return text


def normalize_workdir(current: str, path: str) -> str:
    """BuildKit's NormalizeWorkdir (util/system, keepSlash=false): an absolute path is
    stored as written (`/usr/src/` keeps its slash, nothing is cleaned); a relative one
    is path.Join'ed (cleaned) onto the previous WORKDIR; an empty one keeps it."""
    parent = current or "/"
    if not parent.startswith("/"):
        parent = go_clean("/" + parent)
    if path == "":
        return parent
    if path.startswith("/"):
        return path
    return go_clean(parent + "/" + path)
