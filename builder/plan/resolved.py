"""Resolved instructions: what each Dockerfile instruction means once its words are
expanded and its flags validated, as small frozen values.

The planner (`builder.plan`) produces them, `builder.imageconfig` applies the
metadata ones to an image config, `builder.cachekey` hashes them, and the executor
runs the filesystem ones (`ResolvedRun`, `ResolvedCopy`, `ResolvedWorkdir`).
Also owns the value types they carry: `Platform`, `Mount`, `Healthcheck`,
`InlineFile`. No I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lamina.builder.errors import BuildError

# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Platform:
    """An OCI platform: `linux/amd64`, `linux/arm64/v8`."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """`os/arch[/variant]` (an `arch` alone means linux), normalised like containerd."""
        parts = [p.strip().lower() for p in text.strip().split("/")]
        if not parts or any(not p for p in parts) or len(parts) > 3:
            raise BuildError(f"invalid platform {text!r}: expected os/arch[/variant]")
        if len(parts) == 1:
            parts = ["linux", parts[0]]
        os_, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else ""
        arch, variant = normalize_arch(arch, variant)
        return cls(os_, arch, variant)

    @classmethod
    def host(cls) -> "Platform":
        """The platform of the running machine (reads uname, nothing else)."""
        import os as _os

        arch, variant = normalize_arch(_os.uname().machine.lower(), "")
        return cls("linux", arch, variant)


_ARCH_ALIASES = {
    "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "amd64": ("amd64", ""),
    "i386": ("386", ""), "i686": ("386", ""), "386": ("386", ""),
    "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"),
    "armv6l": ("arm", "v6"), "armv7l": ("arm", "v7"), "armv8l": ("arm", "v8"),
}


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's platforms.Normalize for the architecture part."""
    arch, default_variant = _ARCH_ALIASES.get(arch, (arch, ""))
    variant = variant or default_variant
    if arch == "arm64" and variant in ("8", "v8"):
        variant = ""  # arm64/v8 is plain arm64
    if arch == "arm" and variant in ("5", "6", "7", "8"):
        variant = "v" + variant
    if arch == "arm" and not variant:
        variant = "v7"
    if arch == "amd64" and variant == "v1":
        variant = ""
    return arch, variant


@dataclass(frozen=True)
class Healthcheck:
    """The image config's Healthcheck. Durations in nanoseconds; 0 means "the
    runtime's default" (docker: interval 30s, timeout 30s, start period 0s, start
    interval 5s, retries 3), exactly as BuildKit stores it."""

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def to_oci_dict(self) -> dict:
        out: dict = {}
        if self.test:
            out["Test"] = list(self.test)
        for key, value in (("Interval", self.interval), ("Timeout", self.timeout),
                           ("StartPeriod", self.start_period),
                           ("StartInterval", self.start_interval),
                           ("Retries", self.retries)):
            if value:
                out[key] = value
        return out

    @classmethod
    def from_oci_dict(cls, data: dict) -> "Healthcheck":
        return cls(
            test=tuple(data.get("Test") or ()),
            interval=int(data.get("Interval") or 0),
            timeout=int(data.get("Timeout") or 0),
            start_period=int(data.get("StartPeriod") or 0),
            start_interval=int(data.get("StartInterval") or 0),
            retries=int(data.get("Retries") or 0),
        )


@dataclass(frozen=True)
class Mount:
    """One `RUN --mount=...` after expansion and BuildKit's validation and defaults.

    `from_stage` is the index of the stage it reads (`from=<stage>`), `from_image`
    an image reference when `from=` names no stage. Secrets carry only their id,
    target and env name here: their contents are never part of a plan or a key.
    """

    type: str  # bind | cache | tmpfs | secret | ssh
    target: str = ""
    source: str = ""
    from_: str = ""
    from_stage: int | None = None
    from_image: str | None = None
    id: str = ""
    sharing: str = ""  # cache: shared | private | locked
    readonly: bool = False
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None  # tmpfs, bytes
    env: str = ""  # secret exposed as an environment variable

    def spec(self) -> str:
        """Canonical text of everything that can change the result (for cache keys)."""
        data = {
            "type": self.type, "target": self.target, "source": self.source,
            "from": self.from_, "id": self.id, "sharing": self.sharing,
            "readonly": self.readonly, "required": self.required, "mode": self.mode,
            "uid": self.uid, "gid": self.gid, "size": self.size, "env": self.env,
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class InlineFile:
    """A heredoc given to a step as a file: COPY's `<<EOF` sources, or a RUN heredoc
    with a shebang, which BuildKit mounts at /dev/pipes/<name> and executes."""

    name: str
    data: str
    mode: int = 0o644


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class ResolvedEnv:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ResolvedLabel:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ResolvedMaintainer:
    name: str


@dataclass(frozen=True)
class ResolvedExpose:
    ports: tuple[str, ...]  # normalised "80/tcp", in order, ranges unrolled


@dataclass(frozen=True)
class ResolvedVolume:
    paths: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedUser:
    user: str


@dataclass(frozen=True)
class ResolvedWorkdir:
    path: str  # absolute, cleaned, relative ones joined to the previous WORKDIR
    creates_dir: bool = True  # BuildKit makes the directory (mkdir -p) unless "/"


@dataclass(frozen=True)
class ResolvedCmd:
    argv: tuple[str, ...]  # shell form already wrapped in the SHELL
    shell_form: bool = False


@dataclass(frozen=True)
class ResolvedEntrypoint:
    argv: tuple[str, ...] | None  # None: `ENTRYPOINT []` resets it
    shell_form: bool = False


@dataclass(frozen=True)
class ResolvedShell:
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedStopsignal:
    signal: str


@dataclass(frozen=True)
class ResolvedHealthcheck:
    healthcheck: Healthcheck


@dataclass(frozen=True)
class ResolvedOnbuild:
    trigger: str  # the raw text after ONBUILD, as the image config records it


@dataclass(frozen=True)
class ResolvedArg:
    """ARG declarations with the values they got (None: declared without a value)."""

    pairs: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class ResolvedRun:
    """A RUN ready to execute: `argv` is what the sandbox execs (shell form already
    wrapped in the SHELL; heredocs folded in the way BuildKit does)."""

    argv: tuple[str, ...]
    shell_form: bool
    mounts: tuple[Mount, ...] = ()
    network: str = "default"  # default | none | host
    security: str = "sandbox"  # sandbox | insecure
    files: tuple[InlineFile, ...] = ()  # mounted read-only at /dev/pipes/


@dataclass(frozen=True)
class ResolvedCopy:
    """COPY or ADD after expansion. `dest_path` is `dest` made absolute against the
    WORKDIR (a trailing slash, meaning "into this directory", is kept)."""

    keyword: str  # COPY | ADD
    sources: tuple[str, ...]
    dest: str
    dest_path: str
    inline: tuple[InlineFile, ...] = ()
    from_: str = ""
    from_stage: int | None = None
    from_image: str | None = None
    chown: str = ""
    chmod: str = ""
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()
    checksum: str = ""
    keep_git_dir: bool = False
    unpack: bool | None = None


Resolved = (ResolvedEnv | ResolvedLabel | ResolvedMaintainer | ResolvedExpose
            | ResolvedVolume | ResolvedUser | ResolvedWorkdir | ResolvedCmd
            | ResolvedEntrypoint | ResolvedShell | ResolvedStopsignal | ResolvedHealthcheck
            | ResolvedOnbuild | ResolvedArg | ResolvedRun | ResolvedCopy)

# Instructions that change the filesystem (and so produce a layer).
FILESYSTEM_KINDS = (ResolvedRun, ResolvedCopy, ResolvedWorkdir)

__all__ = [
    "Platform", "normalize_arch", "Healthcheck", "Mount", "InlineFile",
    "ResolvedEnv", "ResolvedLabel", "ResolvedMaintainer", "ResolvedExpose", "ResolvedVolume",
    "ResolvedUser", "ResolvedWorkdir", "ResolvedCmd", "ResolvedEntrypoint", "ResolvedShell",
    "ResolvedStopsignal", "ResolvedHealthcheck", "ResolvedOnbuild", "ResolvedArg",
    "ResolvedRun", "ResolvedCopy", "Resolved", "FILESYSTEM_KINDS",
]
