"""RUN --mount values: `type=cache,target=/root/.cache,sharing=locked,...`.

Owns the syntax and rules of one --mount value as BuildKit reads it: a CSV
record (Go's encoding/csv, strict quotes) of `key=value` fields and bare
`ro`/`rw`/`required`, the mount types (bind, cache, tmpfs, secret, ssh) and
which keys each accepts. The parser only checks the CSV syntax and `from`
(which must not hold a variable); the build engine calls `parse_mount` on the
value after variable expansion.
"""

from __future__ import annotations

from dataclasses import dataclass
import re

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
_RAM_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2,
              "g": 1024**3, "gb": 1024**3, "t": 1024**4, "tb": 1024**4, "p": 1024**5, "pb": 1024**5}


class MountError(ValueError):
    """An invalid --mount value."""


@dataclass(frozen=True)
class Mount:
    """One RUN --mount, with BuildKit's defaults applied."""

    type: str = "bind"
    from_: str = ""
    source: str = ""
    target: str = ""
    readonly: bool = False
    id: str = ""
    sharing: str = ""
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    env: str = ""  # secret: expose it as this environment variable


def split_fields(value: str) -> list[str]:
    """One record of Go's encoding/csv (comma-separated, strict double quotes)."""
    if value == "":
        raise MountError("failed to parse csv mounts: EOF")
    fields: list[str] = []
    i, n = 0, len(value)
    while True:
        if i < n and value[i] == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise MountError('failed to parse csv mounts: extraneous or missing " in quoted-field')
                if value[i] == '"':
                    if i + 1 < n and value[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    if i < n and value[i] != ",":
                        raise MountError('failed to parse csv mounts: extraneous or missing " in quoted-field')
                    break
                buf.append(value[i])
                i += 1
            fields.append("".join(buf))
        else:
            end = value.find(",", i)
            end = n if end < 0 else end
            field = value[i:end]
            if '"' in field:
                raise MountError('failed to parse csv mounts: bare " in non-quoted-field')
            fields.append(field)
            i = end
        if i >= n:
            return fields
        i += 1  # the comma
        if i == n:
            fields.append("")
            return fields


def _parse_bool(key: str, value: str) -> bool:
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise MountError(f"invalid value for {key}: {value}")


def _parse_uint(key: str, value: str, base: int) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    if value == "" or any(c not in digits for c in value) or int(value, base) >= 2**32:
        raise MountError(f"invalid value {value} for {key}")
    return int(value, base)


def _ram_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?[bB]?)", value.strip())
    if not match:
        raise MountError(f"invalid value for size: {value}")
    return int(float(match.group(1)) * _RAM_UNITS[match.group(2).lower()])


def parse_mount(value: str) -> Mount:
    """A fully validated Mount from an (expanded) --mount value."""
    m: dict = {"type": "bind"}
    ro_auto = True
    for field in split_fields(value):
        key, eq, val = field.partition("=")
        key = key.lower()
        if not eq:
            if key in ("readonly", "ro"):
                m["readonly"], ro_auto = True, False
            elif key in ("readwrite", "rw"):
                m["readonly"], ro_auto = False, False
            elif key == "required" and m["type"] in ("secret", "ssh"):
                m["required"] = True
            elif key == "required":
                raise MountError(f"unexpected key '{key}' for mount type '{m['type']}'")
            else:
                raise MountError(f"invalid field '{field}' must be a key=value pair")
            continue
        if key == "type":
            if val.lower() not in MOUNT_TYPES:
                raise MountError(f'unsupported mount type "{val}"')
            m["type"] = val.lower()
        elif key == "from":
            m["from_"] = val
        elif key in ("source", "src"):
            m["source"] = val
        elif key in ("target", "dst", "destination"):
            m["target"] = val
        elif key in ("readonly", "ro"):
            m["readonly"], ro_auto = _parse_bool(key, val), False
        elif key in ("readwrite", "rw"):
            m["readonly"], ro_auto = not _parse_bool(key, val), False
        elif key == "required":
            if m["type"] not in ("secret", "ssh"):
                raise MountError(f"unexpected key '{key}' for mount type '{m['type']}'")
            m["required"] = _parse_bool(key, val)
        elif key == "size":
            if m["type"] != "tmpfs":
                raise MountError(f"unexpected key '{key}' for mount type '{m['type']}'")
            m["size"] = _ram_bytes(val)
        elif key == "id":
            m["id"] = val
        elif key == "sharing":
            if val.lower() not in SHARING_MODES:
                raise MountError(f'unsupported sharing value "{val}"')
            m["sharing"] = val.lower()
        elif key == "mode":
            m["mode"] = _parse_uint("mode", val, 8)
        elif key in ("uid", "gid"):
            m[key] = _parse_uint(key, val, 10)
        elif key == "env":
            m["env"] = val
        else:
            raise MountError(f"unexpected key '{key}' in '{field}'")
    mount = Mount(**m)
    if mount.type not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if getattr(mount, key) is not None:
                raise MountError(f'{key} not allowed for "{mount.type}" type mounts')
    if ro_auto:
        mount = Mount(**{**m, "readonly": mount.type not in ("cache", "tmpfs")})
    if mount.type == "secret":
        if mount.from_:
            raise MountError("secret mount should not have a from")
        if mount.sharing:
            raise MountError("secret mount should not define sharing")
        if not (mount.source or mount.target or mount.id):
            raise MountError("invalid secret mount. one of source, target required")
        if mount.source and mount.id:
            raise MountError("both source and id can't be set")
    if mount.env and mount.type != "secret":
        raise MountError(f"unexpected key 'env' for mount type '{mount.type}'")
    if mount.sharing and mount.type != "cache":
        raise MountError(f"invalid cache sharing set for {mount.type} mount")
    return mount
