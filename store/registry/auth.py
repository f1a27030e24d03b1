"""Registry credentials: where they are read from and written to, never shown.

Sources, first match wins (as docker, podman and buildx look):
  1. ``$REGISTRY_AUTH_FILE`` (containers' auth.json: ``{"auths": {host: {"auth": b64}}}``)
  2. docker's ``config.json`` in ``$DOCKER_CONFIG`` or ``~/.docker``: ``credHelpers[host]``,
     then ``auths[host]``, then ``credsStore`` — the two helper forms through the
     ``docker-credential-<name> get`` protocol (server URL on stdin, JSON on stdout).
  3. ``${XDG_RUNTIME_DIR}/containers/auth.json``.

`lamina login` writes the file of source 1 when it is set, else docker's config.json
(so docker, buildx and lamina share one login), mode 0600, created so from the first
byte. Docker Hub is keyed as docker does (``https://index.docker.io/v1/``).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lamina.store.errors import StoreError

DOCKER_HUB_KEY = "https://index.docker.io/v1/"


class CredentialError(StoreError):
    """Credentials could not be read or written (never carries a secret)."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never printed

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def registry_key(host: str) -> str:
    """The key a credential file uses for registry `host`."""
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB_KEY
    return host


def _key_matches(key: str, host: str) -> bool:
    if key == registry_key(host):
        return True
    # docker accepts keys written as URLs: https://host/ or http://host/v2/
    bare = key.split("://", 1)[-1].split("/", 1)[0]
    return bare == host or (registry_key(host) == DOCKER_HUB_KEY and bare == "index.docker.io")


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def login_file() -> Path:
    """The file `lamina login` writes."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    return Path(env) if env else docker_config_path()


MAX_CREDENTIALS_FILE = 16 << 20


def _read_json(path: Path) -> dict:
    """A credentials file's JSON object ({} when there is none). Only a regular file is
    read: a FIFO (which would block lamina until someone writes to it) or a device
    gets a clear error, as does a file too large to be one."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer; a regular file ignores it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CredentialError(f"cannot read credentials file {path}: {e.strerror or e}",
                              path=str(path)) from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CredentialError(f"credentials file {path} is not a regular file", path=str(path))
            raw = f.read(MAX_CREDENTIALS_FILE + 1)
        if len(raw) > MAX_CREDENTIALS_FILE:
            raise CredentialError(f"credentials file {path} is larger than "
                                  f"{MAX_CREDENTIALS_FILE >> 20} MiB", path=str(path))
        data = json.loads(raw)
    except (OSError, ValueError) as e:
        raise CredentialError(f"cannot read credentials file {path}: {getattr(e, 'strerror', None) or e}",
                              path=str(path)) from None
    return data if isinstance(data, dict) else {}


def _decode_auth(entry: dict, path: Path) -> Credentials | None:
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(entry["username"], entry["password"])
    auth = entry.get("auth")
    if not auth:
        return None
    try:
        user, colon, password = base64.b64decode(auth).decode().partition(":")
    except (ValueError, TypeError):
        user = colon = ""
    if not colon or not user:
        # (docker's "invalid auth configuration file"): without the colon the whole
        # secret would be taken for the user name, which error messages show
        raise CredentialError(f"credentials file {path}: an 'auth' entry is not base64 of user:password",
                              path=str(path))
    return Credentials(user, password)


def _from_auths(data: dict, host: str, path: Path) -> Credentials | None:
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if isinstance(entry, dict) and _key_matches(key, host):
            found = _decode_auth(entry, path)
            if found:
                return found
    return None


def _from_helper(helper: str, host: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([program, "get"], input=registry_key(host), capture_output=True,
                              text=True, timeout=60)
    except FileNotFoundError:
        raise CredentialError(f"credential helper {program} is configured but not installed") from None
    except subprocess.TimeoutExpired:
        raise CredentialError(f"credential helper {program} did not answer in 60 s") from None
    if proc.returncode != 0:
        if "credentials not found" in (proc.stdout + proc.stderr).lower():
            return None
        raise CredentialError(f"credential helper {program} failed (exit {proc.returncode})")
    try:
        data = json.loads(proc.stdout)
        return Credentials(data["Username"], data["Secret"])
    except (ValueError, KeyError, TypeError):
        raise CredentialError(f"credential helper {program} gave an answer that is not "
                              "{Username, Secret} JSON") from None


def find_credentials(host: str) -> Credentials | None:
    """The credentials for registry `host`, or None (anonymous)."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        found = _from_auths(_read_json(Path(env)), host, Path(env))
        if found:
            return found
    path = docker_config_path()
    data = _read_json(path)
    helpers = data.get("credHelpers") or {}
    for key, helper in helpers.items():
        if _key_matches(key, host):
            return _from_helper(helper, host)
    found = _from_auths(data, host, path)
    if found:
        return found
    if data.get("credsStore"):
        found = _from_helper(data["credsStore"], host)
        if found:
            return found
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        p = Path(runtime) / "containers" / "auth.json"
        return _from_auths(_read_json(p), host, p)
    return None


def _write_private_json(path: Path, data: dict) -> None:
    # a login file that is a symlink (a dotfiles checkout) is written where it points,
    # as docker does: the link stays, the file it names gets the credentials
    path = Path(os.path.realpath(path))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # exclusive and unguessable: the file's dir may be shared with other users
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def store_credentials(host: str, creds: Credentials) -> Path:
    """Record `creds` for `host` in the login file (0600); the file's path."""
    path = login_file()
    data = _read_json(path)
    auths = data.setdefault("auths", {})
    for key in [k for k in auths if _key_matches(k, host)]:
        del auths[key]
    raw = f"{creds.username}:{creds.password}".encode()
    auths[registry_key(host)] = {"auth": base64.b64encode(raw).decode()}
    try:
        _write_private_json(path, data)
    except OSError as e:
        raise CredentialError(f"cannot write credentials to {path}: {e.strerror or e}", path=str(path)) from None
    return path


def remove_credentials(host: str) -> bool:
    """Forget `host`'s credentials in the login file; False if there were none."""
    path = login_file()
    data = _read_json(path)
    auths = data.get("auths") or {}
    keys = [k for k in auths if _key_matches(k, host)]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    try:
        _write_private_json(path, data)
    except OSError as e:
        raise CredentialError(f"cannot write credentials to {path}: {e.strerror or e}", path=str(path)) from None
    return True
