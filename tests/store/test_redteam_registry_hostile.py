"""Red-team: a hostile or misconfigured registry, token service or credentials setup
(issue 8: no credential ever sent where it does not belong, printed or put in an
error; TLS never downgraded; clear errors, never an internal error; nothing stalls a
build for ever). Each test here failed before its fix:

- a redirect target (blob storage on another host) answering 401 with a bearer
  challenge got the registry's basic credentials sent to the token realm it named;
- an HTTPS registry naming a plain-HTTP token realm got its credentials sent in clear
  text (oras-go refuses that downgrade too);
- a token that is not a visible-ASCII string was an internal error (TypeError,
  UnicodeEncodeError) or, with a newline, was quoted in the error message;
- a token answer was read whole into memory, however large;
- `Retry-After: nan` was an internal error; an absurd Retry-After was capped silently;
- a challenge's quoted-pair escapes (`\\/`) were kept in the realm; a long challenge
  without `=` took quadratic time;
- a Location or realm that is no URL (`http://[::1`) was an internal error;
- an `auth` entry without `user:` (a bare token, base64) made the token the user
  name, which "refused the credentials of user '...'" prints;
- REGISTRY_AUTH_FILE naming a FIFO blocked lamina for ever;
- index entries whose platform fields or annotations are not strings/objects were
  internal errors;
- a manifest dripping one byte at a time held a pull for as long as the registry
  liked (read timeouts are per read);
- a mirror URL with user:password@ printed the password in every pull error;
- login through a symlinked credentials file replaced the link (docker writes its target);
- an error answer's body was read whole (endless: held lamina; truncated 401: internal error);
- a manifest whose connection dropped mid-body, or whose Content-Encoding lied, was
  an internal error (httpx's exception raised raw), never retried.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import ssl
import tarfile
import threading
import time

import pytest

from lamina.store import oci
from lamina.store.errors import StoreError
from lamina.store.registry import session as session_mod
from lamina.store.registry.auth import CredentialError, Credentials, find_credentials
from lamina.store.registry.pull import host as host_platform
from lamina.store.registry.pull import pull_image
from lamina.store.registry.session import RegistryError, RegistrySession, Unauthorized, parse_challenge
from lamina.store.store import Store

PASSWORD = "hunter2-Pa55word"
BASIC = Credentials("u", PASSWORD).basic_header()


@contextlib.contextmanager
def server(handle, tls: dict | None = None):
    """127.0.0.1:PORT of an HTTP(S) server answering every request with
    handle(handler) -> (status, headers, body), or None when the handler answered."""

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _any(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            answer = handle(self)
            if answer is None:
                return
            status, headers, body = answer
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

        do_GET = do_POST = do_PUT = do_HEAD = do_PATCH = _any

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls["cert"]), str(tls["key"]))
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()


def _get(host: str, path: str = "/v2/r/manifests/1", creds=Credentials("u", PASSWORD), **kw):
    with RegistrySession(host, credentials=creds) as s:
        with s.request("GET", path, scope="repository:r:pull", **kw) as resp:
            return resp.status_code


# -- where credentials go ------------------------------------------------------------

def test_a_401_from_a_redirect_target_gets_no_credentials():
    """Blob storage on another host (port) that answers 401 with a bearer challenge:
    lamina must not fetch a token there with the registry's credentials (containerd
    keys credentials by the host that challenges: the storage host has none)."""
    seen = []

    def storage(h):
        seen.append((h.path, h.headers.get("Authorization")))
        if h.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, b'{"token": "stolen"}'
        return 401, {"WWW-Authenticate": f'Bearer realm="http://{other}/token",service="s"'}, b""

    with server(storage) as other:
        def registry(h):
            if h.path == "/v2/":
                return 200, {}, b"{}"
            if h.headers.get("Authorization") != BASIC:
                return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
            return 307, {"Location": f"http://{other}/blob"}, b""

        with server(registry) as host:
            with pytest.raises(Unauthorized) as info:
                _get(host, "/v2/r/blobs/sha256:" + "0" * 64)
    assert seen, "the redirect was followed"
    assert all(auth is None for _, auth in seen), seen
    assert not any(p.startswith("/token") for p, _ in seen), seen
    assert "redirected" in str(info.value) and PASSWORD not in str(info.value)


def test_an_https_registry_never_sends_credentials_to_a_plain_http_token_realm(tmp_path, monkeypatch):
    from tests.store.registryfix import make_pki

    pki = make_pki(tmp_path / "pki")
    certs = tmp_path / "certs.d"
    seen = []

    def tokens(h):
        seen.append(h.headers.get("Authorization"))
        return 200, {"Content-Type": "application/json"}, b'{"token": "t"}'

    with server(tokens) as realm:
        def registry(h):
            if h.headers.get("Authorization") == "Bearer t":
                return 200, {}, b"{}"
            return 401, {"WWW-Authenticate": f'Bearer realm="http://{realm}/token",service="s"'}, b""

        with server(registry, tls=pki) as host:
            (certs / host).mkdir(parents=True)
            (certs / host / "ca.crt").write_bytes(pki["ca"].read_bytes())
            monkeypatch.setenv("LAMINA_CERTS_D", str(certs))
            with pytest.raises(RegistryError, match="plain-HTTP auth service") as info:
                _get(host)
            assert seen == []
            assert PASSWORD not in str(info.value)
            # anonymous (no credentials to protect): the token flow still works
            assert _get(host, creds=None) == 200
    assert seen == [None]


# -- what a token service sends ------------------------------------------------------

@contextlib.contextmanager
def _token_registry(answer: bytes):
    """A registry whose token service (same host, /token) answers `answer`."""
    def handle(h):
        if h.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, answer
        if h.path == "/v2/" or h.headers.get("Authorization", "").startswith("Bearer "):
            return 200, {}, b"{}"
        port = h.server.server_port
        return 401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{port}/token",service="s"'}, b""

    with server(handle) as host:
        yield host


@pytest.mark.parametrize("token", [123, ["a"], "sec\nret: x", "s\u00e9cret", "sec ret"])
def test_a_token_that_cannot_be_a_header_is_a_clear_error(token):
    with _token_registry(json.dumps({"token": token}).encode()) as host:
        with pytest.raises(RegistryError, match="sent a token that cannot go into an HTTP header") as info:
            _get(host, retry=False)
    if isinstance(token, str):
        assert token not in str(info.value) and "sec" not in str(info.value)


def test_a_huge_token_answer_is_not_read_whole():
    # valid JSON with the token first: read whole, it was accepted
    answer = b'{"token": "t", "pad": "' + b"a" * (64 << 20) + b'"}'
    with _token_registry(answer) as host:
        with pytest.raises(RegistryError, match="larger than|more than"):
            _get(host, retry=False)


def test_a_token_with_a_nan_lifetime_is_used():
    with _token_registry(b'{"token": "t", "expires_in": NaN}') as host:
        assert _get(host, retry=False) == 200


# -- Retry-After ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "NaN", "-inf", "1e999999", "999999"])
def test_absurd_retry_after_is_capped_and_said(value, monkeypatch):
    monkeypatch.setattr(session_mod, "MAX_RETRY_WAIT", 0.2)
    monkeypatch.setattr(session_mod, "MAX_ATTEMPTS", 2)

    def handle(h):
        return (200, {}, b"{}") if h.path == "/v2/" else (429, {"Retry-After": value}, b"")

    with server(handle) as host:
        start = time.monotonic()
        with pytest.raises(RegistryError, match="429") as info:
            _get(host)
        assert time.monotonic() - start < 5
    if value == "999999":
        assert "retry after 999999 s" in str(info.value) and "at most 0.2 s" in str(info.value)


# -- challenges and URLs a registry gives ----------------------------------------------

def test_challenge_quoted_pairs_are_unescaped_and_parsing_is_linear():
    # RFC 9110 5.6.4: a backslash in a quoted-string escapes the next character
    scheme, params = parse_challenge(r'Bearer realm="https:\/\/auth.example\/token",service="a \"b\""')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": 'a "b"'}
    start = time.monotonic()
    for _ in range(3):
        parse_challenge("Bearer " + "a" * 16000)
    assert time.monotonic() - start < 0.5  # was ~1.4 s per header


def test_an_escaped_realm_gets_a_token():
    def handle(h):
        if h.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, b'{"token": "t"}'
        if h.path == "/v2/" or h.headers.get("Authorization") == "Bearer t":
            return 200, {}, b"{}"
        port = h.server.server_port
        return 401, {"WWW-Authenticate": f'Bearer realm="http:\\/\\/127.0.0.1:{port}\\/token"'}, b""

    with server(handle) as host:
        assert _get(host, retry=False) == 200


def test_urls_from_the_registry_that_are_no_urls_are_clear_errors():
    def handle(h):
        if h.path == "/v2/":
            return 200, {}, b"{}"
        return 401, {"WWW-Authenticate": 'Bearer realm="http://[::1",service="s"'}, b""

    with server(handle) as host:
        with pytest.raises(RegistryError, match="not a URL"):
            _get(host, retry=False)
        with RegistrySession(host) as s:  # an upload Location as push uses it
            with pytest.raises(RegistryError, match="invalid URL"):
                with s.request("PUT", "http://[::1/upload?digest=x", scope="repository:r:push", body=b""):
                    pass


# -- credential files ----------------------------------------------------------------

@pytest.mark.parametrize("decoded", [b"ghp_B4reT0kenValue", b":only-a-password"])
def test_an_auth_entry_that_is_not_user_colon_password_is_refused_unshown(decoded, tmp_path, monkeypatch):
    """docker refuses it ("invalid auth configuration file"); lamina took the whole
    secret for the user name, which error messages show."""
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"example.com": {"auth": base64.b64encode(decoded).decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    with pytest.raises(CredentialError) as info:
        find_credentials("example.com")
    secret = decoded.decode().strip(":")
    assert secret not in str(info.value) and str(path) in str(info.value)


def test_an_auth_file_that_is_a_fifo_is_an_error_not_a_hang(tmp_path, monkeypatch):
    fifo = tmp_path / "auth.json"
    os.mkfifo(fifo)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(fifo))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    result: list = []

    def look():
        try:
            result.append(find_credentials("example.com"))
        except BaseException as e:  # noqa: BLE001 - checked below
            result.append(e)

    t = threading.Thread(target=look, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # blocked opening the FIFO: a writer's open and close release it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail("reading a FIFO as REGISTRY_AUTH_FILE blocked")
    assert isinstance(result[0], CredentialError) and "not a regular file" in str(result[0])


def test_an_auth_file_that_is_a_symlink_to_a_regular_file_is_read(tmp_path, monkeypatch):
    """The control (podman and docker read through links): only the kind of the
    target counts."""
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"auths": {"example.com": {"auth": base64.b64encode(b"u:p").decode()}}}))
    (tmp_path / "link.json").symlink_to(real)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "link.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    assert find_credentials("example.com") == Credentials("u", "p")


# -- what a registry serves ----------------------------------------------------------

def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _one_layer_image() -> dict[str, bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("file")
        info.size = 2
        t.addfile(info, io.BytesIO(b"x\n"))
    tar = buf.getvalue()
    layer = gzip.compress(tar, mtime=0)
    me = host_platform()
    config = json.dumps({"architecture": me.architecture, "os": me.os,
                         "rootfs": {"type": "layers", "diff_ids": [_sha(tar)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": oci.OCI_CONFIG, "digest": _sha(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": _sha(layer), "size": len(layer)}]}).encode()
    return {"manifest": manifest, _sha(config): config, _sha(layer): layer}


@contextlib.contextmanager
def _serving(files: dict[str, tuple[str, bytes]], drip: str | None = None):
    """A registry serving /v2/r/{manifests,blobs}/<name> from `files`; the file named
    `drip` one byte every 0.05 s."""
    def handle(h):
        if h.path == "/v2/":
            return 200, {}, b"{}"
        name = h.path.rpartition("/")[2]
        if name not in files:
            return 404, {}, b""
        media_type, body = files[name]
        if name != drip:
            return 200, {"Content-Type": media_type}, body
        h.send_response(200)
        h.send_header("Content-Type", media_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            for i in range(len(body)):
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # lamina gave up
        return None

    with server(handle) as host:
        yield host


ATTESTATION = "attestation-manifest"


@pytest.mark.parametrize("case", ["platform list and number", "platform variant number",
                                  "annotations a list", "attestation layers strings", "entry a string"])
def test_index_entries_of_odd_types_do_not_break_a_pull(case, tmp_path):
    """choose_manifest and the attestation lookup read the registry's JSON: any type
    may stand anywhere. The image is pulled; unreadable attestations are left out."""
    image = _one_layer_image()
    files = {k: ("application/octet-stream", v) for k, v in image.items() if k != "manifest"}
    digest = _sha(image["manifest"])
    files[digest] = (oci.OCI_MANIFEST, image["manifest"])
    me = host_platform()
    good = {"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": len(image["manifest"]),
            "platform": {"os": me.os, "architecture": me.architecture}}
    if case == "platform list and number":
        entries = [{**good, "platform": {"os": ["linux"], "architecture": 5}}, good]
    elif case == "platform variant number":
        entries = [{**good, "platform": {**good["platform"], "variant": 7}}]
    elif case == "annotations a list":
        entries = [good, {**good, "annotations": ["not", "an", "object"]}]
    elif case == "attestation layers strings":
        att = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                          "config": good, "layers": ["not a descriptor"]}).encode()
        files[_sha(att)] = (oci.OCI_MANIFEST, att)
        entries = [good, {"mediaType": oci.OCI_MANIFEST, "digest": _sha(att), "size": len(att),
                          "annotations": {"vnd.docker.reference.type": ATTESTATION,
                                          "vnd.docker.reference.digest": digest}}]
    else:
        entries = ["just a string", good]
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries}).encode()
    files["1"] = (oci.OCI_INDEX, index)
    with _serving(files) as host, Store(tmp_path / "s") as store:
        pulled = pull_image(store, f"{host}/r:1")
        assert pulled.image.manifest_digest == digest


def test_a_manifest_dripping_byte_by_byte_is_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(session_mod, "SMALL_READ_SECONDS", 1.0, raising=False)
    image = _one_layer_image()
    files = {k: ("application/octet-stream", v) for k, v in image.items() if k != "manifest"}
    files["1"] = (oci.OCI_MANIFEST, image["manifest"])  # ~400 bytes: 20 s at this rate
    with _serving(files, drip="1") as host, Store(tmp_path / "s") as store:
        start = time.monotonic()
        with pytest.raises(StoreError, match="did not arrive within 1 s"):
            pull_image(store, f"{host}/r:1")
        assert time.monotonic() - start < 8
        assert store.images() == []


def test_a_mirror_url_with_credentials_is_refused_unshown(tmp_path, monkeypatch):
    """`https://user:password@mirror/` in the mirror list became the mirror's host
    name, which every error message (and the list of mirrors tried) printed."""
    monkeypatch.setenv("LAMINA_REGISTRY_MIRRORS", f"http://ci:{PASSWORD}@127.0.0.1:1/")
    with Store(tmp_path / "s") as store:
        with pytest.raises(StoreError) as info:
            pull_image(store, "busybox:latest")
        assert PASSWORD not in str(info.value) and "lamina login" in str(info.value)
        assert store.images() == []


def test_login_through_a_symlinked_auth_file_keeps_the_link(tmp_path, monkeypatch):
    """docker's config save resolves the symlink and writes its target; lamina replaced
    the link by a file of its own, leaving the linked file (a dotfiles checkout) stale
    and the two diverging."""
    from lamina.store.registry.auth import remove_credentials, store_credentials

    (tmp_path / "dotfiles").mkdir()
    real = tmp_path / "dotfiles" / "auth.json"
    real.write_text(json.dumps({"auths": {"other.example": {"auth": base64.b64encode(b"a:b").decode()}}}))
    link = tmp_path / "auth.json"
    link.symlink_to(real)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(link))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    store_credentials("example.com", Credentials("u", "p"))
    assert link.is_symlink()
    assert set(json.loads(real.read_text())["auths"]) == {"other.example", "example.com"}
    assert real.stat().st_mode & 0o777 == 0o600
    assert remove_credentials("example.com") and link.is_symlink()
    assert set(json.loads(real.read_text())["auths"]) == {"other.example"}


# -- error answers -------------------------------------------------------------------

@pytest.mark.parametrize("body", ["truncated", "endless", "long message"])
@pytest.mark.parametrize("status", [401, 404])
def test_an_error_answer_s_body_never_holds_or_breaks_lamina(status, body):
    """The body of a 401/404 was read whole: an endless one held lamina (and its
    memory) as long as the registry liked, a truncated one was an internal error
    (httpx's RemoteProtocolError), a long message went whole into the error."""
    def handle(h):
        if h.path == "/v2/":
            return 200, {}, b"{}"
        if body == "long message":
            words = json.dumps({"errors": [{"code": "DENIED", "message": "z" * 60000}]}).encode()
            return status, {"WWW-Authenticate": 'Basic realm="r"'}, words
        h.send_response(status)
        h.send_header("WWW-Authenticate", 'Basic realm="r"')
        h.close_connection = True
        if body == "truncated":
            h.send_header("Content-Length", "100")
            h.end_headers()
            h.wfile.write(b"x" * 10)
            return None
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        start = time.monotonic()
        try:
            while time.monotonic() - start < 20:
                h.wfile.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
                time.sleep(0.01)
        except OSError:
            pass  # lamina hung up
        return None

    with server(handle) as host:
        start = time.monotonic()
        with pytest.raises(RegistryError) as info:
            _get(host, retry=False)
        assert time.monotonic() - start < 5
    assert str(status) in str(info.value) or "refused the credentials" in str(info.value)
    assert len(str(info.value)) < 1000


@pytest.mark.parametrize("drops", [1, 99])
def test_a_manifest_whose_connection_drops_is_retried_then_a_clear_error(drops, tmp_path, monkeypatch):
    """A manifest body cut short (Content-Length 100, 10 bytes, closed) was httpx's
    RemoteProtocolError raised raw (an internal error), and never retried: issue 8
    retries dropped connections."""
    monkeypatch.setattr(session_mod, "MAX_ATTEMPTS", 3)
    image = _one_layer_image()
    files = {k: ("application/octet-stream", v) for k, v in image.items() if k != "manifest"}
    files["1"] = (oci.OCI_MANIFEST, image["manifest"])
    served = []

    def handle(h):
        if h.path == "/v2/":
            return 200, {}, b"{}"
        name = h.path.rpartition("/")[2]
        if name == "1":
            served.append(name)
            if len(served) <= drops:
                h.send_response(200)
                h.send_header("Content-Type", oci.OCI_MANIFEST)
                h.send_header("Content-Length", str(len(image["manifest"])))
                h.end_headers()
                h.wfile.write(image["manifest"][:10])
                h.close_connection = True
                return None
        media_type, data = files[name]
        return 200, {"Content-Type": media_type}, data

    with server(handle) as host, Store(tmp_path / "s") as store:
        if drops == 1:
            assert pull_image(store, f"{host}/r:1").manifest_digest == _sha(image["manifest"])
        else:
            with pytest.raises(RegistryError, match="connection broke"):
                pull_image(store, f"{host}/r:1")
            assert len(served) == 3 and store.images() == []


def test_a_manifest_with_a_false_content_encoding_is_a_clear_error(tmp_path):
    """`Content-Encoding: gzip` on bytes that are not gzip was httpx's DecodingError
    raised raw (an internal error)."""
    def handle(h):
        if h.path == "/v2/":
            return 200, {}, b"{}"
        return 200, {"Content-Type": oci.OCI_MANIFEST, "Content-Encoding": "gzip"}, b"not gzip at all"

    with server(handle) as host, Store(tmp_path / "s") as store:
        with pytest.raises(RegistryError, match="manifest r:1: cannot be read"):
            pull_image(store, f"{host}/r:1")
        assert store.images() == []
