"""Red-team: a registry (or a proxy in front of it) that echoes the request's
Authorization header in its error body - debugging middlewares and some proxies do.
store.registry.session put the registry's `errors[].message` into the error lamina
prints (CI logs keep it): the password (base64 of user:password under Basic) or the
bearer token was shown. store.registry.auth promises credentials are never shown: the
message keeps the registry's words, with every credential lamina sent replaced by `***`.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading

import pytest

from lamina.store.errors import StoreError
from lamina.store.registry.auth import Credentials
from lamina.store.registry.session import RegistrySession

PASSWORD = "hunter2-Pa55word"
TOKEN = "tok-4f9c2be1d7a0"


@pytest.fixture
def echoing_registry():
    """(host, state): GET /v2/r/manifests/<status> answers <status> with a JSON error
    body whose message echoes the Authorization header it got; the first request asks
    for Basic (state['scheme'] == 'basic') or for a bearer token from /token."""
    state = {"scheme": "basic"}

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _send(self, code, body=b"", headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            auth = self.headers.get("Authorization", "")
            port = self.server.server_port
            if self.path.startswith("/token"):
                ok = auth == Credentials("u", PASSWORD).basic_header()
                return self._send(200 if ok else 401, json.dumps({"token": TOKEN}).encode())
            if self.path == "/v2/":
                return self._send(200, b"{}")
            if not auth:
                challenge = ('Basic realm="r"' if state["scheme"] == "basic" else
                             f'Bearer realm="http://127.0.0.1:{port}/token",service="s"')
                return self._send(401, b"{}", [("WWW-Authenticate", challenge)])
            code = int(self.path.rpartition("/")[2])
            body = json.dumps({"errors": [{"code": "DENIED",
                                           "message": f"request with Authorization: {auth} "
                                                      f"(raw {auth.split(' ', 1)[-1]!r})"}]})
            self._send(code, body.encode(), [("Content-Type", "application/json")])

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_port}", state
    finally:
        srv.shutdown()
        srv.server_close()


def _error(host: str, status: int) -> str:
    session = RegistrySession(host, credentials=Credentials("u", PASSWORD))
    try:
        with pytest.raises(StoreError) as info:
            with session.request("GET", f"/v2/r/manifests/{status}", scope="repository:r:pull",
                                 retry=False):
                pass
    finally:
        session.close()
    return str(info.value)


@pytest.mark.parametrize("status", [403, 404, 500])
@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_an_echoed_authorization_never_reaches_the_error(echoing_registry, scheme, status):
    host, state = echoing_registry
    state["scheme"] = scheme
    message = _error(host, status)
    basic = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, basic, TOKEN):
        assert secret not in message
    # the registry's own words are still shown, its code too
    assert "DENIED" in message and "request with Authorization:" in message and str(status) in message
