"""Cache keys of build steps, and the explanation of a miss.

A step's key is the sha256 of the canonical encoding of its `CacheInputs`: the
labeled components that can change what the step produces (parent, expanded
instruction and the flags that matter, the env and args it sees, user, workdir,
shell, the content key of the files it reads, mount specs, network, platform, and a
RUN's --ulimit values, as BuildKit's exec op carries them in its metadata).
The encoding starts with a schema version, so a change of the rules here changes
every key instead of silently reusing a stale layer. Secrets never enter: a mount
is described by its id and target only.

The executor stores the inputs of the last build for each step position and, on a
miss, `explain_miss(previous, current)` says which input changed.

Inputs that leave the machine (an exported build cache) are `sealed()` first: every
value that can carry a build arg (the instruction text, env, args, flag values, user,
workdir, mount specs) becomes a salted HMAC, so a registry cache of a builder stage
never shows the token an ARG passed it. `explain_miss` compares a sealed value by
sealing the current one with the same salt and names the change without values.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

SCHEMA = "lamina.cachekey.v1"

Pairs = tuple[tuple[str, str], ...]


def pairs(items: Mapping[str, str] | Iterable[tuple[str, str]]) -> Pairs:
    """Key-sorted pairs from a mapping or pair list (the canonical form of a map)."""
    if isinstance(items, Mapping):
        items = items.items()
    return tuple(sorted((str(k), str(v)) for k, v in items))


@dataclass(frozen=True)
class CacheKey:
    """A step's cache key: sha256 hex of its canonical inputs."""

    hex: str

    def __str__(self) -> str:
        return self.hex

    @property
    def short(self) -> str:
        return self.hex[:12]


def parent_scratch() -> str:
    return "scratch"


def parent_image(config_digest: str) -> str:
    """The parent of a stage's first step: the base image, by its config digest."""
    return f"image:{config_digest}"


def parent_step(key: CacheKey | str) -> str:
    return f"step:{key}"


@dataclass(frozen=True)
class CacheInputs:
    """Everything a step's result depends on, each component labeled.

    parent       "scratch", "image:sha256:<config digest>" or "step:<parent key>"
    instruction  the instruction after expansion, canonical text (e.g. JSON argv)
    flags        the flags that change the result (name -> value), e.g. chmod, chown
    env          the environment the step sees (for RUN: image ENV plus args in scope)
    args         the build args the step depends on (name -> value)
    user, workdir, shell
    content      opaque content key of exactly the files a COPY/ADD reads
    files        optional per-file digests (relative path -> digest) behind `content`,
                 used to name the changed file in an explanation
    sources      keys of other stages/images the step reads (COPY --from, mount from)
    mounts       canonical RUN --mount specs (never secret contents)
    network      RUN network mode
    platform     target platform, e.g. linux/amd64
    ulimits      a RUN's rlimits (the build's --ulimit), "name=soft:hard" sorted by name;
                 left out of the encoding when empty, so keys without any stay as they were
    """

    parent: str
    instruction: str
    flags: Pairs = ()
    env: Pairs = ()
    args: Pairs = ()
    user: str = ""
    workdir: str = ""
    shell: tuple[str, ...] = ()
    content: str = ""
    files: Pairs = ()
    sources: Pairs = ()
    mounts: tuple[str, ...] = ()
    network: str = ""
    platform: str = ""
    ulimits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # normalise maps given in any order, so equal inputs are equal values
        for name in ("flags", "env", "args", "files", "sources"):
            value = getattr(self, name)
            if isinstance(value, Mapping) or value != pairs(value):
                object.__setattr__(self, name, pairs(value))
        object.__setattr__(self, "shell", tuple(self.shell))
        object.__setattr__(self, "mounts", tuple(self.mounts))
        object.__setattr__(self, "ulimits", tuple(sorted(str(u) for u in self.ulimits)))

    def canonical(self) -> bytes:
        """The byte string hashed into the key (schema version first)."""
        body = {"schema": SCHEMA}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _OMITTED_WHEN_EMPTY and not value:
                continue
            body[f.name] = [list(p) for p in value] if f.name in _PAIR_FIELDS else (
                list(value) if isinstance(value, tuple) else value)
        return json.dumps(body, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    def key(self) -> CacheKey:
        return CacheKey(hashlib.sha256(self.canonical()).hexdigest())

    def sealed(self) -> "CacheInputs":
        """These inputs with every value that can hold a build arg or secret replaced
        by `sealed_value` (names, file digests, parents, shell and platform stay): what
        an exported cache record carries. A random salt per value, so equal values in
        two places (an ARG and the ENV made from it) do not show as equal."""

        def seal(value: str) -> str:
            return sealed_value(secrets.token_hex(8), value)

        return CacheInputs(
            parent=self.parent, instruction=seal(self.instruction),
            flags=tuple((k, seal(v)) for k, v in self.flags),
            env=tuple((k, seal(v)) for k, v in self.env),
            args=tuple((k, seal(v)) for k, v in self.args),
            user=seal(self.user), workdir=seal(self.workdir), shell=self.shell,
            content=self.content, files=self.files, sources=self.sources,
            mounts=tuple(seal(m) for m in self.mounts), network=self.network,
            platform=self.platform, ulimits=self.ulimits)

    def to_json(self) -> str:
        """A storable form (the executor keeps the last build's inputs per step)."""
        # every field is a str or a flat tuple (of str or of pairs): no deep copy needed
        # (asdict copies recursively: ~60 ms for a COPY of 5,000 files)
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)},
                          sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "CacheInputs":
        data = json.loads(text)
        kwargs = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in _PAIR_FIELDS:
                value = tuple((str(k), str(v)) for k, v in value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)


_PAIR_FIELDS = frozenset({"flags", "env", "args", "files", "sources"})
# fields added after v1: not encoded when empty, so that every older key stays valid
_OMITTED_WHEN_EMPTY = frozenset({"ulimits"})

_SEALED = "sealed:hmac-sha256:"


def sealed_value(salt: str, value: str) -> str:
    """`value` as `sealed:hmac-sha256:SALT:MAC` (MAC = HMAC-SHA256 keyed by SALT)."""
    mac = hmac.new(salt.encode("utf-8"), value.encode("utf-8", "surrogateescape"),
                   hashlib.sha256).hexdigest()
    return f"{_SEALED}{salt}:{mac}"


def is_sealed(value: str) -> bool:
    return value.startswith(_SEALED)


def _same(before: str, after: str) -> bool:
    """Whether a recorded value (sealed or plain) and a current one are equal."""
    if is_sealed(before) and not is_sealed(after):
        salt = before[len(_SEALED):].rpartition(":")[0]
        return hmac.compare_digest(sealed_value(salt, after), before)
    return before == after


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _diff_pairs(label: str, before: Pairs, after: Pairs) -> list[str]:
    old, new = dict(before), dict(after)
    out = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            shown = "" if any(is_sealed(v) for v in old.values()) else f": {_q(new[name])}"
            out.append(f"{label} {name} added{shown}")
        elif name not in new:
            out.append(f"{label} {name} removed" +
                       ("" if is_sealed(old[name]) else f" (was {_q(old[name])})"))
        elif not _same(old[name], new[name]):
            out.append(f"{label} {name} changed" + (
                "" if is_sealed(old[name]) else f": {_q(old[name])} -> {_q(new[name])}"))
    return out


def _diff_files(before: Pairs, after: Pairs) -> list[str]:
    old, new = dict(before), dict(after)
    out = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append(f"file {name} added")
        elif name not in new:
            out.append(f"file {name} removed")
        elif old[name] != new[name]:
            out.append(f"file {name} changed")
    return out


def _describe_parent(value: str) -> str:
    return value.split(":", 1)[1] if value.startswith("image:") else value


def explain_miss(previous: CacheInputs | None, current: CacheInputs, *, limit: int = 5) -> str:
    """Why `current` misses the cache where `previous` was built: the changed inputs,
    most specific first, e.g. `ARG GREETING changed: "hello" -> "hi"`. At most
    `limit` reasons are listed (then "and N more")."""
    if previous is None:
        return "not built before"
    if previous.key() == current.key():
        return "no input changed (the cached result is missing)"
    reasons: list[str] = []
    if not _same(previous.instruction, current.instruction):
        reasons.append("instruction text changed")
    reasons += _diff_pairs("flag", previous.flags, current.flags)
    reasons += _diff_pairs("ARG", previous.args, current.args)
    # args reach a RUN through its environment too: name each change once
    arg_names = {k for k, _ in previous.args} | {k for k, _ in current.args}
    env_before = tuple(p for p in previous.env if p[0] not in arg_names)
    env_after = tuple(p for p in current.env if p[0] not in arg_names)
    reasons += _diff_pairs("ENV", env_before, env_after)
    if previous.files or current.files:
        reasons += _diff_files(previous.files, current.files)
    if previous.content != current.content and not (
            (previous.files or current.files) and previous.files != current.files):
        reasons.append("content of the copied files changed")
    for label, name in (("USER", "user"), ("WORKDIR", "workdir"), ("network", "network"),
                        ("platform", "platform")):
        before, after = getattr(previous, name), getattr(current, name)
        if is_sealed(before):
            if not _same(before, after):
                reasons.append(f"{label} changed")
        elif before != after:
            reasons.append(f"{label} changed: {_q(before)} -> {_q(after)}")
    if previous.ulimits != current.ulimits:
        reasons.append(f"--ulimit changed: {' '.join(previous.ulimits) or 'none'} -> "
                       f"{' '.join(current.ulimits) or 'none'}")
    if previous.shell != current.shell:
        reasons.append(f"SHELL changed: {list(previous.shell)} -> {list(current.shell)}")
    if len(previous.mounts) != len(current.mounts) or not all(
            _same(a, b) for a, b in zip(previous.mounts, current.mounts)):
        reasons.append("mounts changed")
    old_src, new_src = dict(previous.sources), dict(current.sources)
    for name in sorted(set(old_src) | set(new_src)):
        if old_src.get(name) != new_src.get(name):
            reasons.append(f"source {name} changed")
    if previous.parent != current.parent:
        if previous.parent.startswith("image:") or current.parent.startswith("image:"):
            reasons.append(f"base image changed: {_describe_parent(previous.parent)} -> "
                           f"{_describe_parent(current.parent)}")
        else:
            reasons.append("previous step changed")
    if not reasons:  # only a sealed record can compare equal field by field
        return "no input changed (the cached result is missing)"
    if len(reasons) > limit:
        reasons = reasons[:limit] + [f"and {len(reasons) - limit} more"]
    return "; ".join(reasons)


__all__ = ["SCHEMA", "CacheKey", "CacheInputs", "explain_miss", "is_sealed", "pairs",
           "parent_scratch", "parent_image", "parent_step"]
