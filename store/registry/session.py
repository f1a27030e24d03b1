"""One authenticated HTTP session with one registry (OCI distribution spec v1.1).

    session = RegistrySession("localhost:5000")
    with session.request("GET", "/v2/app/manifests/1.0", scope="repository:app:pull",
                         headers={...}, stream=True) as resp: ...

What it does for every request:
- scheme: HTTPS with the system CAs plus docker's per-registry
  ``/etc/docker/certs.d/HOST[:PORT]/`` (``ca.crt``/``*.crt`` CAs, ``client.cert`` +
  ``client.key``; see `certs_dirs` for the other places); plain HTTP only for loopback registries (``localhost``, 127.0.0.0/8,
  ``::1``) and those named insecure (``LAMINA_INSECURE_REGISTRIES=host:port,...`` or
  the caller's list) — tried after HTTPS fails, as docker does;
- auth: anonymous first; on a 401 challenge ``Basic`` (the stored credentials) or
  ``Bearer`` (token endpoint with service and scope, with the stored credentials
  when there are any; the token reused per scope until it expires);
- retries with back-off on connection errors, 5xx and 429 (honouring
  ``Retry-After``), for requests whose body can be sent again;
- redirects followed (blob storage URLs), at most 10, credentials never sent to
  another host: not in the redirected request, nor to the token service a 401 from
  that other host names; never to a plain-HTTP token service of an HTTPS registry;
  no secret in any error message;
- small documents (tokens, manifests, configs) read with a size cap and within
  `SMALL_READ_SECONDS` (`read_small`): a registry dripping bytes cannot stall a build.

Imports only lamina.store.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import httpx

from lamina.store.errors import StoreError
from lamina.store.registry.auth import Credentials, find_credentials

SYSTEM_CERTS_DIRS = (Path("/etc/docker/certs.d"), Path("/etc/containers/certs.d"))


def certs_dirs() -> tuple[Path, ...]:
    """Where per-registry certificates are looked up: ``$LAMINA_CERTS_D`` (dirs
    separated by ``:``), the user's ``~/.config/containers/certs.d``, then docker's and
    containers' system dirs."""
    extra = tuple(Path(d) for d in os.environ.get("LAMINA_CERTS_D", "").split(":") if d)
    return extra + (Path.home() / ".config" / "containers" / "certs.d",) + SYSTEM_CERTS_DIRS
MAX_ATTEMPTS = 5
MAX_RETRY_WAIT = 30.0          # the longest wait between attempts, whatever Retry-After asks
MAX_TOKEN_BYTES = 1 << 20      # a token answer (a JWT is a few kB)
SMALL_READ_SECONDS = 300.0     # the longest a token, manifest or config may take to arrive
MAX_ERROR_BODY = 64 << 10      # an error answer's body read for its message, at most
ERROR_BODY_SECONDS = 10.0
MAX_ERROR_DETAIL = 500         # characters of the registry's own words in an error
# RFC 6750's b64token, widened to any visible ASCII: what can go into a header as is
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
USER_AGENT = "lamina/0.1"


class RegistryError(StoreError):
    """A registry refused, failed or sent something lamina cannot accept."""

    def __init__(self, message: str, *, status: int | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.status = status


class Unauthorized(RegistryError):
    """The registry wants credentials lamina does not have, or refused them."""


def api_host(host: str) -> str:
    """The host that serves the API: Docker Hub's is not docker.io."""
    return "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host


def is_loopback(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1:name.index("]")]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def repo_scope(path: str, actions: str = "pull") -> str:
    """The token scope of `actions` ("pull", "pull,push") on repository `path`."""
    return f"repository:{path}:{actions}"


def insecure_registries() -> tuple[str, ...]:
    raw = os.environ.get("LAMINA_INSECURE_REGISTRIES", "")
    return tuple(h.strip() for h in raw.split(",") if h.strip())


BUNDLE = "ca-certificates.crt"  # update-ca-certificates' bundle of the hashed directory


def _system_trust() -> ssl.SSLContext:
    """A verifying client context with the system's CAs, as ssl.create_default_context
    makes it, except that where OpenSSL's certificate directory is hashed (Debian's
    /etc/ssl/certs) it is named as a directory: OpenSSL then reads only the certificates
    a handshake asks for, where loading the whole bundle costs ~20 ms of every command
    that opens a session (a plain-HTTP registry on loopback included)."""
    paths = ssl.get_default_verify_paths()
    capath = paths.capath
    try:
        hashed = bool(capath) and any(name.endswith(".0") for name in os.listdir(capath))
    except OSError:
        hashed = False
    if not hashed:
        return ssl.create_default_context()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname check and CERT_REQUIRED
    ctx.load_verify_locations(capath=capath)
    cafile = os.environ.get(paths.openssl_cafile_env) and paths.cafile  # SSL_CERT_FILE
    if cafile and os.path.realpath(cafile) != os.path.realpath(os.path.join(capath, BUNDLE)):
        ctx.load_verify_locations(cafile=cafile)  # (not the directory's own bundle again)
    return ctx


def _ssl_context(host: str) -> ssl.SSLContext:
    ctx = _system_trust()
    for base in certs_dirs():
        d = base / host.replace("[", "").replace("]", "")
        if not d.is_dir():
            continue
        for ca in sorted(d.glob("*.crt")):
            ctx.load_verify_locations(cafile=str(ca))
        cert, key = d / "client.cert", d / "client.key"
        if cert.is_file() and key.is_file():
            ctx.load_cert_chain(str(cert), str(key))
    return ctx


# TLS alerts of a server that refuses the client's certificate, or wants one
_CLIENT_CERT_ALERT = re.compile(r"ALERT_(BAD_CERTIFICATE|CERTIFICATE_REQUIRED|UNKNOWN_CA|"
                                r"CERTIFICATE_UNKNOWN)")
# (?<!\w): a parameter name starts a word (linear time on a long header without '=')
_CHALLENGE_PARAM = re.compile(r'(?<!\w)(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth",service="reg",scope="x"` -> ("bearer", {...});
    quoted values unescaped (RFC 9110 quoted-pair: `\\/` is `/`)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (_QUOTED_PAIR.sub(r"\1", m.group(2)) if m.group(2) is not None
                                   else m.group(3))
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def read_small(resp: httpx.Response, limit: int, what: str, *,
               seconds: float | None = None) -> bytes:
    """The body of streamed `resp`, which must be at most `limit` bytes and arrive
    within `seconds` (default SMALL_READ_SECONDS); RegistryError naming `what` else."""
    seconds = SMALL_READ_SECONDS if seconds is None else seconds
    declared = resp.headers.get("content-length") or "0"
    if declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"{what} is {int(declared)} bytes (more than the {_size(limit)} allowed)")
    deadline = time.monotonic() + seconds
    data = bytearray()
    for chunk in resp.iter_bytes():
        data += chunk
        if len(data) > limit:
            raise RegistryError(f"{what} is larger than {_size(limit)}")
        if time.monotonic() > deadline:
            raise RegistryError(f"{what} did not arrive within {seconds:g} s "
                                f"({len(data)} bytes came): the registry is too slow or stalling")
    return bytes(data)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"


@dataclass
class _Token:
    value: str
    expires: float


class RegistrySession:
    """HTTP to one registry host (``host[:port]`` as in an image reference)."""

    def __init__(self, host: str, *, insecure: tuple[str, ...] = (),
                 credentials: Credentials | None | Callable[[], Credentials | None] = None,
                 timeout: float = 60.0) -> None:
        self.host = host
        self.api = api_host(host)
        self.plain_allowed = is_loopback(self.api) or host in insecure or host in insecure_registries()
        self._creds_source = credentials
        self._creds_loaded = not callable(credentials) and credentials is not None
        self._creds = credentials if self._creds_loaded else None
        self._scheme: str | None = None
        self._basic = False
        self._tokens: dict[str, _Token] = {}
        self._challenge: tuple[str, dict[str, str]] | None = None
        try:
            verify = _ssl_context(self.api)
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(f"cannot load the TLS certificates for {host}: {e}") from None
        self._client = httpx.Client(verify=verify, timeout=httpx.Timeout(timeout, connect=15.0),
                                    follow_redirects=True, max_redirects=10,
                                    headers={"User-Agent": USER_AGENT})

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RegistrySession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- credentials ---------------------------------------------------------------

    def credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            src = self._creds_source
            self._creds = src() if callable(src) else find_credentials(self.host)
            self._creds_loaded = True
        return self._creds

    # -- scheme --------------------------------------------------------------------

    def base_url(self) -> str:
        if self._scheme is None:
            self._scheme = self._probe_scheme()
        return f"{self._scheme}://{self.api}"

    def _probe_scheme(self) -> str:
        try:
            self._client.get(f"https://{self.api}/v2/", timeout=10.0)
            return "https"
        except (httpx.ConnectError, httpx.ConnectTimeout, ssl.SSLError) as e:
            self._refuse_client_cert_alert(e)
            if "CERTIFICATE_VERIFY_FAILED" in str(e) or "certificate verify failed" in str(e):
                # it speaks TLS with a certificate we do not trust: never fall back to
                # plain HTTP (that would hide a man in the middle)
                raise RegistryError(
                    f"registry {self.host} presents a TLS certificate that is not trusted "
                    f"({_reason(e)}): put its CA in /etc/docker/certs.d/{self.api}/ca.crt") from None
            if not self.plain_allowed:
                hint = ""
                if "WRONG_VERSION_NUMBER" in str(e):  # what a plain-HTTP server answers
                    hint = (" (it seems to speak plain HTTP: if the network to it can be trusted, "
                            "name it in LAMINA_INSECURE_REGISTRIES)")
                raise RegistryError(f"cannot reach registry {self.host} over HTTPS: {_reason(e)}{hint}") from None
        except httpx.HTTPError as e:
            self._refuse_client_cert_alert(e)
            if not self.plain_allowed:
                raise RegistryError(f"cannot reach registry {self.host}: {_reason(e)}") from None
        try:
            self._client.get(f"http://{self.api}/v2/", timeout=10.0)
        except httpx.HTTPError as e:
            raise RegistryError(f"cannot reach registry {self.host} (HTTPS, then HTTP): {_reason(e)}") from None
        return "http"

    def _refuse_client_cert_alert(self, e: BaseException) -> None:
        """A TLS alert saying the registry wants a client certificate (it refused ours or
        got none, during the handshake with TLS 1.2, at the first read with 1.3): one
        clear error, never the plain-HTTP fall-back (its TLS port would answer 400)."""
        if _CLIENT_CERT_ALERT.search(str(e)):
            places = ", ".join(f"{d}/{self.api}/" for d in certs_dirs())
            raise RegistryError(f"registry {self.host} requires a client certificate it trusts "
                                f"({_reason(e)}): lamina presents client.cert + client.key "
                                f"from the first of {places} that has them") from None

    # -- auth ----------------------------------------------------------------------

    def _auth_header(self, scope: str) -> str | None:
        tok = self._tokens.get(scope)
        if tok is not None and tok.expires > time.time() + 5:
            return "Bearer " + tok.value
        if self._basic and self.credentials() is not None:
            return self.credentials().basic_header()
        return None

    def _answer_challenge(self, resp: httpx.Response, scope: str, sent: str | None) -> None:
        """Set up auth after a 401 to a request sent with Authorization `sent`; raises
        Unauthorized when there is nothing more to try. (Requests run in parallel
        threads: a 401 to a request sent before auth was set up is not a refusal.)"""
        header = resp.headers.get("www-authenticate")
        if not header:
            raise Unauthorized(f"registry {self.host} refused the request (401) without saying how "
                               "to authenticate", status=401)
        scheme, params = parse_challenge(header)
        creds = self.credentials()
        if scheme == "basic":
            if creds is None or (sent or "").startswith("Basic "):
                raise Unauthorized(self._denied(creds), status=401)
            self._basic = True
            return
        if scheme == "bearer":
            if (sent or "").startswith("Bearer "):
                current = self._tokens.get(scope)
                if current is not None and sent != "Bearer " + current.value:
                    return  # another thread already fetched a newer token
                # (a token the registry calls invalid_token has expired there, whatever
                # its expires_in said, e.g. clocks apart: a new one is fetched, once)
                if (current is not None and current.expires > time.time() + 5
                        and params.get("error") != "invalid_token"):
                    raise Unauthorized(self._denied(creds), status=401)
            self._tokens[scope] = self._fetch_token(params, scope, creds)
            return
        raise Unauthorized(f"registry {self.host} asks for unsupported authentication {scheme!r}", status=401)

    def _denied(self, creds: Credentials | None) -> str:
        if creds is None:
            return (f"registry {self.host} requires authentication: run `lamina login {self.host}`")
        return f"registry {self.host} refused the credentials of user {creds.username!r}"

    def _fetch_token(self, params: Mapping[str, str], scope: str, creds: Credentials | None) -> _Token:
        realm = params.get("realm")
        if not realm:
            raise Unauthorized(f"registry {self.host}: bearer challenge without a realm", status=401)
        # several scopes (a mount: push here, pull there) go as one `scope` parameter each
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in scope.split()]
        try:
            target = httpx.URL(realm)
        except httpx.InvalidURL as e:
            raise RegistryError(f"registry {self.host}: its auth service realm is not a URL "
                                f"({_reason(e)})") from None
        if creds and target.scheme == "http" and self.base_url().startswith("https:"):
            # the registry speaks TLS: its credentials never travel in clear text
            raise RegistryError(f"registry {self.host} speaks HTTPS but names a plain-HTTP auth "
                                f"service (http://{target.netloc.decode()}): lamina does not send "
                                "its credentials there")
        headers = {"Authorization": creds.basic_header()} if creds else {}
        try:
            with self._client.stream("GET", target, params=query, headers=headers) as resp:
                if resp.status_code in (401, 403):
                    raise Unauthorized(self._denied(creds), status=resp.status_code)
                if resp.status_code != 200:
                    raise RegistryError(f"the auth service of {self.host} answered {resp.status_code}",
                                        status=resp.status_code)
                raw = read_small(resp, MAX_TOKEN_BYTES, f"the token answer of the auth service of {self.host}")
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise RegistryError(f"cannot get a token for {self.host} from its auth service: "
                                f"{self._redacted(_reason(e))}") from None
        try:
            body = json.loads(raw)
            value = body.get("token") or body["access_token"]
            expires_in = float(body.get("expires_in") or 60)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(f"the auth service of {self.host} sent no token") from None
        if not isinstance(value, str) or not _TOKEN_CHARS.fullmatch(value):
            # never shown: it is a credential, however malformed
            raise RegistryError(f"the auth service of {self.host} sent a token that cannot go into "
                                "an HTTP header (not a string of visible ASCII characters)")
        if not math.isfinite(expires_in):
            expires_in = 60
        return _Token(value, time.time() + max(expires_in, 10))

    # -- requests ------------------------------------------------------------------

    @contextlib.contextmanager
    def request(self, method: str, path: str, *, scope: str,
                headers: Mapping[str, str] | None = None,
                body: Callable[[], object] | bytes | None = None,
                params: Mapping[str, str] | None = None,
                ok: tuple[int, ...] = (200,), retry: bool = True) -> Iterator[httpx.Response]:
        """Send a request (path absolute on the registry, or a full URL the registry
        gave, e.g. an upload location); yields the streamed response whose status is
        in `ok`. `body` is bytes or a callable giving a fresh body per attempt."""
        attempts = MAX_ATTEMPTS if retry else 1
        auth_rounds = 0
        attempt = 0
        while True:
            attempt += 1
            url = path if path.startswith(("http://", "https://")) else self.base_url() + path
            h = dict(headers or {})
            # credentials go only to the registry itself: a Location it hands out (an
            # upload URL) may name another host, which must not get them
            try:
                same = self._same_origin(url)
            except httpx.InvalidURL as e:  # an upload Location the registry gave
                raise RegistryError(f"registry {self.host}: {method} {_where(path)}: invalid URL "
                                    f"({_reason(e)})") from None
            auth = self._auth_header(scope) if same else None
            if auth:
                h["Authorization"] = auth
            content = body() if callable(body) else body
            try:
                req = self._client.build_request(method, url, headers=h, content=content, params=params)
                resp = self._client.send(req, stream=True)
            except httpx.TooManyRedirects:
                raise RegistryError(f"registry {self.host}: too many redirects for {method} {_where(path)}") from None
            except httpx.InvalidURL as e:  # a Location the registry gave that is no URL
                raise RegistryError(f"registry {self.host}: {method} {_where(path)}: invalid URL "
                                    f"({self._redacted(_reason(e))})") from None
            except httpx.HTTPError as e:
                if attempt < attempts:
                    _sleep(attempt, None)
                    continue
                raise RegistryError(f"registry {self.host}: {method} {_where(path)} failed: "
                                    f"{self._redacted(_reason(e))}") from None
            try:
                if resp.status_code == 401 and not self._same_origin(str(resp.url)):
                    # a redirect target (blob storage) asks for credentials: the registry's
                    # are not for it, nor for the token service it would name
                    raise Unauthorized(f"registry {self.host}: {method} {_where(path)} was redirected "
                                       f"to {resp.url.host}, which asks for credentials (401); lamina "
                                       "sends the registry's credentials only to the registry", status=401)
                if resp.status_code == 401 and auth_rounds < 2:
                    auth_rounds += 1
                    _error_body(resp)  # (only its headers count)
                    resp.close()
                    self._answer_challenge(resp, scope, auth)
                    attempt -= 1
                    continue
                if (resp.status_code >= 500 or resp.status_code == 429) and attempt < attempts:
                    wait = resp.headers.get("retry-after")
                    resp.close()
                    _sleep(attempt, wait)
                    continue
                if resp.status_code not in ok:
                    error = self.error_for(resp, method, path)
                    asked = _retry_after(resp.headers.get("retry-after"))
                    if resp.status_code == 429 and asked is not None and asked > MAX_RETRY_WAIT:
                        error.message += (f" (it asked to retry after {asked:g} s; lamina waits at most "
                                          f"{MAX_RETRY_WAIT:g} s between its {attempts} attempts)")
                        error.args = (error.message,)
                    raise error
                yield resp
                return
            finally:
                resp.close()

    def get_small(self, path: str, *, scope: str, limit: int, what: str,
                  headers: Mapping[str, str] | None = None) -> tuple[bytes, httpx.Headers]:
        """(body, headers) of a GET of a small document (a manifest, a config): capped
        in size and time (`read_small`); a connection that drops while the body
        arrives is retried as `request` retries one that drops before."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.request("GET", path, scope=scope, headers=headers) as resp:
                    return read_small(resp, limit, what), resp.headers
            except httpx.TransportError as e:
                if attempt >= MAX_ATTEMPTS:
                    raise RegistryError(f"{what}: the connection broke while it arrived "
                                        f"({self._redacted(_reason(e))})") from None
                _sleep(attempt, None)
            except httpx.HTTPError as e:  # e.g. a Content-Encoding the body does not have
                raise RegistryError(f"{what}: cannot be read ({self._redacted(_reason(e))})") from None

    def _same_origin(self, url: str) -> bool:
        """Same scheme, host and port as the registry (never credentials to another
        host, nor over plain HTTP when the registry speaks HTTPS)."""
        a, b = httpx.URL(url), httpx.URL(self.base_url())
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def error_for(self, resp: httpx.Response, method: str, path: str) -> RegistryError:
        try:
            body = json.loads(_error_body(resp))
            errs = body.get("errors") or []
            detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errs[:3])
            if len(detail) > MAX_ERROR_DETAIL:
                detail = detail[:MAX_ERROR_DETAIL] + "..."
        except Exception:  # noqa: BLE001 - any non-JSON error body
            detail = ""
        cls = Unauthorized if resp.status_code in (401, 403) else RegistryError
        msg = f"registry {self.host}: {method} {_where(path)} answered {resp.status_code}"
        if resp.status_code == 401:
            msg = self._denied(self.credentials())
        return cls(msg + (f" ({self._redacted(detail)})" if detail else ""), status=resp.status_code)

    def _redacted(self, text: str) -> str:
        """`text` (words a registry sent back) with every credential this session sent
        replaced by `***`: a registry or proxy may echo the Authorization header."""
        creds = self._creds if self._creds_loaded else None
        secrets = [t.value for t in list(self._tokens.values())]
        if creds is not None:
            secrets += [creds.password, creds.basic_header().split(" ", 1)[1]]
        for secret in sorted((s for s in secrets if isinstance(s, str) and s), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def _error_body(resp: httpx.Response) -> bytes:
    """The body of an error answer, read only when it is small and comes quickly
    (b"" else): a registry's endless or broken error body must not hold lamina."""
    try:
        return read_small(resp, MAX_ERROR_BODY, "error", seconds=ERROR_BODY_SECONDS)
    except (RegistryError, httpx.HTTPError):
        return b""


def _where(path: str) -> str:
    """A path for an error message, without query strings (upload states, tokens)."""
    if path.startswith(("http://", "https://")):
        path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
    return path.split("?", 1)[0]


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


def _retry_after(value: str | None) -> float | None:
    """The seconds a Retry-After header asks for (its delay-seconds form), or None."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None  # an HTTP date, or garbage: the usual back-off
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _sleep(attempt: int, retry_after: str | None) -> None:
    wait = min(0.25 * 2 ** (attempt - 1), MAX_RETRY_WAIT)
    asked = _retry_after(retry_after)
    if asked is not None:
        wait = min(asked, MAX_RETRY_WAIT)
    time.sleep(wait)
