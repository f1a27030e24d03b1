"""The image configuration as a build changes it: the OCI config section
(`ImageConfig`), how each resolved metadata instruction changes it (`apply`), and a
stage's image state as its instructions go (`ImageState.advance`, which adds the
history entries of builder.plan.history). The value rules (durations, ports,
signals, paths) are builder.plan.configvalues. Pure functions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from lamina.builder.plan.history import HistoryEntry, history_entry
from lamina.builder.plan.resolved import (
    Healthcheck, Platform, Resolved, ResolvedArg, ResolvedCmd, ResolvedCopy, ResolvedEntrypoint,
    ResolvedEnv, ResolvedExpose, ResolvedHealthcheck, ResolvedLabel, ResolvedMaintainer,
    ResolvedOnbuild, ResolvedRun, ResolvedShell, ResolvedStopsignal, ResolvedUser,
    ResolvedVolume, ResolvedWorkdir,
)
from lamina.store.oci import check_runtime_config

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")

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
        check_runtime_config(data, "base image config")  # one stored before the store checked
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


def platform_config_fields(platform: Platform) -> dict:
    """The top-level platform fields of an image config document."""
    out = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        out["variant"] = platform.variant
    return out


__all__ = ["DEFAULT_PATH", "DEFAULT_SHELL", "ImageConfig", "ImageState", "apply", "set_env",
           "platform_config_fields"]
