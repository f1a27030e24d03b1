"""What a bake file may make lamina do on the host, and the `lamina bake --allow`
entitlements that widen it (buildx's bake entitlements).

A Compose or bake file comes with the repository it builds: it is hostile input like
the Dockerfile. Without entitlements a target may only read (context, Dockerfile,
secret files, `cache-from type=local` sources) and write (`output` dests of type
local/tar/oci/docker, `cache-to type=local` dests) under the current working directory
or the directory of a definition file given on the command line, and may not ask for
the host's network. Otherwise `context: /root` would build the host's files into an
image (and push it), and `output: type=local,dest=/` would unpack an image over the
host's root, as root.

    --allow fs.read=PATH | fs.write=PATH | fs=PATH   (PATH may be `*`: anywhere)
    --allow network.host                            (also lets RUN --network=host)

Paths are compared after resolving symlinks (a target's final symlink too, except the
Dockerfile's, which the build resolves inside its own directory), so a link in the
repository to `/etc` needs `fs.read=/etc`.

Public API: `Entitlements`, `parse_allow(values, cwd)`, `check_entitlements(targets,
entitlements, roots)` (one BuildError naming every missing grant).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from lamina.builder.bake.targets import Target
from lamina.builder.errors import BuildError

__all__ = ["Entitlements", "check_entitlements", "parse_allow"]

_WRITING_OUTPUTS = ("local", "tar", "oci", "docker")


@dataclass(frozen=True)
class Entitlements:
    network_host: bool = False
    read: tuple[str, ...] = ()    # real paths, or "*"
    write: tuple[str, ...] = ()


def _real(path: str | os.PathLike, cwd: Path, *, follow_final: bool = True) -> str:
    p = os.path.join(cwd, os.path.expanduser(os.fspath(path)))
    if follow_final:
        return os.path.realpath(p)
    head, tail = os.path.split(os.path.normpath(p))
    return os.path.join(os.path.realpath(head), tail)


def parse_allow(values: Iterable[str], cwd: Path) -> Entitlements:
    """`--allow` values -> Entitlements; BuildError for an unknown one."""
    network_host = False
    read: list[str] = []
    write: list[str] = []
    for value in values:
        key, eq, path = value.partition("=")
        if key == "network.host" and not eq:
            network_host = True
        elif key in ("fs", "fs.read", "fs.write") and eq and path:
            where = "*" if path == "*" else _real(path, cwd)
            if key in ("fs", "fs.read"):
                read.append(where)
            if key in ("fs", "fs.write"):
                write.append(where)
        else:
            raise BuildError(f"invalid --allow {value!r}: expected network.host, fs=PATH, "
                             "fs.read=PATH or fs.write=PATH (PATH may be *)")
    return Entitlements(network_host, tuple(read), tuple(write))


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(r == "*" or path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _needs(t: Target, cwd: Path) -> list[tuple[str, str, str]]:
    """(kind, real path, what) for every host path the target reads or writes."""
    out = [("read", _real(t.context, cwd), "context")]
    if t.dockerfile_inline is None:
        out.append(("read", _real(t.dockerfile, cwd, follow_final=False), "dockerfile"))
    for ident, src, env in t.secrets:
        if src and not env:
            out.append(("read", _real(src, cwd), f"secret {ident}"))
    for entry in t.cache_from:
        fields = dict(entry)
        if fields.get("type") == "local" and fields.get("src"):
            out.append(("read", _real(fields["src"], cwd), "cache-from"))
    for entry in t.cache_to:
        fields = dict(entry)
        if fields.get("type") == "local" and fields.get("dest"):
            out.append(("write", _real(fields["dest"], cwd), "cache-to"))
    for entry in t.outputs:
        fields = dict(entry)
        if fields.get("type") in _WRITING_OUTPUTS and fields.get("dest"):
            out.append(("write", _real(fields["dest"], cwd), f"output type={fields['type']}"))
    return out


def check_entitlements(targets: Sequence[Target], granted: Entitlements,
                       roots: Iterable[str | os.PathLike], cwd: Path) -> None:
    """Refuse (one BuildError listing them all) every host path a target reads or
    writes outside `roots` (the working directory, the definition files' directories)
    and not granted, and a host network nobody allowed."""
    base = [os.path.realpath(r) for r in roots]
    missing: list[str] = []
    grants: list[str] = []
    ambiguous = [problem for t in targets for problem in t.ambiguous_flag_values()]
    if ambiguous:
        raise BuildError("the bake definition has values lamina cannot pass on "
                         "unambiguously:\n  " + "\n  ".join(ambiguous))
    for t in targets:
        if t.network == "host" and not granted.network_host:
            missing.append(f"target {t.name!r}: network host needs network.host")
            grants.append("network.host")
        for kind, path, what in _needs(t, cwd):
            allowed = granted.read if kind == "read" else granted.write
            if _under(path, base) or _under(path, allowed):
                continue
            grant = f"fs.{kind}={path}"
            missing.append(f"target {t.name!r}: {what} {path} is outside the working "
                           f"directory and needs {grant}")
            grants.append(grant)
    if missing:
        flags = " ".join(f"--allow {g}" for g in dict.fromkeys(grants))
        raise BuildError("the bake definition asks for more than the command allows:\n  "
                         + "\n  ".join(missing)
                         + f"\ngrant it, if you trust the definition, with: lamina bake {flags}")
