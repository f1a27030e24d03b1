"""A real OCI registry on loopback for tests: Debian's `docker-registry`
(github.com/docker/distribution), started on a free port with a config of its own
(plain HTTP, or htpasswd basic auth), stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import require_tool


def store_with_app(base: Path, dockerfile: str) -> Path:
    """A store under `base` with the busybox base `bb` and the image `app:1` built
    from `dockerfile` on it (for tests that push something real)."""
    from tests.builder.buildkit import build, make_base, make_context

    root = base / "store"
    make_base(root, base / "base")
    build(root, make_context(base / "app", dockerfile), "-t", "app:1").check()
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def registry(workdir: Path, *, htpasswd: str | None = None, tls: dict | None = None,
             token: "TokenService | None" = None, bind: str = "127.0.0.1"):
    """Yields "BIND:PORT" of a fresh registry storing under `workdir`: plain
    HTTP, or with htpasswd basic auth, TLS (`make_pki` files; with `clientcas`, a CA
    file, clients must present a certificate it signed: `client_cert`/`client_key`
    are the one the start-up probe presents) or token auth."""
    binary = require_tool("docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ""
    if htpasswd is not None:
        (workdir / "htpasswd").write_text(htpasswd)
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {workdir / 'htpasswd'}\n"
    if token is not None:
        auth = (f"auth:\n  token:\n    realm: {token.realm}\n    service: test-registry\n"
                f"    issuer: test-issuer\n    rootcertbundle: {token.bundle}\n")
    tls_conf = f"  tls:\n    certificate: {tls['cert']}\n    key: {tls['key']}\n" if tls else ""
    if tls and tls.get("clientcas"):
        tls_conf += f"    clientcas:\n      - {tls['clientcas']}\n"
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {bind}:{port}\n" + tls_conf + auth)
    log = open(workdir / "registry.log", "wb")
    # the registry reads REGISTRY_* variables as config overrides (REGISTRY_AUTH_FILE
    # of a test would become its auth section): start it without them
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    host = f"{bind}:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if tls:
                    ctx = ssl.create_default_context(cafile=str(tls["ca"]))
                    if tls.get("client_cert"):
                        ctx.load_cert_chain(str(tls["client_cert"]), str(tls["client_key"]))
                    httpx.get(f"https://{host}/v2/", timeout=1, verify=ctx)
                else:
                    httpx.get(f"http://{host}/v2/", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not start: "
                                       + (workdir / "registry.log").read_text()[-2000:])
                time.sleep(0.1)
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line (the registry accepts only bcrypt)."""
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"


# -- TLS and token auth -------------------------------------------------------------

def make_pki(workdir: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    workdir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lamina test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    srv_key = key()
    srv = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
           .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                          critical=False)
           .sign(ca_key, hashes.SHA256()))
    out = {"ca": workdir / "ca.crt", "cert": workdir / "server.crt", "key": workdir / "server.key"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["cert"].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(pem_key(srv_key))
    return out


class TokenService:
    """A bearer-token service as the registry's `auth: token` expects: checks basic
    credentials, issues an RS256 JWT (x5c header, the signing certificate in the
    registry's rootcertbundle) granting the asked scopes (one `scope` parameter each), but
    never an (action, repository) of `denied`. Counts the tokens issued, keeps the scopes asked."""

    def __init__(self, workdir: Path, user: str, password: str) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.user, self.password = user, password
        self.issued = 0
        self.scopes: list[list[str]] = []  # the scope parameters of each token request
        self.denied: set[tuple[str, str]] = set()  # (action, repository) never granted
        self.lifetime = 300  # the expires_in of each token answer, in seconds
        # True: the JWT's exp is set so that the registry (which allows 60 s of clock
        # skew past exp) refuses a token `lifetime` seconds after it was issued
        self.exact_expiry = False
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        workdir.mkdir(parents=True, exist_ok=True)
        self.bundle = workdir / "token-signer.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._der = self.cert.public_bytes(serialization.Encoding.DER)
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def token(self, scope: str | None) -> str:
        import base64
        import json as _json

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for one in (scope or "").split():  # several scopes: space-separated
            kind, name, actions = one.split(":", 2) if one.count(":") >= 2 else (one, "", "")
            granted = [a for a in actions.split(",") if a and (a, name) not in self.denied]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._der).decode()]}
        claims = {"iss": "test-issuer", "sub": self.user, "aud": "test-registry", "exp": now + self.lifetime - (60 if self.exact_expiry else 0),
                  "nbf": now - 10, "iat": now, "jti": f"t{self.issued}", "access": access}
        signing = b64(_json.dumps(header).encode()) + "." + b64(_json.dumps(claims).encode())
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        self.issued += 1
        return signing + "." + b64(sig)

    @contextlib.contextmanager
    def serving(self):
        import base64
        import http.server
        import json as _json
        import threading
        import urllib.parse

        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                want = "Basic " + base64.b64encode(f"{service.user}:{service.password}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.end_headers()
                    return
                q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                service.scopes.append(q.get("scope") or [])
                body = _json.dumps({"token": service.token(" ".join(q.get("scope") or []) or None),
                                    "expires_in": service.lifetime}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
