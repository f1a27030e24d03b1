"""Where lamina finds registry credentials, against a real docker-registry with
htpasswd basic auth (HOME, XDG_RUNTIME_DIR and PATH pointed into tmp_path): docker's
``~/.docker/config.json`` (``auths``, ``credHelpers``, ``credsStore`` through a
``docker-credential-*`` helper of the test that speaks the helper protocol: ``get``,
the server on stdin, ``{ServerURL, Username, Secret}`` on stdout, "credentials not
found" and exit 1 otherwise) and containers' ``$XDG_RUNTIME_DIR/containers/auth.json``;
`lamina login` / `logout` on docker's file; no secret in any output. And bearer
tokens that expire between two operations of one session are fetched anew.

The precedence lamina follows (a decision; docker and containers-image differ, and
lamina is used like docker, whose file `lamina login` writes):

1. ``$REGISTRY_AUTH_FILE`` when set: a file the user names explicitly wins, as it
   does for podman, skopeo and buildah.
2. docker's config.json: ``credHelpers[host]`` first (docker and containers-image both
   ask a registry's own helper before anything else, and when it has nothing the
   answer is "anonymous": neither falls back to the file's ``auths``), then
   ``auths[host]``, then ``credsStore``. Docker itself asks ``credsStore`` instead of
   ``auths`` when both are set, but docker never writes both for one host (with a
   store its ``auths`` entries are ``{}``, which lamina skips too); a real ``auths``
   entry next to a store is what `lamina login` writes, and the user expects the
   login they just made to be used.
3. containers' ``$XDG_RUNTIME_DIR/containers/auth.json`` (podman login's file) only
   when docker's config has nothing for the registry: podman reads it before docker's
   file, lamina after, since its own login is docker's file.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lamina.store.registry.auth import Credentials, find_credentials
from lamina.store.registry.pull import pull_image
from lamina.store.registry.session import RegistrySession
from lamina.store.store import Store
from tests.builder.buildkit import lamina
from tests.store.registryblobs import push_layers, tar_layer
from tests.store.registryfix import TokenService, htpasswd_line, registry

PW = "pw-Zq8xR2-secret"
HELPER_PW = "helper-Kd93-secret"
WRONG_PW = "wrong-Lm42-secret"


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory):
    """A registry knowing `ci` (PW) and `helped` (HELPER_PW), with private/app:1 in it."""
    users = htpasswd_line("ci", PW) + htpasswd_line("helped", HELPER_PW)
    with registry(tmp_path_factory.mktemp("reg"), htpasswd=users) as host:
        with RegistrySession(host, credentials=Credentials("ci", PW)) as s:
            push_layers(s, "private/app", "1", [tar_layer({"hello": b"hi\n"})])
        yield host


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    runtime = tmp_path / "run"
    runtime.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    for var in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE"):
        monkeypatch.delenv(var, raising=False)
    return SimpleNamespace(home=home, bin=bindir, config=home / ".docker" / "config.json",
                           containers=runtime / "containers" / "auth.json", log=tmp_path / "helper.log")


def _auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _helper(home, name: str, server: str, user: str, secret: str) -> None:
    """docker-credential-NAME: knows `server` only; logs every server asked."""
    script = home.bin / f"docker-credential-{name}"
    answer = json.dumps({"ServerURL": server, "Username": user, "Secret": secret})
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 3\n'
        "read -r server\n"
        f'echo "{name} $server" >> {home.log}\n'
        f'if [ "$server" = "{server}" ]; then echo \'{answer}\'; exit 0; fi\n'
        'echo "credentials not found in native keychain"; exit 1\n')
    script.chmod(0o755)


def _asked(home) -> list[str]:
    return home.log.read_text().split("\n")[:-1] if home.log.exists() else []


def _pull(tmp_path, host, name="fresh"):
    return lamina(tmp_path / name, "pull", f"{host}/private/app:1")


def _no_secret(run) -> None:
    text = run.stdout + run.stderr
    for secret in (PW, HELPER_PW, WRONG_PW):
        assert secret not in text
        for user in ("ci", "helped"):
            assert base64.b64encode(f"{user}:{secret}".encode()).decode() not in text
    assert "Traceback" not in text


def test_each_source_gives_a_working_pull(basic_registry, home, tmp_path):
    host = basic_registry
    anonymous = _pull(tmp_path, host, "anon")
    assert anonymous.code == 1 and f"lamina login {host}" in anonymous.stderr

    _write(home.config, {"auths": {host: _auth("ci", PW)}})
    assert _pull(tmp_path, host, "auths").code == 0

    _helper(home, "pass", host, "helped", HELPER_PW)
    _write(home.config, {"credHelpers": {host: "pass"}})
    run = _pull(tmp_path, host, "helper")
    assert run.code == 0, run.stderr
    assert _asked(home) == [f"pass {host}"]  # the protocol: the bare host:port on stdin

    _write(home.config, {"credsStore": "pass", "auths": {host: {}}})  # as docker writes it
    run = _pull(tmp_path, host, "store")
    assert run.code == 0, run.stderr

    home.config.unlink()
    _write(home.containers, {"auths": {host: _auth("ci", PW)}})
    run = _pull(tmp_path, host, "containers")
    assert run.code == 0, run.stderr


def test_precedence(basic_registry, home, tmp_path, monkeypatch):
    """See the module docstring for why this order."""
    host = basic_registry
    _helper(home, "pass", host, "helped", HELPER_PW)
    _write(home.containers, {"auths": {host: _auth("podman", WRONG_PW)}})
    _write(home.config, {"credHelpers": {host: "pass"}, "credsStore": "pass",
                         "auths": {host: _auth("ci", WRONG_PW)}})
    assert find_credentials(host).username == "helped"  # credHelpers over auths

    _write(home.config, {"credsStore": "pass", "auths": {host: _auth("ci", PW)}})
    assert find_credentials(host).username == "ci"  # lamina login's auths over the store
    _write(home.config, {"credsStore": "pass", "auths": {host: {}}})
    assert find_credentials(host).username == "helped"  # an empty auths entry: the store

    # a registry's helper that knows nothing: anonymous, no fall-back to auths
    _write(home.config, {"credHelpers": {host: "empty"}, "auths": {host: _auth("ci", PW)}})
    _helper(home, "empty", "elsewhere:1", "x", "y")
    assert find_credentials(host) is None

    _write(home.config, {"auths": {"other:5000": _auth("ci", PW)}})
    assert find_credentials(host).username == "podman"  # containers' file only as last resort

    auth_file = home.home / "explicit.json"
    _write(auth_file, {"auths": {host: _auth("explicit", PW)}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    _write(home.config, {"credHelpers": {host: "pass"}})
    assert find_credentials(host).username == "explicit"  # the named file first

    # end to end: the winner's (wrong) secret is used, and never shown
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    _write(home.config, {"auths": {host: _auth("ci", WRONG_PW)}})
    refused = _pull(tmp_path, host)
    assert refused.code == 1
    assert "refused the credentials of user 'ci'" in refused.stderr
    _no_secret(refused)


def test_login_and_logout_on_docker_s_config(basic_registry, home, tmp_path):
    host = basic_registry
    _write(home.config, {"credHelpers": {"other:1": "pass"}, "auths": {"other:5000": _auth("x", "y")},
                         "psFormat": "table {{.ID}}"})
    home.config.chmod(0o644)
    wrong = lamina(tmp_path / "s", "login", host, "-u", "ci", "-p", WRONG_PW)
    assert wrong.code == 1
    _no_secret(wrong)
    assert host not in json.loads(home.config.read_text())["auths"]

    ok = lamina(tmp_path / "s", "login", host, "-u", "ci", "-p", PW)
    assert ok.code == 0, ok.stderr
    _no_secret(ok)
    assert stat.S_IMODE(home.config.stat().st_mode) == 0o600
    doc = json.loads(home.config.read_text())
    # docker's encoding: base64 of user:password under auths[host]; the rest kept
    assert base64.b64decode(doc["auths"][host]["auth"]).decode() == f"ci:{PW}"
    assert doc["psFormat"] == "table {{.ID}}" and doc["credHelpers"] == {"other:1": "pass"}
    assert "other:5000" in doc["auths"]
    assert _pull(tmp_path, host).code == 0

    out = lamina(tmp_path / "s", "logout", host)
    assert out.code == 0
    _no_secret(out)
    doc = json.loads(home.config.read_text())
    assert host not in doc["auths"] and "other:5000" in doc["auths"]
    assert stat.S_IMODE(home.config.stat().st_mode) == 0o600
    again = _pull(tmp_path, host, "after-logout")
    assert again.code == 1 and "requires authentication" in again.stderr


def test_a_fresh_home_gets_a_private_docker_dir(basic_registry, home, tmp_path):
    ok = lamina(tmp_path / "s", "login", basic_registry, "-u", "ci", "-p", PW)
    assert ok.code == 0, ok.stderr
    assert stat.S_IMODE(home.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.config.parent.stat().st_mode) == 0o700


def test_helper_secrets_never_shown(basic_registry, home, tmp_path):
    """A helper's wrong secret, and a helper that fails saying the secret on stderr."""
    host = basic_registry
    _helper(home, "pass", host, "helped", WRONG_PW)
    _write(home.config, {"credsStore": "pass"})
    refused = _pull(tmp_path, host)
    assert refused.code == 1 and "helped" in refused.stderr
    _no_secret(refused)

    broken = home.bin / "docker-credential-broken"
    broken.write_text(f"#!/bin/sh\necho 'token {HELPER_PW}' >&2\necho '{HELPER_PW}'\nexit 2\n")
    broken.chmod(0o755)
    _write(home.config, {"credHelpers": {host: "broken"}})
    failed = _pull(tmp_path, host)
    assert failed.code == 1 and "docker-credential-broken" in failed.stderr
    _no_secret(failed)


@pytest.mark.parametrize("lifetime", [1])
def test_expired_token_is_fetched_again(tmp_path, monkeypatch, lifetime):
    """Two pulls in one session, the registry's token expired in between (the token
    service says expires_in 1 and the registry refuses it 1 s later): the second
    pull gets a new token instead of failing with 401."""
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    tokens = TokenService(tmp_path / "tok", "robot", "t0ken-pw")
    tokens.lifetime, tokens.exact_expiry = lifetime, True
    with tokens.serving(), registry(tmp_path / "reg", token=tokens) as host, \
            RegistrySession(host, credentials=Credentials("robot", "t0ken-pw")) as s:
        push_layers(s, "tok/app", "1", [tar_layer({"a": b"a\n"})])
        push_layers(s, "tok/app", "2", [tar_layer({"b": b"b\n"})])
        with Store(tmp_path / "s") as store:
            pull_image(store, f"{host}/tok/app:1", session=s)
            issued = tokens.issued
            time.sleep(lifetime + 1.2)
            pulled = pull_image(store, f"{host}/tok/app:2", session=s)
            assert store.resolve(f"{host}/tok/app:2").config_digest == pulled.image.config_digest
            assert tokens.issued > issued
