"""Registry credentials: where they are read from and written to, never shown.

Reading, first source with an answer wins:
  1. ``$REGISTRY_AUTH_FILE`` (containers' auth.json: ``{"auths": {host: {"auth": b64}}}``),
     when set: a file the user names explicitly wins, as for podman, skopeo and buildah.
  2. docker's credentials, as the docker CLI finds them: ``$DOCKER_AUTH_CONFIG``
     (``{"auths": {key: {"auth": b64}}}``) for its exact key; else config.json in
     ``$DOCKER_CONFIG`` or ``~/.docker``: the helper of ``credHelpers[key]``, else the
     helper of ``credsStore``, else the plaintext ``auths[key]``. A configured helper
     is the only source for its registries: ``auths`` then holds at most the ``{}``
     placeholder docker login writes, and is not read (a helper that knows nothing
     means anonymous). Helpers speak ``docker-credential-<name> get|store|erase``.
  3. containers' login files, only when docker has nothing for the registry:
     ``${XDG_RUNTIME_DIR}/containers/auth.json`` (``/run/containers/<uid>/auth.json``
     without XDG_RUNTIME_DIR: where podman/skopeo login write), then
     ``$XDG_CONFIG_HOME/containers/auth.json``. podman and skopeo read them before
     docker's file; lamina, whose own login is docker's, after it.

``key`` is the registry's ``host[:port]``, Docker Hub's ``https://index.docker.io/v1/``
(docker's key); ``credHelpers`` and ``$DOCKER_AUTH_CONFIG`` match it exactly. In
``auths`` the exact key wins, then a legacy key written as a URL (``https://host/v2/``)
naming the host (for Docker Hub only in containers' files, which also call it
``docker.io``).

Writing (`lamina login`, `lamina logout`) goes where docker's and podman's logins
would: the ``$REGISTRY_AUTH_FILE`` when set (plaintext ``auths``), else docker's
config.json: through the registry's helper when one is configured (``store`` with
``{ServerURL, Username, Secret}`` on stdin, then the ``auths[key] = {}`` placeholder;
``erase`` with the key on stdin, then the placeholder dropped), else plaintext
``auths[key]``. The file is written 0600, created so from its first byte.

Not supported (docker uses them, lamina refuses them with a clear error when the
registry asks for credentials, instead of going anonymous): an ``identitytoken``
(an OAuth refresh token, or a helper's answer with user ``<token>``) and a
``registrytoken`` (a bearer token sent as is). `lamina login HOST` with a user and
password or access token replaces them.
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
TOKEN_USERNAME = "<token>"  # a helper's answer that is an identity token
HELPER_TIMEOUT = 60


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
    except RecursionError:  # `[[[[...` nested past what json decodes
        raise CredentialError(f"cannot read credentials file {path}: JSON nested too deeply",
                              path=str(path)) from None
    except (OSError, ValueError) as e:
        raise CredentialError(f"cannot read credentials file {path}: {getattr(e, 'strerror', None) or e}",
                              path=str(path)) from None
    return data if isinstance(data, dict) else {}


def _unusable(host: str, where: str, kind: str) -> CredentialError:
    return CredentialError(
        f"the credentials for {host} in {where} are {kind}, which lamina does not use: "
        f"run `lamina login {host}` with a user name and a password or access token")


def _decode_auth(entry: dict, where: str, host: str) -> Credentials | None:
    """One ``auths`` entry (docker's AuthConfig): ``auth`` (base64 of user:password)
    wins over ``username``/``password``; ``{}`` (docker login's placeholder) is None."""
    if entry.get("identitytoken"):
        raise _unusable(host, where, "an identity token (an OAuth refresh token)")
    if entry.get("registrytoken"):
        raise _unusable(host, where, "a registry token")
    auth = entry.get("auth")
    if not auth:
        if entry.get("username") and entry.get("password") is not None:
            return Credentials(str(entry["username"]), str(entry["password"]))
        return None
    try:
        user, colon, password = base64.b64decode(auth, validate=True).decode().partition(":")
    except (ValueError, TypeError):
        user = colon = ""
    if not colon or not user:
        # (docker's "invalid auth configuration file"): without the colon the whole
        # secret would be taken for the user name, which error messages show
        raise CredentialError(f"{where}: an 'auth' entry is not base64 of user:password")
    return Credentials(user, password.strip("\x00"))


def _auths_entry(data: dict, host: str, *, lenient_hub: bool) -> dict | None:
    """The ``auths`` entry for `host`: the exact key, else the first legacy key (a URL)
    naming the host. Docker matches Docker Hub by its exact key only; containers' files
    (`lenient_hub`) also know it as ``docker.io`` or ``index.docker.io``."""
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return None
    key = registry_key(host)
    if isinstance(auths.get(key), dict):
        return auths[key]
    if lenient_hub and key == DOCKER_HUB_KEY and isinstance(auths.get("docker.io"), dict):
        return auths["docker.io"]
    for k, entry in auths.items():
        if isinstance(entry, dict) and _key_matches(k, host) and (lenient_hub or key != DOCKER_HUB_KEY):
            return entry
    return None


def _from_auth_file(path: Path, host: str) -> Credentials | None:
    """containers' auth.json (``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR``)."""
    entry = _auths_entry(_read_json(path), host, lenient_hub=True)
    return _decode_auth(entry, f"credentials file {path}", host) if entry is not None else None


def configured_helper(data: dict, host: str) -> str | None:
    """The credential helper docker uses for `host` with config.json `data`:
    ``credHelpers`` by the exact key (an empty name there means "the file"), else
    ``credsStore``; None when the plaintext ``auths`` serve."""
    helpers = data.get("credHelpers")
    key = registry_key(host)
    if isinstance(helpers, dict) and key in helpers:
        return helpers[key] or None if isinstance(helpers[key], str) else None
    store = data.get("credsStore")
    return store if isinstance(store, str) and store else None


def _run_helper(helper: str, action: str, stdin: str) -> subprocess.CompletedProcess:
    program = f"docker-credential-{helper}"
    if "/" in helper or not helper.isprintable():  # a NUL was exec's raw ValueError
        raise CredentialError(f"credential helper name {helper!r} is not a program name")
    try:
        return subprocess.run([program, action], input=stdin, capture_output=True, text=True,
                              timeout=HELPER_TIMEOUT)
    except FileNotFoundError:
        raise CredentialError(f"credential helper {program} is configured but not installed") from None
    except subprocess.TimeoutExpired:
        raise CredentialError(f"credential helper {program} did not answer in {HELPER_TIMEOUT} s") from None
    except OSError as e:
        raise CredentialError(f"cannot run credential helper {program}: {e.strerror or e}") from None


def _not_found(proc: subprocess.CompletedProcess) -> bool:
    # the protocol's answer: "credentials not found in native keychain" on stdout, exit 1
    return "credentials not found" in (proc.stdout + proc.stderr).lower()


def _from_helper(helper: str, host: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    proc = _run_helper(helper, "get", registry_key(host))
    if proc.returncode != 0:
        if _not_found(proc):
            return None
        # its words are not shown: a helper may say the secret
        raise CredentialError(f"credential helper {program} failed (exit {proc.returncode})")
    try:
        data = json.loads(proc.stdout)
        user, secret = data["Username"], data["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):
        raise CredentialError(f"credential helper {program} gave an answer that is not "
                              "{Username, Secret} JSON") from None
    if user == TOKEN_USERNAME:
        raise _unusable(host, f"credential helper {program}", "an identity token (an OAuth refresh token)")
    if not user and not secret:
        return None
    return Credentials(user, secret)


def _from_env_config(host: str) -> Credentials | None:
    """``$DOCKER_AUTH_CONFIG``: docker's in-memory store, read before config.json, by
    exact key only; each entry must be ``{"auth": b64}``."""
    raw = os.environ.get("DOCKER_AUTH_CONFIG")
    if not raw:
        return None
    where = "$DOCKER_AUTH_CONFIG"
    try:
        data = json.loads(raw)
        auths = data["auths"] if isinstance(data, dict) and set(data) <= {"auths"} else None
    except (ValueError, KeyError, RecursionError):
        auths = None
    if not isinstance(auths, dict) or not all(
            isinstance(e, dict) and set(e) == {"auth"} and e["auth"] for e in auths.values()):
        raise CredentialError(f"{where} is not {{\"auths\": {{REGISTRY: {{\"auth\": BASE64}}}}}} JSON")
    entry = auths.get(registry_key(host))
    return _decode_auth(entry, where, host) if entry is not None else None


def find_credentials(host: str) -> Credentials | None:
    """The credentials for registry `host`, or None (anonymous). See the module
    docstring for the order."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        found = _from_auth_file(Path(env), host)
        if found:
            return found
    found = _from_env_config(host)
    if found:
        return found
    path = docker_config_path()
    data = _read_json(path)
    helper = configured_helper(data, host)
    if helper:
        found = _from_helper(helper, host)
    else:
        entry = _auths_entry(data, host, lenient_hub=False)
        found = _decode_auth(entry, f"credentials file {path}", host) if entry is not None else None
    if found:
        return found
    for auth_file in containers_login_files():
        found = _from_auth_file(auth_file, host)
        if found:
            return found
    return None


RUN_CONTAINERS = Path("/run/containers")  # podman/skopeo login's dir without XDG_RUNTIME_DIR


def containers_login_files() -> list[Path]:
    """containers' login files, in containers-image's order: the one `podman login` and
    `skopeo login` write - ``$XDG_RUNTIME_DIR/containers/auth.json``, or
    ``/run/containers/<uid>/auth.json`` where XDG_RUNTIME_DIR is unset (root in CI, sudo)
    - then the user's own ``$XDG_CONFIG_HOME/containers/auth.json``
    (``~/.config/containers/auth.json``), which containers-image also reads."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    first = (Path(runtime) / "containers" if runtime else RUN_CONTAINERS / str(os.getuid())) / "auth.json"
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [first, Path(config_home) / "containers" / "auth.json"]


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


def _save(path: Path, data: dict) -> None:
    try:
        _write_private_json(path, data)
    except OSError as e:
        raise CredentialError(f"cannot write credentials to {path}: {e.strerror or e}", path=str(path)) from None


def _drop_entries(auths: dict, host: str) -> bool:
    keys = [k for k in auths if _key_matches(k, host)]
    for key in keys:
        del auths[key]
    return bool(keys)


def _redacted(text: str, creds: Credentials) -> str:
    """A helper's words for an error: one line, printable, without the secret."""
    for secret in (f"{creds.username}:{creds.password}".encode(), creds.password.encode()):
        if len(secret) >= 4:
            text = text.replace(base64.b64encode(secret).decode(), "***")
    if len(creds.password) >= 1:
        text = text.replace(creds.password, "***")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:300]


@dataclass(frozen=True)
class StoredCredentials:
    """Where `lamina login` put the credentials: a file, or a helper (and its file's
    ``{}`` placeholder)."""
    path: Path
    helper: str | None = None

    def __str__(self) -> str:
        return f"docker-credential-{self.helper}" if self.helper else str(self.path)


def store_credentials(host: str, creds: Credentials) -> StoredCredentials:
    """Record `creds` for `host` as docker login (or podman login, with
    ``$REGISTRY_AUTH_FILE``) would: see the module docstring."""
    path = login_file()
    data = _read_json(path)
    key = registry_key(host)
    helper = None if os.environ.get("REGISTRY_AUTH_FILE") else configured_helper(data, host)
    if helper:
        answer = json.dumps({"ServerURL": key, "Username": creds.username, "Secret": creds.password})
        proc = _run_helper(helper, "store", answer)
        if proc.returncode != 0:
            said = _redacted(proc.stdout + " " + proc.stderr, creds)
            raise CredentialError(f"credential helper docker-credential-{helper} could not store the "
                                  f"credentials for {host} (exit {proc.returncode})"
                                  + (f": {said}" if said else ""))
    auths = data.get("auths")
    if not isinstance(auths, dict):
        auths = data["auths"] = {}
    _drop_entries(auths, host)  # and any legacy form of the key, with its secret
    if helper:
        auths[key] = {}
    else:
        raw = f"{creds.username}:{creds.password}".encode()
        auths[key] = {"auth": base64.b64encode(raw).decode()}
    _save(path, data)
    return StoredCredentials(path, helper)


def remove_credentials(host: str) -> bool:
    """Forget `host`'s credentials where `lamina login` put them (the helper's
    ``erase``, then the file's entries); False if there were none."""
    path = login_file()
    data = _read_json(path)
    helper = None if os.environ.get("REGISTRY_AUTH_FILE") else configured_helper(data, host)
    erased = False
    if helper:
        proc = _run_helper(helper, "erase", registry_key(host))
        if proc.returncode != 0 and not _not_found(proc):
            # nothing of the file is changed then, as docker does
            raise CredentialError(f"credential helper docker-credential-{helper} could not erase the "
                                  f"credentials for {host} (exit {proc.returncode})")
        erased = proc.returncode == 0
    auths = data.get("auths")
    if isinstance(auths, dict) and _drop_entries(auths, host):
        _save(path, data)
        return True
    return erased
