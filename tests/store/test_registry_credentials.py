"""Where lamina finds registry credentials and where `lamina login` puts them, against
a real docker-registry with htpasswd basic auth (HOME, XDG_RUNTIME_DIR and PATH
pointed into tmp_path): docker's ``~/.docker/config.json`` (``auths``,
``credHelpers``, ``credsStore``) through ``docker-credential-*`` helpers of the test
that speak the helper protocol (``get``: the server on stdin, ``{ServerURL, Username,
Secret}`` on stdout, "credentials not found" and exit 1 otherwise; ``store``: that
JSON on stdin, kept in a file of the test; ``erase``: the server on stdin),
``$DOCKER_AUTH_CONFIG`` and containers' ``$XDG_RUNTIME_DIR/containers/auth.json``; no
secret in any output. And bearer tokens that expire between two operations of one
session are fetched anew.

The expected order is docker CLI's (cli/config/configfile/file.go: GetCredentialsStore,
credentials/native_store.go), with containers' files around it as lamina documents
(store/registry/auth.py): ``$REGISTRY_AUTH_FILE`` first (podman, skopeo and buildah
let a named file win too), then docker's: ``$DOCKER_AUTH_CONFIG``, ``credHelpers[host]``,
else ``credsStore``, else ``auths[host]`` - a configured helper is the only source,
``auths`` then holds docker login's ``{}`` placeholder - then
``$XDG_RUNTIME_DIR/containers/auth.json`` (podman reads it before docker's file;
lamina, whose login writes docker's file, after it).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lamina.store.registry.auth import Credentials, find_credentials
from lamina.store.registry.pull import pull_image
from lamina.store.registry.session import RegistrySession
from lamina.store.store import Store
from tests.builder.buildkit import lamina
from tests.conftest import require_tool
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
    for var in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "DOCKER_AUTH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return SimpleNamespace(home=home, bin=bindir, config=home / ".docker" / "config.json",
                           containers=runtime / "containers" / "auth.json", log=tmp_path / "helper.log",
                           keychain=tmp_path / "keychain")


def _auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _helper(home, name: str, server: str, user: str, secret: str) -> None:
    """docker-credential-NAME: knows `server`, and what `store` gave it (one file per
    server under home.keychain/NAME/); logs every call as "NAME ACTION SERVER"."""
    script = home.bin / f"docker-credential-{name}"
    answer = json.dumps({"ServerURL": server, "Username": user, "Secret": secret})
    keep = home.keychain / name
    keep.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "#!/bin/sh\n"
        "kept() { printf %s \"$1\" | tr -c 'A-Za-z0-9.' _; }\n"
        'case "$1" in\n'
        "get)\n"
        "  read -r server\n"
        f'  echo "{name} get $server" >> {home.log}\n'
        f'  f="{keep}/$(kept "$server")"\n'
        '  if [ -f "$f" ]; then cat "$f"; exit 0; fi\n'
        f'  if [ "$server" = "{server}" ]; then echo \'{answer}\'; exit 0; fi\n'
        '  echo "credentials not found in native keychain"; exit 1;;\n'
        "store)\n"
        '  doc=$(cat)\n'
        """  server=$(printf %s "$doc" | sed -n 's/.*"ServerURL": *"\\([^"]*\\)".*/\\1/p')\n"""
        f'  echo "{name} store $server" >> {home.log}\n'
        f'  printf %s "$doc" > "{keep}/$(kept "$server")";;\n'
        "erase)\n"
        "  read -r server\n"
        f'  echo "{name} erase $server" >> {home.log}\n'
        f'  f="{keep}/$(kept "$server")"\n'
        '  [ -f "$f" ] || { echo "credentials not found in native keychain"; exit 1; }\n'
        '  rm "$f";;\n'
        "*) exit 3;;\n"
        "esac\n")
    script.chmod(0o755)


def _kept(home, name: str, server: str) -> dict | None:
    """What helper `name` was given by `store` for `server` (None: nothing)."""
    f = home.keychain / name / "".join(c if c.isalnum() or c == "." else "_" for c in server)
    return json.loads(f.read_text()) if f.exists() else None


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
    assert _asked(home) == [f"pass get {host}"]  # the protocol: the bare host:port on stdin

    _write(home.config, {"credsStore": "pass", "auths": {host: {}}})  # as docker writes it
    run = _pull(tmp_path, host, "store")
    assert run.code == 0, run.stderr
    # a plaintext auths entry beside a store is not read (docker asks the store)
    _write(home.config, {"credsStore": "pass", "auths": {host: _auth("ci", WRONG_PW)}})
    run = _pull(tmp_path, host, "store-over-auths")
    assert run.code == 0, run.stderr

    home.config.unlink()
    _write(home.containers, {"auths": {host: _auth("ci", PW)}})
    run = _pull(tmp_path, host, "containers")
    assert run.code == 0, run.stderr


def test_precedence(basic_registry, home, tmp_path, monkeypatch):
    """See the module docstring for why this order."""
    host = basic_registry
    _helper(home, "pass", host, "helped", HELPER_PW)
    _helper(home, "empty", "elsewhere:1", "x", "y")
    _write(home.containers, {"auths": {host: _auth("podman", WRONG_PW)}})
    _write(home.config, {"credHelpers": {host: "pass"}, "credsStore": "empty",
                         "auths": {host: _auth("ci", WRONG_PW)}})
    assert find_credentials(host).username == "helped"  # credHelpers over auths

    # docker: with a store configured, the store is asked, never auths
    _write(home.config, {"credsStore": "pass", "auths": {host: _auth("ci", WRONG_PW)}})
    assert find_credentials(host).username == "helped"
    _write(home.config, {"credsStore": "pass", "auths": {host: {}}})
    assert find_credentials(host).username == "helped"  # docker login's placeholder
    _write(home.config, {"credsStore": "empty", "auths": {host: _auth("ci", PW)}})
    assert find_credentials(host).username == "podman"  # the store knows nothing: not auths
    # DOCKER_AUTH_CONFIG (docker's in-memory store) before config.json, by exact key
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": {host: _auth("env", PW)}}))
    _write(home.config, {"credHelpers": {host: "pass"}})
    assert find_credentials(host).username == "env"
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": {"https://" + host: _auth("env", PW)}}))
    assert find_credentials(host).username == "helped"
    monkeypatch.delenv("DOCKER_AUTH_CONFIG")

    # a registry's helper that knows nothing: anonymous, no fall-back to auths
    home.containers.unlink()
    _write(home.config, {"credHelpers": {host: "empty"}, "auths": {host: _auth("ci", PW)}})
    assert find_credentials(host) is None
    _write(home.containers, {"auths": {host: _auth("podman", WRONG_PW)}})

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


def test_login_and_logout_through_the_store(basic_registry, home, tmp_path):
    """docker login with a credsStore: the helper's `store` gets {ServerURL, Username,
    Secret}, config.json only the {} placeholder; docker logout: `erase`, placeholder gone."""
    host = basic_registry
    _helper(home, "pass", "elsewhere:1", "x", "y")
    _write(home.config, {"credsStore": "pass", "psFormat": "table {{.ID}}",
                         "auths": {f"https://{host}/v1/": _auth("ci", WRONG_PW)}})  # a legacy key
    ok = lamina(tmp_path / "s", "login", host, "-u", "ci", "-p", PW)
    assert ok.code == 0, ok.stderr
    _no_secret(ok)
    assert _kept(home, "pass", host) == {"ServerURL": host, "Username": "ci", "Secret": PW}
    text = home.config.read_text()
    assert PW not in text and _auth("ci", WRONG_PW)["auth"] not in text  # the legacy secret dropped too
    doc = json.loads(text)
    assert doc["auths"] == {host: {}} and doc["psFormat"] == "table {{.ID}}"
    assert stat.S_IMODE(home.config.stat().st_mode) == 0o600
    assert _pull(tmp_path, host).code == 0  # read back through `get`

    out = lamina(tmp_path / "s", "logout", host)
    assert out.code == 0, out.stderr
    assert _asked(home)[-1] == f"pass erase {host}"
    assert _kept(home, "pass", host) is None
    assert host not in json.loads(home.config.read_text())["auths"]
    again = _pull(tmp_path, host, "after-logout")
    assert again.code == 1 and "requires authentication" in again.stderr


def test_login_uses_the_registry_s_own_helper(basic_registry, home, tmp_path):
    host = basic_registry
    _helper(home, "pass", "elsewhere:1", "x", "y")
    _helper(home, "own", "elsewhere:1", "x", "y")
    _write(home.config, {"credsStore": "pass", "credHelpers": {host: "own", "https://" + host: "pass"}})
    ok = lamina(tmp_path / "s", "login", host, "-u", "ci", "-p", PW)
    assert ok.code == 0, ok.stderr
    assert _kept(home, "own", host)["Secret"] == PW and _kept(home, "pass", host) is None
    assert json.loads(home.config.read_text())["auths"] == {host: {}}
    assert find_credentials(host).username == "ci"
    assert lamina(tmp_path / "s", "logout", host).code == 0
    assert _kept(home, "own", host) is None
    assert [line.split()[:2] for line in _asked(home)] == [["own", "store"], ["own", "get"], ["own", "erase"]]


def test_login_and_logout_as_docker_does_them(basic_registry, home, tmp_path, monkeypatch):
    """The docker CLI as the oracle (its client-side login, no daemon): the same config
    (credsStore, and credHelpers for this registry) in two DOCKER_CONFIG dirs, `docker
    login`/`logout` on one, `lamina login`/`logout` on the other: the registry's own
    helper gets the same `store` document, the files the same auths."""
    docker = require_tool("docker")
    host = basic_registry
    _helper(home, "pass", "elsewhere:1", "x", "y")
    _helper(home, "own", "elsewhere:1", "x", "y")
    config = {"credsStore": "pass", "credHelpers": {host: "own"}}
    seen = {}
    for tool in ("docker", "lamina"):
        cfg = tmp_path / tool
        _write(cfg / "config.json", config)
        monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
        if tool == "docker":
            env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-daemon.sock")
            login = subprocess.run([docker, "login", host, "-u", "ci", "--password-stdin"], input=PW,
                                   env=env, capture_output=True, text=True, timeout=60)
            assert login.returncode == 0, login.stderr
        else:
            login = lamina(tmp_path / "s", "login", host, "-u", "ci", "-p", PW)
            assert login.code == 0, login.stderr
        kept, after_login = _kept(home, "own", host), json.loads((cfg / "config.json").read_text())
        if tool == "docker":
            assert subprocess.run([docker, "logout", host], env=env, capture_output=True,
                                  timeout=60).returncode == 0
        else:
            assert lamina(tmp_path / "s", "logout", host).code == 0
        seen[tool] = (kept, after_login["auths"], json.loads((cfg / "config.json").read_text())["auths"],
                      _kept(home, "own", host), _kept(home, "pass", host))
    assert seen["lamina"] == seen["docker"]
    assert seen["docker"][0] == {"ServerURL": host, "Username": "ci", "Secret": PW}


def test_a_helper_that_cannot_store(basic_registry, home, tmp_path):
    """The helper's own words are shown (they say why), its echo of the secret is not;
    the file is left as it was."""
    host = basic_registry
    failing = home.bin / "docker-credential-locked"
    failing.write_text("#!/bin/sh\nread -r doc\necho \"keychain locked, got $doc\"\n"
                       f"echo '{base64.b64encode(PW.encode()).decode()}' >&2\nexit 1\n")
    failing.chmod(0o755)
    _write(home.config, {"credsStore": "locked"})
    before = home.config.read_text()
    run = lamina(tmp_path / "s", "login", host, "-u", "ci", "-p", PW)
    assert run.code == 1
    assert "docker-credential-locked" in run.stderr and "keychain locked" in run.stderr
    _no_secret(run)
    assert base64.b64encode(PW.encode()).decode() not in run.stderr
    assert home.config.read_text() == before


def test_identity_tokens_are_refused_clearly(basic_registry, home, tmp_path):
    """docker trades an identitytoken (OAuth refresh token) for access tokens; lamina
    does not, and says so instead of sending it as a password or going anonymous."""
    host = basic_registry
    token = "refresh-Hh27-secret"
    _write(home.config, {"auths": {host: {"auth": base64.b64encode(b"ci:").decode(),
                                          "identitytoken": token}}})
    run = _pull(tmp_path, host)
    assert run.code == 1 and "identity token" in run.stderr and f"lamina login {host}" in run.stderr
    assert token not in run.stderr + run.stdout


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


def test_podman_and_skopeo_logins_are_found_where_they_write_them(basic_registry, home, tmp_path,
                                                                   monkeypatch):
    """Without XDG_RUNTIME_DIR (root in CI, sudo) `podman login` / `skopeo login` write
    /run/containers/<uid>/auth.json (containers-image's default); the user's own
    $XDG_CONFIG_HOME/containers/auth.json is read too. The files here are written by
    skopeo itself (--authfile at the default's place under a test root)."""
    from lamina.store.registry import auth

    skopeo = require_tool("skopeo")
    host = basic_registry
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(auth, "RUN_CONTAINERS", tmp_path / "run-containers")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    def skopeo_login(authfile: Path) -> None:
        r = subprocess.run([skopeo, "login", "--tls-verify=false", "--authfile", str(authfile),
                            "-u", "ci", "--password-stdin", host], input=PW, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    assert _pull(tmp_path, host, "anon").code == 1
    runtime_file = tmp_path / "run-containers" / str(os.getuid()) / "auth.json"
    skopeo_login(runtime_file)
    run = _pull(tmp_path, host, "runtime")
    assert run.code == 0, run.stderr
    runtime_file.unlink()
    skopeo_login(tmp_path / "config" / "containers" / "auth.json")
    run = _pull(tmp_path, host, "config-home")
    assert run.code == 0, run.stderr
    _no_secret(run)
