"""The image configuration as a build changes it: the OCI config section
(`ImageConfig`), the history entries BuildKit records, and how each resolved
metadata instruction changes them (`apply`, `advance`, `created_by`).

Also the small value rules those instructions need, BuildKit's way: EXPOSE port
specs, STOPSIGNAL names, WORKDIR joining, Go-style duration parsing/printing for
HEALTHCHECK and the `%q`/`%v` text of history lines. Pure functions only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from lamina.builder.errors import BuildError
from lamina.grammar.goquote import go_quote
from lamina.builder.plan.resolved import (
    Healthcheck, Platform, Resolved, ResolvedArg, ResolvedCmd, ResolvedCopy, ResolvedEntrypoint,
    ResolvedEnv, ResolvedExpose, ResolvedHealthcheck, ResolvedLabel, ResolvedMaintainer,
    ResolvedOnbuild, ResolvedRun, ResolvedShell, ResolvedStopsignal, ResolvedUser,
    ResolvedVolume, ResolvedWorkdir,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")
HISTORY_COMMENT = "buildkit.dockerfile.v0"
MINIMUM_DURATION_NS = 1_000_000  # docker's container.MinimumDuration (1ms)

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ImageConfig:
    """The "config" section of an OCI image config (with docker's Healthcheck,
    OnBuild and Shell). Maps are kept as key-sorted tuples, so equal configs are
    equal values; `env` keeps its order (later lookups depend on it)."""

    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] = ()
    working_dir: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str = ""
    args_escaped: bool = False
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()

    @classmethod
    def scratch(cls) -> "ImageConfig":
        """What BuildKit starts `FROM scratch` with: WORKDIR / and the default PATH."""
        return cls(env=(("PATH", DEFAULT_PATH),), working_dir="/")

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def get_env(self, key: str) -> str | None:
        """The value a RUN sees: the last entry of `key` (a base image may repeat one)."""
        found = None
        for k, v in self.env:
            if k == key:
                found = v
        return found

    def with_env(self, key: str, value: str) -> "ImageConfig":
        return replace(self, env=set_env(self.env, key, value))

    def with_default_path(self) -> "ImageConfig":
        """BuildKit makes sure PATH is set before a stage runs anything."""
        if self.get_env("PATH") is not None:
            return self
        return self.with_env("PATH", DEFAULT_PATH)

    def effective_shell(self) -> tuple[str, ...]:
        return self.shell or DEFAULT_SHELL

    def to_oci_dict(self) -> dict:
        """The JSON object, in the field order Go marshals and omitting empty fields."""
        out: dict = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env:
            out["Env"] = [f"{k}={v}" for k, v in self.env]
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.args_escaped:
            out["ArgsEscaped"] = True
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_oci_dict()
        if self.on_build:
            out["OnBuild"] = list(self.on_build)
        if self.shell:
            out["Shell"] = list(self.shell)
        return out

    @classmethod
    def from_oci_dict(cls, data: Mapping | None) -> "ImageConfig":
        """Read a config section (fields unknown to the OCI/docker schema are dropped,
        as BuildKit drops them)."""
        data = data or {}
        # kept in order and with duplicates, as BuildKit keeps a base image's Env (its
        # addEnv then replaces the first entry of a key; lookups see the last one)
        env = tuple(tuple(str(item).partition("=")[::2]) for item in data.get("Env") or ())
        health = data.get("Healthcheck")
        return cls(
            user=data.get("User") or "",
            exposed_ports=tuple(sorted(data.get("ExposedPorts") or {})),
            env=env,
            entrypoint=tuple(data["Entrypoint"]) if data.get("Entrypoint") else None,
            cmd=tuple(data["Cmd"]) if data.get("Cmd") else None,
            volumes=tuple(sorted(data.get("Volumes") or {})),
            working_dir=data.get("WorkingDir") or "",
            labels=tuple(sorted((data.get("Labels") or {}).items())),
            stop_signal=data.get("StopSignal") or "",
            args_escaped=bool(data.get("ArgsEscaped")),
            healthcheck=Healthcheck.from_oci_dict(health) if health else None,
            on_build=tuple(data.get("OnBuild") or ()),
            shell=tuple(data.get("Shell") or ()),
        )


def set_env(env: tuple[tuple[str, str], ...], key: str, value: str) -> tuple[tuple[str, str], ...]:
    """Replace `key` in place (keeping its position) or append it, like BuildKit's addEnv."""
    out = list(env)
    for i, (k, _) in enumerate(out):
        if k == key:
            out[i] = (key, value)
            return tuple(out)
    out.append((key, value))
    return tuple(out)


def _merge_sorted(items: tuple[str, ...], new: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(items).union(new)))


def apply(config: ImageConfig, resolved: Resolved, *, cmd_set: bool = False) -> ImageConfig:
    """The config after one resolved instruction. `cmd_set` says whether CMD was
    already set in the current stage: ENTRYPOINT clears a CMD inherited from the base
    image (or base stage), not one set earlier in the same stage."""
    match resolved:
        case ResolvedEnv(pairs=pairs):
            env = config.env
            for key, value in pairs:
                env = set_env(env, key, value)
            return replace(config, env=env)
        case ResolvedLabel(pairs=pairs):
            labels = dict(config.labels)
            labels.update(pairs)
            return replace(config, labels=tuple(sorted(labels.items())))
        case ResolvedExpose(ports=ports):
            return replace(config, exposed_ports=_merge_sorted(config.exposed_ports, ports))
        case ResolvedVolume(paths=paths):
            return replace(config, volumes=_merge_sorted(config.volumes, paths))
        case ResolvedUser(user=user):
            return replace(config, user=user)
        case ResolvedWorkdir(path=path):
            return replace(config, working_dir=path)
        case ResolvedCmd(argv=argv):
            return replace(config, cmd=argv, args_escaped=True)
        case ResolvedEntrypoint(argv=argv):
            new = replace(config, entrypoint=argv)
            return new if cmd_set else replace(new, cmd=None)
        case ResolvedShell(argv=argv):
            return replace(config, shell=argv)
        case ResolvedStopsignal(signal=signal):
            return replace(config, stop_signal=signal)
        case ResolvedHealthcheck(healthcheck=health):
            return replace(config, healthcheck=health)
        case ResolvedOnbuild(trigger=trigger):
            return replace(config, on_build=config.on_build + (trigger,))
        case ResolvedMaintainer() | ResolvedArg() | ResolvedRun() | ResolvedCopy():
            return config
    raise TypeError(f"not a resolved instruction: {resolved!r}")  # pragma: no cover


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class HistoryEntry:
    """One `history` item of the image config (its `created` time is the executor's:
    SOURCE_DATE_EPOCH)."""

    created_by: str
    empty_layer: bool
    comment: str = HISTORY_COMMENT

    def to_oci_dict(self, created: str | None = None) -> dict:
        out: dict = {}
        if created is not None:
            out["created"] = created
        out["created_by"] = self.created_by
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out


def go_quote_list(items: Sequence[str]) -> str:
    """`%q` of a []string: `["a" "b"]`."""
    return "[" + " ".join(go_quote(s) for s in items) + "]"


def go_list(items: Sequence[str]) -> str:
    """`%v` of a []string: `[a b]`."""
    return "[" + " ".join(items) + "]"


def run_command_string(argv: Sequence[str], build_args: Sequence[tuple[str, str | None]],
                       env: Mapping[str, str]) -> str:
    """BuildKit's runCommandString: `|N K=V ... argv...`, where the args are those
    declared in the stage (value as the RUN sees it, else the declared one)."""
    pairs: dict[str, str] = {}
    for key, value in build_args:
        pairs[key] = env[key] if key in env else (value or "")
    prefix = []
    if pairs:
        prefix = [f"|{len(pairs)}"] + [f"{k}={v}" for k, v in pairs.items()]
    return " ".join(prefix + list(argv))


def healthcheck_text(health: Healthcheck) -> str:
    """Go's `%+v` of the HealthcheckConfig struct."""
    return ("{Test:" + go_list(health.test)
            + f" Interval:{go_duration(health.interval)}"
            + f" Timeout:{go_duration(health.timeout)}"
            + f" StartPeriod:{go_duration(health.start_period)}"
            + f" StartInterval:{go_duration(health.start_interval)}"
            + f" Retries:{health.retries}}}")


def created_by(resolved: Resolved, *, build_args: Sequence[tuple[str, str | None]] = (),
               env: Mapping[str, str] | None = None) -> str | None:
    """The history `created_by` BuildKit writes for an instruction (None: ONBUILD,
    which records no history). For RUN, `build_args` are the ARGs declared in the
    stage so far and `env` the environment the RUN sees."""
    match resolved:
        case ResolvedEnv(pairs=pairs):
            return "ENV" + "".join(f" {k}={v}" for k, v in pairs)
        case ResolvedLabel(pairs=pairs):
            return "LABEL" + "".join(f" {k}={v}" for k, v in pairs)
        case ResolvedMaintainer(name=name):
            return f"MAINTAINER {name}"
        case ResolvedExpose(ports=ports):
            return f"EXPOSE {go_list(ports)}"
        case ResolvedVolume(paths=paths):
            return f"VOLUME {go_list(paths)}"
        case ResolvedUser(user=user):
            return f"USER {user}"
        case ResolvedWorkdir(path=path):
            return f"WORKDIR {path}"
        case ResolvedCmd(argv=argv):
            return f"CMD {go_quote_list(argv)}"
        case ResolvedEntrypoint(argv=argv):
            return f"ENTRYPOINT {go_quote_list(argv or ())}"
        case ResolvedShell(argv=argv):
            return f"SHELL {go_list(argv)}"
        case ResolvedStopsignal(signal=signal):
            return f"STOPSIGNAL {signal}"
        case ResolvedHealthcheck(healthcheck=health):
            return f"HEALTHCHECK {healthcheck_text(health)}"
        case ResolvedOnbuild():
            return None
        case ResolvedArg(pairs=pairs):
            return "ARG " + " ".join(k if v is None else f"{k}={v}" for k, v in pairs)
        case ResolvedRun(argv=argv):
            text = run_command_string(argv, build_args, env or {})
            return f"RUN {text} # buildkit"
        case ResolvedCopy() as c:
            parts = [c.keyword]
            if c.parents:
                parts.append("--parents")
            if c.chown:
                parts.append(f"--chown={c.chown}")
            if c.chmod:
                parts.append(f"--chmod={c.chmod}")
            parts.extend(c.sources)
            parts.extend(f"<<{f.name}" for f in c.inline)
            parts.append(c.dest)
            return " ".join(parts) + " # buildkit"
    raise TypeError(f"not a resolved instruction: {resolved!r}")  # pragma: no cover


def creates_layer(resolved: Resolved) -> bool:
    """Whether BuildKit records a (non-empty_layer) history entry with a layer."""
    if isinstance(resolved, (ResolvedRun, ResolvedCopy)):
        return True
    if isinstance(resolved, ResolvedWorkdir):
        return resolved.creates_dir
    return False


def history_entry(resolved: Resolved, *, build_args: Sequence[tuple[str, str | None]] = (),
                  env: Mapping[str, str] | None = None) -> HistoryEntry | None:
    text = created_by(resolved, build_args=build_args, env=env)
    if text is None:
        return None
    return HistoryEntry(created_by=text, empty_layer=not creates_layer(resolved))


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class ImageState:
    """A stage's image as its instructions go: the config, the author (MAINTAINER),
    the history added by this build and whether CMD was set in this stage."""

    config: ImageConfig
    author: str = ""
    history: tuple[HistoryEntry, ...] = ()
    cmd_set: bool = False

    def advance(self, resolved: Resolved, *, build_args: Sequence[tuple[str, str | None]] = (),
                env: Mapping[str, str] | None = None) -> "ImageState":
        config = apply(self.config, resolved, cmd_set=self.cmd_set)
        entry = history_entry(resolved, build_args=build_args, env=env)
        return ImageState(
            config=config,
            author=resolved.name if isinstance(resolved, ResolvedMaintainer) else self.author,
            history=self.history + ((entry,) if entry else ()),
            cmd_set=self.cmd_set or isinstance(resolved, ResolvedCmd),
        )


# --------------------------------------------------------------------------- value rules


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


def clean_path(path: str) -> str:
    """Go's path.Clean."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    text = "/".join(out)
    if rooted:
        return "/" + text
    return text or "."


def normalize_workdir(current: str, path: str) -> str:
    """BuildKit's NormalizeWorkdir (util/system, keepSlash=false): an absolute path is
    stored as written (`/usr/src/` keeps its slash, nothing is cleaned); a relative one
    is path.Join'ed (cleaned) onto the previous WORKDIR; an empty one keeps it."""
    parent = current or "/"
    if not parent.startswith("/"):
        parent = clean_path("/" + parent)
    if path == "":
        return parent
    if path.startswith("/"):
        return path
    return clean_path(parent + "/" + path)


def platform_config_fields(platform: Platform) -> dict:
    """The top-level platform fields of an image config document."""
    out = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        out["variant"] = platform.variant
    return out


__all__ = [
    "DEFAULT_PATH", "DEFAULT_SHELL", "HISTORY_COMMENT", "ImageConfig", "HistoryEntry",
    "ImageState", "apply", "created_by", "creates_layer", "history_entry", "set_env",
    "run_command_string", "healthcheck_text", "go_quote", "go_quote_list", "go_list",
    "parse_go_duration", "go_duration", "parse_healthcheck_interval", "parse_port_spec",
    "parse_port_specs", "parse_port_range", "check_signal", "clean_path", "normalize_workdir",
    "platform_config_fields",
]
