"""OCI image-spec v1.1 (and docker v2 schema 2) documents: media types, the image
manifest, the image config and the image index, and their canonical JSON encoding.

Documents are plain dicts (the config is open-ended: tools add fields), built and
checked by the functions here. `encode()` writes compact JSON (no spaces) with a
fixed key order — the field order of the Go structs that docker, containerd and
the OCI reference types marshal — maps (Labels, annotations, ExposedPorts...)
sorted by key, and Go's escaping of `<`, `>`, `&`, U+2028 and U+2029. The same
document therefore always has the same bytes and the same digest, and a document
lamina writes is byte-for-byte what a Go tool would write for the same content.
Pure functions, no I/O.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from lamina.store.errors import CorruptContent

# -- media types -------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # rarely seen, accepted

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset({OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP, DOCKER_LAYER,
                         "application/vnd.oci.image.layer.nondistributable.v1.tar",
                         "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                         "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                         "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"})

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

# -- canonical JSON ----------------------------------------------------------------

# Key order of each object kind, as the Go structs declare their fields.
_DESCRIPTOR = ("mediaType", "artifactType", "digest", "size", "urls", "annotations", "data", "platform")
_PLATFORM = ("architecture", "os", "os.version", "os.features", "variant", "features")
_ORDER: dict[str, tuple[str, ...]] = {
    "manifest": ("schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations"),
    "index": ("schemaVersion", "mediaType", "artifactType", "manifests", "subject", "annotations"),
    "descriptor": _DESCRIPTOR,
    "platform": _PLATFORM,
    "config": ("created", "author", "architecture", "os", "os.version", "os.features", "variant",
               "config", "rootfs", "history"),
    "container_config": ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                         "Labels", "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell"),
    "healthcheck": ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"),
    "rootfs": ("type", "diff_ids"),
    "history": ("created", "created_by", "author", "comment", "empty_layer"),
}
# For each kind: which fields hold a nested object of which kind (None = a map, keys sorted).
_CHILDREN: dict[str, dict[str, str | None]] = {
    "manifest": {"config": "descriptor", "layers": "descriptor[]", "subject": "descriptor",
                 "annotations": None},
    "index": {"manifests": "descriptor[]", "subject": "descriptor", "annotations": None},
    "descriptor": {"annotations": None, "platform": "platform"},
    "platform": {},
    "config": {"config": "container_config", "rootfs": "rootfs", "history": "history[]"},
    "container_config": {"ExposedPorts": None, "Volumes": None, "Labels": None,
                         "Healthcheck": "healthcheck"},
    "healthcheck": {},
    "rootfs": {},
    "history": {},
}


def _order(obj: Any, kind: str | None) -> Any:
    """Rebuild `obj` with keys in canonical order (recursively)."""
    if kind is not None and kind.endswith("[]"):
        return [_order(x, kind[:-2]) for x in obj] if isinstance(obj, list) else obj
    if isinstance(obj, Mapping):
        if kind is None:  # a map, or an object of unknown kind: sorted keys, like Go maps
            return {k: _order(obj[k], None) for k in sorted(obj)}
        known = _ORDER[kind]
        children = _CHILDREN[kind]
        out: dict[str, Any] = {}
        for k in known:
            if k in obj:
                out[k] = _order(obj[k], children.get(k))
        for k in sorted(k for k in obj if k not in known):  # extensions go last, sorted
            out[k] = _order(obj[k], None)
        return out
    if isinstance(obj, (list, tuple)):
        return [_order(x, None) for x in obj]
    return obj


_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def encode(obj: Mapping[str, Any], kind: str) -> bytes:
    """Canonical bytes of a document of `kind` (manifest, index, config, descriptor)."""
    text = json.dumps(_order(obj, kind), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # Escaping these inside JSON strings is safe anywhere: they only occur inside strings.
    return _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group(0)], text).encode("utf-8")


def decode(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON document; CorruptContent naming `what` if it is not a JSON object."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptContent(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CorruptContent(f"{what} is not a JSON object")
    return obj


# -- descriptors -------------------------------------------------------------------

@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest or index says about a blob."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = dict(self.platform)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], what: str = "descriptor") -> "Descriptor":
        check_descriptor(d, what)
        return cls(d["mediaType"], d["digest"], d["size"], dict(d.get("annotations") or {}),
                   d.get("platform"))


MAX_BLOB_SIZE = 2**53  # 8 PiB (JSON's exact integers, as the OCI spec advises)


def check_descriptor(d: Any, what: str) -> None:
    if not isinstance(d, Mapping):
        raise CorruptContent(f"{what}: not an object")
    if not isinstance(d.get("mediaType"), str):
        raise CorruptContent(f"{what}: missing mediaType")
    if not isinstance(d.get("digest"), str) or not _DIGEST_RE.fullmatch(d["digest"]):
        raise CorruptContent(f"{what}: bad or unsupported digest {d.get('digest')!r}")
    if not isinstance(d.get("size"), int) or isinstance(d.get("size"), bool) or d["size"] < 0:
        raise CorruptContent(f"{what}: bad size {d.get('size')!r}")
    if d["size"] > MAX_BLOB_SIZE:  # no real blob; and sums of such sizes overflow SQLite
        raise CorruptContent(f"{what}: size {d['size']} is larger than any blob can be")


# -- manifest ----------------------------------------------------------------------

def build_manifest(config: Descriptor, layers: Sequence[Descriptor], *,
                   media_type: str = OCI_MANIFEST,
                   annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.to_json(),
        "layers": [l.to_json() for l in layers],
    }
    if annotations:
        m["annotations"] = dict(annotations)
    return m


def check_manifest(m: Mapping[str, Any], what: str = "manifest") -> None:
    """Raise CorruptContent unless `m` is an image manifest we can use."""
    if m.get("schemaVersion") != 2:
        raise CorruptContent(f"{what}: schemaVersion is {m.get('schemaVersion')!r}, expected 2")
    mt = m.get("mediaType", OCI_MANIFEST)
    if mt in INDEX_TYPES:
        raise CorruptContent(f"{what}: is an image index, not an image manifest")
    if mt not in MANIFEST_TYPES:
        raise CorruptContent(f"{what}: unsupported media type {mt!r}")
    check_descriptor(m.get("config"), f"{what}: config")
    layers = m.get("layers")
    if not isinstance(layers, list):
        raise CorruptContent(f"{what}: layers is not a list")
    for i, l in enumerate(layers):
        check_descriptor(l, f"{what}: layer {i}")
        if l["mediaType"] not in LAYER_TYPES:
            raise CorruptContent(f"{what}: layer {i} has unsupported media type {l['mediaType']!r}")


def manifest_media_type(m: Mapping[str, Any]) -> str:
    return m.get("mediaType") or OCI_MANIFEST


# -- index -------------------------------------------------------------------------

def build_index(manifests: Iterable[Descriptor], *,
                annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    idx: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": [d.to_json() for d in manifests]}
    if annotations:
        idx["annotations"] = dict(annotations)
    return idx


def check_index(idx: Mapping[str, Any], what: str = "index") -> None:
    if idx.get("schemaVersion") != 2:
        raise CorruptContent(f"{what}: schemaVersion is {idx.get('schemaVersion')!r}, expected 2")
    ms = idx.get("manifests")
    if not isinstance(ms, list):
        raise CorruptContent(f"{what}: manifests is not a list")
    for i, d in enumerate(ms):
        check_descriptor(d, f"{what}: manifest {i}")


# -- config ------------------------------------------------------------------------

CONTAINER_CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                         "Labels", "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell")

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64le", "loongarch64": "loong64"}
_VARIANT = {"aarch64": "v8", "arm64": "v8", "armv7l": "v7", "armv6l": "v6"}


def host_platform() -> dict[str, str]:
    """OCI platform of this host: {"architecture": "amd64", "os": "linux"[, "variant": ...]}."""
    m = platform.machine()
    p = {"architecture": _ARCH.get(m, m.lower()), "os": "linux"}
    if m in _VARIANT:
        p["variant"] = _VARIANT[m]
    return p


def format_time(t: datetime | float | int) -> str:
    """RFC 3339 in UTC as Go prints time.Time: fraction with trailing zeros trimmed."""
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, tz=timezone.utc)
    t = t.astimezone(timezone.utc)
    s = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        s += ("." + f"{t.microsecond:06d}").rstrip("0")
    return s + "Z"


_TIME_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)")


def parse_time(s: str) -> datetime | None:
    """Parse an RFC 3339 time (any fraction length); None if unparseable."""
    m = _TIME_RE.fullmatch(s.strip()) if isinstance(s, str) else None
    if not m:
        return None
    y, mo, d, h, mi, sec, frac, tz = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    tzinfo = timezone.utc
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        from datetime import timedelta
        tzinfo = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    try:
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), micro, tzinfo=tzinfo)
    except ValueError:
        return None


def build_config(*, diff_ids: Sequence[str], history: Sequence[Mapping[str, Any]],
                 container_config: Mapping[str, Any] | None = None, created: str | None = None,
                 platform_: Mapping[str, str] | None = None, author: str | None = None) -> dict[str, Any]:
    """An OCI image config. `created` defaults to the last history entry's time."""
    p = dict(platform_ or host_platform())
    cfg: dict[str, Any] = {}
    if created is None and history:
        created = history[-1].get("created")
    if created is not None:
        cfg["created"] = created
    if author:
        cfg["author"] = author
    cfg["architecture"] = p["architecture"]
    cfg["os"] = p.get("os", "linux")
    if p.get("variant"):
        cfg["variant"] = p["variant"]
    cfg["config"] = clean_container_config(container_config or {})
    cfg["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    cfg["history"] = [dict(h) for h in history]
    return cfg


def clean_container_config(cc: Mapping[str, Any]) -> dict[str, Any]:
    """Drop empty fields the way Go's `omitempty` does, so equal configs encode equally."""
    out: dict[str, Any] = {}
    for k, v in cc.items():
        if v is None or v == {} or v == [] or v == "" or v is False:
            continue
        out[k] = v
    return out


def check_config(cfg: Mapping[str, Any], what: str = "image config") -> None:
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, Mapping) or rootfs.get("type") != "layers":
        raise CorruptContent(f"{what}: rootfs.type is not 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and _DIGEST_RE.fullmatch(d)
                                                 for d in diff_ids):
        raise CorruptContent(f"{what}: rootfs.diff_ids is not a list of sha256 digests")
    if not isinstance(cfg.get("architecture"), str) or not isinstance(cfg.get("os"), str):
        raise CorruptContent(f"{what}: architecture and os are required")
    if "config" in cfg and not isinstance(cfg["config"], (Mapping, type(None))):
        raise CorruptContent(f"{what}: config is not an object")
    check_runtime_config(cfg.get("config") or {}, what)
    if "history" in cfg and not isinstance(cfg["history"], (list, type(None))):
        raise CorruptContent(f"{what}: history is not a list")


# the fields of the image-spec's ImageConfig that a container runs with, by their Go
# types (null is Go's nil: allowed); docker, containerd and podman decode a config into
# these types, so an image whose fields have others fails to load or pull there
CONFIG_STRINGS = ("User", "WorkingDir", "StopSignal")
CONFIG_LISTS = ("Env", "Entrypoint", "Cmd", "Shell", "OnBuild")


def check_runtime_config(cc: Mapping[str, Any], what: str = "image config") -> None:
    """`cc` (a config's "config" object) has the spec's types in its runtime fields, else
    CorruptContent naming the field: a hostile image must not reach `run` or a build
    with, say, an int in its Cmd."""
    for key in CONFIG_STRINGS:
        if cc.get(key) is not None and not isinstance(cc[key], str):
            raise CorruptContent(f"{what}: config.{key} is not a string")
    for key in CONFIG_LISTS:
        value = cc.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            raise CorruptContent(f"{what}: config.{key} is not an array of strings")
    if cc.get("ArgsEscaped") is not None and not isinstance(cc["ArgsEscaped"], bool):
        raise CorruptContent(f"{what}: config.ArgsEscaped is not a boolean")


def diff_ids(cfg: Mapping[str, Any]) -> list[str]:
    return list(cfg["rootfs"]["diff_ids"])


def is_compatible_layer_type(manifest_type: str, layer_type: str) -> bool:
    """Docker v2 manifests list docker layer types; OCI manifests OCI ones."""
    if manifest_type == DOCKER_MANIFEST:
        return layer_type.startswith("application/vnd.docker.")
    return layer_type.startswith("application/vnd.oci.")
