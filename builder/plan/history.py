"""The history entries BuildKit records for each instruction: `created_by` text
(the `%q`/`%v` forms of Go), whether the step makes a layer, `history_entry`.
Pure functions only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lamina.builder.plan.configvalues import go_duration
from lamina.grammar.goquote import go_quote
from lamina.builder.plan.resolved import (
    Healthcheck, Resolved, ResolvedArg, ResolvedCmd, ResolvedCopy, ResolvedEntrypoint,
    ResolvedEnv, ResolvedExpose, ResolvedHealthcheck, ResolvedLabel, ResolvedMaintainer,
    ResolvedOnbuild, ResolvedRun, ResolvedShell, ResolvedStopsignal, ResolvedUser,
    ResolvedVolume, ResolvedWorkdir,
)

HISTORY_COMMENT = "buildkit.dockerfile.v0"


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
