"""The bake definition: groups and targets as buildx resolves them.

A raw target is a dict with buildx's JSON names (`context`, `dockerfile`,
`dockerfile-inline`, `args`, `labels`, `tags`, `cache-from`, `cache-to`, `target`,
`secret`, `ssh`, `platforms`, `output`, `pull`, `no-cache`, `network`, `ulimits`,
`inherits`),
as the compose and bake-file readers produce it. This module:

- merges raw targets (several files, `inherits`) with buildx's rules: scalars and
  lists like `tags`/`platforms`/`cache-to`/`output` are replaced, `args`/`labels`
  merged by key, `cache-from`/`secret`/`ssh`/`ulimits` appended without duplicates;
- applies `--set PATTERN.KEY[+]=VALUE` overrides;
- resolves the names asked for (targets, groups, glob patterns, `default`) into
  the targets to build and the groups `--print` shows (buildx's shape:
  `{"group": {...}, "target": {...}}`);
- freezes each resolved target into a `Target`, paths made absolute.
"""

from __future__ import annotations

import copy
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.builder.errors import BuildError

# the order buildx prints a target's fields in (its struct order)
FIELD_ORDER = ("description", "context", "contexts", "dockerfile", "dockerfile-inline", "args",
               "labels", "tags", "cache-from", "cache-to", "target", "secret", "ssh",
               "platforms", "output", "pull", "no-cache", "network", "ulimits")
KNOWN_FIELDS = frozenset(FIELD_ORDER) | {"inherits", "name", "matrix", "attest", "annotations",
                                         "entitlements", "no-cache-filter", "shm-size",
                                         "call", "extra-hosts"}
REPLACED = ("context", "dockerfile", "dockerfile-inline", "tags", "target", "platforms",
            "cache-to", "output", "pull", "no-cache", "network", "description", "contexts")
MAPPED = ("args", "labels")
APPENDED = ("cache-from", "secret", "ssh", "ulimits")


# -- entries of cache-from/cache-to, secret, ssh, output ---------------------------------

def csv_fields(text: str, what: str) -> dict[str, str]:
    """`type=local,src=dir` -> {"type": "local", "src": "dir"}."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise BuildError(f"invalid {what} {text!r}: {part!r} is not key=value")
        out[key.strip().lower()] = value.strip()
    return out


def cache_entry(value: Any) -> dict[str, str]:
    """A cache-from/cache-to entry as buildx prints it: a bare reference is
    {"ref": REF, "type": "registry"}; keys sorted."""
    if isinstance(value, dict):
        entry = {str(k): str(v) for k, v in value.items()}
    elif "=" not in str(value):
        entry = {"ref": str(value), "type": "registry"}
    else:
        entry = csv_fields(str(value), "cache entry")
        entry.setdefault("type", "registry" if "ref" in entry else "")
    return dict(sorted(entry.items()))


def secret_entry(value: Any) -> dict[str, str]:
    """`id=ID,src=PATH` / `id=ID,env=VAR` (buildx's Secret: id, src, env)."""
    fields = ({str(k): str(v) for k, v in value.items()} if isinstance(value, dict)
              else csv_fields(str(value), "secret"))
    kind = fields.pop("type", "file")
    if "source" in fields:
        fields["src"] = fields.pop("source")
    if kind == "env" and "env" not in fields:
        fields["env"] = fields.pop("src", "")
    unknown = set(fields) - {"id", "src", "env"}
    if unknown or kind not in ("file", "env"):
        raise BuildError(f"invalid secret {value!r}: expected id=ID,src=PATH or id=ID,env=VAR")
    return {k: fields[k] for k in ("id", "src", "env") if fields.get(k)}


def ssh_entry(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    ident, _, paths = str(value).partition("=")
    entry: dict[str, Any] = {"id": ident}
    if paths:
        entry["paths"] = paths.split(",")
    return entry


def output_entry(value: Any) -> dict[str, str]:
    """An output as buildx prints it: a bare path is a local export; keys sorted."""
    if isinstance(value, dict):
        entry = {str(k): str(v) for k, v in value.items()}
    elif str(value) == "-":
        entry = {"type": "tar", "dest": "-"}
    elif "=" not in str(value):
        entry = {"type": "local", "dest": str(value)}
    else:
        entry = csv_fields(str(value), "output")
    return dict(sorted(entry.items()))


def _append_unique(old: list, new: list) -> list:
    out = list(old)
    for item in new:
        if item not in out:
            out.append(item)
    return out


def normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """Entries in their structured form, duplicates removed (buildx normalize)."""
    t = dict(raw)
    for key, conv in (("cache-from", cache_entry), ("cache-to", cache_entry),
                      ("secret", secret_entry), ("ssh", ssh_entry), ("output", output_entry)):
        if t.get(key) is not None:
            values = t[key] if isinstance(t[key], list) else [t[key]]
            t[key] = _append_unique([], [conv(v) for v in values])
    for key in ("tags", "platforms", "ulimits"):
        if t.get(key) is not None:
            values = t[key] if isinstance(t[key], list) else [t[key]]
            t[key] = list(dict.fromkeys(str(v) for v in values if v is not None and v != ""))
    for key in MAPPED:
        if t.get(key) is not None:
            if not isinstance(t[key], dict):
                raise BuildError(f"{key} must be a map of names to values, not {t[key]!r}")
            t[key] = {str(k): (None if v is None else _scalar_text(v)) for k, v in t[key].items()}
    return t


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """buildx's Target.Merge: `over` on top of `base` (neither changed)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None or key == "inherits":
            continue
        if key in MAPPED:
            merged = dict(out.get(key) or {})
            merged.update({k: v for k, v in value.items() if v is not None})
            out[key] = merged
        elif key in APPENDED:
            out[key] = _append_unique(out.get(key) or [], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- the definition ------------------------------------------------------------------------

@dataclass
class Definition:
    """Groups and raw targets of every file read, in file order, and for each
    target the directory its relative context resolves from."""

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_dirs: dict[str, Path] = field(default_factory=dict)

    def add_target(self, name: str, raw: dict[str, Any], base_dir: Path) -> None:
        raw = normalize(raw)
        if name in self.targets:
            inherits = _append_unique(self.targets[name].get("inherits") or [],
                                      raw.get("inherits") or [])
            self.targets[name] = merge(self.targets[name], raw)
            if inherits:
                self.targets[name]["inherits"] = inherits
        else:
            self.targets[name] = raw
            self.base_dirs[name] = base_dir

    def add_group(self, name: str, targets: list[str], description: str | None = None) -> None:
        group = self.groups.setdefault(name, {"targets": []})
        group["targets"] = _append_unique(group["targets"], [str(t) for t in targets])
        if description:
            group["description"] = description


@dataclass(frozen=True)
class Override:
    """One `--set` for one target: KEY (e.g. `args.VERSION`), values, `+=`."""

    key: str
    values: tuple[str, ...]
    append: bool


LIST_KEYS = {"tags", "platform", "cache-from", "cache-to", "secrets", "ssh", "output"}


def parse_overrides(sets: list[str], definition: Definition) -> dict[str, list[Override]]:
    """`--set PATTERN.KEY=VALUE`, `--set PATTERN.args.NAME` (from the environment),
    `KEY+=VALUE` appends; PATTERN is a target name or a glob (`*`)."""
    collected: dict[tuple[str, str], tuple[list[str], bool]] = {}
    order: list[tuple[str, str]] = []
    for item in sets:
        lhs, sep, value = item.partition("=")
        append = lhs.endswith("+")
        lhs = lhs.removesuffix("+")
        keys = lhs.split(".", 2)
        if len(keys) < 2:
            raise BuildError(f"invalid --set {item!r}: expected TARGET.KEY=VALUE")
        pattern, key = keys[0], ".".join(keys[1:])
        head = keys[1]
        if head in ("args", "labels", "contexts") and len(keys) != 3:
            raise BuildError(f"invalid --set {item!r}: {head} needs a name ({head}.NAME=VALUE)")
        if not sep:
            if head != "args":
                raise BuildError(f"invalid --set {item!r}: expected TARGET.KEY=VALUE")
            if keys[2] not in os.environ:
                continue
            value = os.environ[keys[2]]
        known = {"context", "dockerfile", "args", "labels", "tags", "target", "cache-from",
                 "cache-to", "secrets", "ssh", "platform", "output", "no-cache", "pull",
                 "network", "push", "load", "contexts"}
        if head not in known:
            raise BuildError(f"invalid --set {item!r}: unknown key {head!r}")
        for name in _expand_pattern(pattern, definition):
            slot = (name, key)
            if slot not in collected:
                collected[slot] = ([], append)
                order.append(slot)
            values, was_append = collected[slot]
            values.append(value)
            collected[slot] = (values, was_append or append)
    out: dict[str, list[Override]] = {}
    for name, key in order:
        values, append = collected[(name, key)]
        out.setdefault(name, []).append(Override(key, tuple(values), append))
    return out


def _expand_pattern(pattern: str, definition: Definition) -> list[str]:
    if pattern in definition.targets:
        return [pattern]
    names = [n for n in definition.targets if fnmatch.fnmatchcase(n, pattern)]
    if not names:
        raise BuildError(f"--set: could not find any target matching {pattern!r}")
    return names


def _bool(value: str, key: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "t", "true"):
        return True
    if low in ("0", "f", "false"):
        return False
    raise BuildError(f"invalid value {value!r} for boolean key {key}")


def apply_overrides(raw: dict[str, Any], overrides: list[Override]) -> dict[str, Any]:
    t = copy.deepcopy(raw)
    for o in overrides:
        head, _, rest = o.key.partition(".")
        value = o.values[-1]
        if head in ("context", "dockerfile", "target", "network"):
            t[head] = value
        elif head in ("args", "labels", "contexts"):
            t.setdefault(head, {})
            t[head] = dict(t[head] or {})
            t[head][rest] = value
        elif head in ("tags", "platform"):
            key = "tags" if head == "tags" else "platforms"
            t[key] = list(dict.fromkeys((t.get(key) or []) + list(o.values) if o.append
                                        else list(o.values)))
        elif head in ("cache-from", "cache-to", "output", "secrets", "ssh"):
            key = "secret" if head == "secrets" else head
            conv = {"cache-from": cache_entry, "cache-to": cache_entry, "output": output_entry,
                    "secret": secret_entry, "ssh": ssh_entry}[key]
            entries = [conv(v) for v in o.values]
            t[key] = _append_unique(t.get(key) or [], entries) if o.append else entries
        elif head in ("no-cache", "pull"):
            t[head] = _bool(value, head)
        elif head == "push":
            outputs = [e for e in t.get("output") or [] if e.get("type") != "registry"]
            if _bool(value, head):
                outputs.append({"type": "registry"})
            t["output"] = outputs
        elif head == "load":
            outputs = [e for e in t.get("output") or [] if e.get("type") != "docker"]
            if _bool(value, head):
                outputs.append({"type": "docker"})
            t["output"] = outputs
    return t


# -- resolution ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    """What `--print` shows and what is built: groups met while resolving the names
    asked for, and every target they reach (fully merged, inherits applied)."""

    groups: dict[str, dict[str, Any]]
    targets: dict[str, dict[str, Any]]
    base_dirs: dict[str, Path]

    def to_json(self) -> dict[str, Any]:
        """buildx's `--print` shape."""
        groups = {}
        for name in sorted(self.groups):
            g = self.groups[name]
            entry = {}
            if g.get("description"):
                entry["description"] = g["description"]
            entry["targets"] = list(g["targets"])
            groups[name] = entry
        targets = {name: _print_target(self.targets[name]) for name in sorted(self.targets)}
        return {"group": groups, "target": targets}


def _print_target(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in FIELD_ORDER:
        value = raw.get(key)
        if value is None or value == [] or value == {} or value == "":
            continue
        if key in MAPPED:
            value = {k: v for k, v in sorted(value.items()) if v is not None}
            if not value:
                continue
        if key in ("pull", "no-cache") and value is False:
            continue
        out[key] = value
    return out


def resolve(definition: Definition, names: list[str],
            overrides: dict[str, list[Override]] | None = None) -> Resolved:
    """buildx's ReadTargets: expand patterns and groups, merge inherits, apply
    overrides, add defaults (context ".", dockerfile "Dockerfile")."""
    overrides = overrides or {}
    names = list(names) or ["default"]
    expanded: list[str] = []
    for name in names:
        if any(c in name for c in "*?[]"):
            found = [n for n in list(definition.groups) + list(definition.targets)
                     if fnmatch.fnmatchcase(n, name)]
            if not found:
                raise BuildError(f"could not find any target matching {name!r}")
            expanded.extend(found)
        else:
            expanded.append(name)
    expanded = list(dict.fromkeys(expanded))
    targets: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {}
    for name in expanded:
        tnames, gnames = _group(definition, name, set())
        for tname in dict.fromkeys(tnames):
            targets[tname] = _target(definition, tname, overrides, ())
        for gname in gnames:
            groups[gname] = copy.deepcopy(definition.groups[gname])
    for name in expanded:
        if name == "default" and "default" in groups:
            continue
        groups.setdefault("default", {"targets": []})
        groups["default"]["targets"].append(name)
    if "default" in groups:
        groups["default"]["targets"] = sorted(dict.fromkeys(groups["default"]["targets"]))
    return Resolved(groups=groups, targets=targets,
                    base_dirs={n: definition.base_dirs.get(n, Path.cwd()) for n in targets})


def _group(definition: Definition, name: str, seen: set[str]) -> tuple[list[str], list[str]]:
    if name not in definition.groups:
        return [name], []
    if name in seen:
        return [], []
    seen.add(name)
    targets: list[str] = []
    groups = [name]
    for member in definition.groups[name]["targets"]:
        t, g = _group(definition, member, seen)
        targets.extend(t)
        groups.extend(g)
    return targets, groups


def _target(definition: Definition, name: str, overrides: dict[str, list[Override]],
            chain: tuple[str, ...]) -> dict[str, Any]:
    if name in chain:
        raise BuildError(f"target {name!r} inherits from itself ({' -> '.join(chain + (name,))})")
    raw = definition.targets.get(name)
    if raw is None:
        if name == "default":
            raise BuildError("no target or group named \"default\" in the bake files: name the "
                             "targets to build")
        known = ", ".join(sorted(set(definition.targets) | set(definition.groups))) or "none"
        raise BuildError(f"failed to find target {name!r} (targets and groups: {known})")
    merged: dict[str, Any] = {}
    for parent in raw.get("inherits") or []:
        merged = merge(merged, _target(definition, parent, overrides, chain + (name,)))
    merged = merge(merged, raw)
    merged = apply_overrides(merged, overrides.get(name, []))
    merged.pop("inherits", None)
    if not chain:
        merged.setdefault("context", ".")
        if not merged.get("dockerfile"):
            merged["dockerfile"] = "Dockerfile"
    return normalize(merged)


# -- the frozen target a build is made from ----------------------------------------------

@dataclass(frozen=True)
class Target:
    """One image to build, every path absolute."""

    name: str
    context: Path
    dockerfile: Path
    dockerfile_inline: str | None = None
    args: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    target: str | None = None
    cache_from: tuple[tuple[tuple[str, str], ...], ...] = ()
    cache_to: tuple[tuple[tuple[str, str], ...], ...] = ()
    secrets: tuple[tuple[str, str, str], ...] = ()   # (id, src, env)
    ssh: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    outputs: tuple[tuple[tuple[str, str], ...], ...] = ()
    pull: bool = False
    no_cache: bool = False
    network: str | None = None
    ulimits: tuple[str, ...] = ()   # `lamina build --ulimit`, each TYPE=SOFT[:HARD]

    @property
    def push(self) -> bool:
        return any(dict(o).get("type") == "registry" or dict(o).get("push") == "true"
                   for o in self.outputs)

    def ambiguous_flag_values(self) -> list[str]:
        """Entries that cannot go into a `k=v,k=v` flag of `lamina build` unchanged: a
        ',' in a value (or '=' in a key) would add keys of its own when the flag is
        split - "./out,dest=/" would pass a path check as ./out and then mean /."""
        entries = [("cache-from", e) for e in self.cache_from]
        entries += [("cache-to", e) for e in self.cache_to]
        entries += [("output", e) for e in self.outputs]
        entries += [("secret", (("id", i), ("src", src))) for i, src, _ in self.secrets]
        return [f"target {self.name!r}: {what} entry {k}={v!r} holds a ','"
                + (" (or its key a '=')" if "=" in str(k) else "")
                for what, pairs in entries for k, v in pairs
                if "," in str(k) or "=" in str(k) or "," in str(v)]


def freeze(name: str, raw: dict[str, Any], base_dir: Path) -> Target:
    context = Path(os.path.expanduser(str(raw.get("context") or ".")))
    if not context.is_absolute():
        context = base_dir / context
    dockerfile = Path(str(raw.get("dockerfile") or "Dockerfile"))
    if not dockerfile.is_absolute():
        dockerfile = context / dockerfile
    return Target(
        name=name,
        context=Path(os.path.normpath(context)),
        dockerfile=Path(os.path.normpath(dockerfile)),
        dockerfile_inline=raw.get("dockerfile-inline") or None,
        args=tuple(sorted((k, v) for k, v in (raw.get("args") or {}).items() if v is not None)),
        labels=tuple(sorted((k, v) for k, v in (raw.get("labels") or {}).items()
                            if v is not None)),
        tags=tuple(raw.get("tags") or ()),
        target=raw.get("target") or None,
        cache_from=tuple(tuple(sorted(e.items())) for e in raw.get("cache-from") or ()),
        cache_to=tuple(tuple(sorted(e.items())) for e in raw.get("cache-to") or ()),
        secrets=tuple((e.get("id", ""), e.get("src", ""), e.get("env", ""))
                      for e in raw.get("secret") or ()),
        ssh=tuple(e.get("id", "default") for e in raw.get("ssh") or ()),
        platforms=tuple(raw.get("platforms") or ()),
        outputs=tuple(tuple(sorted(e.items())) for e in raw.get("output") or ()),
        pull=bool(raw.get("pull")),
        no_cache=bool(raw.get("no-cache")),
        network=raw.get("network") or None,
        ulimits=tuple(raw.get("ulimits") or ()),
    )
