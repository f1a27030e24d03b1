"""ARG and ENV scoping, BuildKit's way.

- Global scope: the automatic platform args (BUILDPLATFORM ... TARGETVARIANT) and
  the ARGs before the first FROM. They are visible in FROM lines only; a stage
  sees one only after re-declaring it (`ARG NAME`, which takes the global value).
- `--build-arg NAME=v` overrides the value of a declared ARG (global or stage);
  an undeclared build arg is not consumed (a warning, as docker prints).
- In a stage, ARG and ENV assign into one ordered environment, later assignments
  winning (so an ENV after an ARG of the same name overrides it, and an ARG after
  an inherited ENV overrides it for the build). ENV is also persisted in the image
  config; ARG never is. Every arg with a value is in the environment of a RUN.
- The predefined proxy args (HTTP_PROXY ... NO_PROXY, ALL_PROXY, either case) given
  as build args reach RUN steps without a declaration, but stay out of the cache key
  and the history unless declared. As in BuildKit (dockerfile2llb proxyEnvFromBuildArgs,
  llbsolver/ops/exec.go proxyEnvList) a RUN gets each given one under both names
  (HTTP_PROXY and http_proxy), after its environment: they replace an ENV or ARG of
  those names there (declared or not), and of two spellings given, the lower-case
  one's value wins (the names are taken in sorted order).

Pure values and functions; the planner (`builder.plan`) drives them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from lamina.builder.plan.resolved import Platform

PROXY_ARGS = frozenset(
    name for base in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for name in (base, base.lower())
)
PLATFORM_ARGS = (
    "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
    "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
)

Pairs = tuple[tuple[str, str], ...]
Expander = Callable[[str, Mapping[str, str]], str]


def is_proxy_arg(name: str) -> bool:
    """BuildKit matches the proxy names case-insensitively (strings.EqualFold)."""
    return name.lower() in PROXY_ARGS


def platform_args(build: Platform, target: Platform) -> dict[str, str]:
    """BuildKit's automatic platform args, before build-arg overrides."""
    return {
        "BUILDPLATFORM": str(build), "BUILDOS": build.os, "BUILDARCH": build.architecture,
        "BUILDVARIANT": build.variant,
        "TARGETPLATFORM": str(target), "TARGETOS": target.os,
        "TARGETARCH": target.architecture, "TARGETVARIANT": target.variant,
    }


def proxy_env(build_args: Mapping[str, str]) -> Pairs:
    """The proxy settings given as build args, for the environment of RUN steps."""
    return tuple((k, build_args[k]) for k in sorted(build_args) if is_proxy_arg(k))


def proxy_run_env(env: Pairs, proxies: Pairs) -> Pairs:
    """The environment of a RUN: `env`, then each proxy setting of `proxies` (build
    args, see proxy_env) under its upper- and lower-case name, replacing an entry of
    that name where it is and appending the others, as BuildKit's executor applies
    the proxy list after the step's env (containerd oci.WithEnv)."""
    values: dict[str, str] = {}
    for k, v in sorted(proxies):
        values[k.upper()] = v
    out = dict(env)
    for base in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"):
        if base in values:
            out[base] = out[base.lower()] = values[base]
    return tuple(out.items())


def _set(pairs: Pairs, key: str, value: str) -> Pairs:
    out = list(pairs)
    for i, (k, _) in enumerate(out):
        if k == key:
            out[i] = (key, value)
            return tuple(out)
    out.append((key, value))
    return tuple(out)


@dataclass(frozen=True)
class GlobalScope:
    """The args usable in FROM lines: name -> value, in declaration order."""

    values: Pairs
    declared: tuple[str, ...]  # names of the ARGs before the first FROM

    def env(self) -> dict[str, str]:
        return dict(self.values)

    def get(self, name: str) -> str | None:
        for k, v in self.values:
            if k == name:
                return v
        return None

    @classmethod
    def initial(cls, build_args: Mapping[str, str], platform: Platform) -> "GlobalScope":
        """The automatic platform args (a build arg of the same name overrides one)."""
        values: Pairs = ()
        for key, value in platform_args(platform, platform).items():
            values = _set(values, key, build_args.get(key, value))
        return cls(values=values, declared=())

    def declare(self, name: str, default: str | None, build_args: Mapping[str, str],
                expand: Expander) -> "GlobalScope":
        """A global `ARG name[=default]`: the build arg if given, else the default
        expanded with the globals so far, else no value (the name is still declared).
        `expand` may raise; the caller places the error."""
        values = self.values
        if name in build_args:
            values = _set(values, name, build_args[name])
        elif default is not None:
            values = _set(values, name, expand(default, dict(values)))
        return GlobalScope(values=values, declared=self.declared + (name,))


def global_scope(meta_args: Sequence[tuple[str, str | None]], build_args: Mapping[str, str],
                 platform: Platform, expand: Expander) -> GlobalScope:
    """BuildKit's buildMetaArgs: platform args (overridable by build args), then each
    global ARG in order (see `GlobalScope.declare`)."""
    scope = GlobalScope.initial(build_args, platform)
    for name, default in meta_args:
        scope = scope.declare(name, default, build_args, expand)
    return scope


@dataclass(frozen=True)
class ArgScope:
    """A stage's variables at one point: the ordered build environment (image ENV
    plus ARG values), which names in it currently hold an ARG's value, and the ARGs
    declared so far (inherited from the base stage, as BuildKit does)."""

    env: Pairs = ()
    from_arg: frozenset[str] = frozenset()
    declared: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def from_image_env(cls, env: Iterable[tuple[str, str]]) -> "ArgScope":
        return cls(env=tuple(env))

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def set_env(self, key: str, value: str) -> "ArgScope":
        """ENV: the value is persisted; it no longer comes from an ARG."""
        return ArgScope(env=_set(self.env, key, value), from_arg=self.from_arg - {key},
                        declared=self.declared)

    def declare(self, name: str, value: str | None) -> "ArgScope":
        """ARG: declared in the stage; a value enters the build environment."""
        env, from_arg = self.env, self.from_arg
        if value is not None:
            env = _set(env, name, value)
            from_arg = from_arg | {name}
        return ArgScope(env=env, from_arg=from_arg, declared=self.declared + ((name, value),))

    def is_declared(self, name: str) -> bool:
        return any(k == name for k, _ in self.declared)

    def args_in_env(self) -> Pairs:
        """The args a RUN sees (declared, with a value, not overridden by ENV)."""
        return tuple(sorted((k, v) for k, v in self.env if k in self.from_arg))

    def args_among(self, names: Iterable[str]) -> Pairs:
        """Of `names` (variables a word references), those whose value is an ARG's."""
        env = dict(self.env)
        return tuple(sorted((n, env[n]) for n in set(names) if n in self.from_arg and n in env))


def resolve_arg(name: str, default: str | None, *, build_args: Mapping[str, str],
                globals_: GlobalScope, scope: ArgScope, expand: Expander) -> str | None:
    """The value an `ARG name[=default]` in a stage gets (BuildKit's dispatchArg):
    the build arg; else the default expanded in the stage environment; else, for a
    bare declaration, the global value of that name; else none."""
    if name in build_args:
        return build_args[name]
    if default is not None:
        return expand(default, scope.env_dict())
    return globals_.get(name)


def unconsumed_build_args(build_args: Mapping[str, str], declared: Iterable[str]) -> tuple[str, ...]:
    """Build args no ARG declares (the predefined and BuildKit's own are exempt)."""
    known = set(declared) | set(PLATFORM_ARGS) | {"SOURCE_DATE_EPOCH"}
    return tuple(sorted(k for k in build_args
                        if k not in known and not is_proxy_arg(k)
                        and not k.startswith("BUILDKIT_")))


def unconsumed_warning(names: Sequence[str]) -> str:
    return f"[Warning] One or more build-args [{' '.join(names)}] were not consumed"


__all__ = [
    "PROXY_ARGS", "PLATFORM_ARGS", "is_proxy_arg", "platform_args", "proxy_env", "proxy_run_env",
    "GlobalScope", "global_scope", "ArgScope", "resolve_arg", "unconsumed_build_args",
    "unconsumed_warning",
]
