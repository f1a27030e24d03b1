"""Red team: `ADD <url>` served by a hostile web server.

- A redirect to `ftp://host:port/...` was followed by urllib (it allows http, https
  and ftp), so a server made lamina open an FTP session to any address - host
  loopback services included. Go's http client (BuildKit's http source) follows
  only http(s): such a redirect is an error, and nothing is contacted.
- A URL whose last path element decodes to a NUL (`%00`) gave a raw ValueError (an
  "internal error"); it is a BuildError naming the URL (BuildKit: EINVAL).
- Sound (kept): file:// and data: redirects are refused; `%2F..%2F` and `%2e%2e`
  never name a file outside the download dir.
"""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from lamina.builder.errors import BuildError
from lamina.builder.steps.url import fetch_url, identify_url


@pytest.fixture(scope="module")
def trap():
    """A TCP listener that records whether anyone connected (the FTP target)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.settimeout(0.2)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def server(trap):
    port = trap.getsockname()[1]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _redirect(self):
            where = {"/ftp": f"ftp://127.0.0.1:{port}/x", "/FTP": f"FTP://127.0.0.1:{port}/x",
                     "/file": "file:///etc/passwd", "/data": "data:,hello",
                     "/ok": "/plain"}.get(self.path)
            if where is None:
                body = b"plain"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)
                return
            self.send_response(302)
            self.send_header("Location", where)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _redirect

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _connected(trap) -> bool:
    try:
        conn, _ = trap.accept()
    except (TimeoutError, socket.timeout):
        return False
    conn.close()
    return True


@pytest.mark.parametrize("path", ["/ftp", "/FTP"])
def test_a_redirect_to_ftp_is_refused_and_contacts_nothing(server, trap, tmp_path, path):
    with pytest.raises(BuildError, match="not allowed"):
        fetch_url(server + path, tmp_path)
    with pytest.raises(BuildError, match="not allowed"):
        identify_url(server + path, tmp_path, records_dir=tmp_path / "records")
    assert not _connected(trap)


@pytest.mark.parametrize("path", ["/file", "/data"])
def test_redirects_to_other_schemes_are_refused(server, tmp_path, path):
    with pytest.raises(BuildError, match="not allowed"):
        fetch_url(server + path, tmp_path)


def test_a_redirect_to_http_is_followed(server, tmp_path):
    got = fetch_url(server + "/ok", tmp_path)
    assert got.path.read_bytes() == b"plain" and got.filename == "ok"


def test_a_nul_in_the_url_file_name_is_a_build_error(server, tmp_path):
    with pytest.raises(BuildError, match="NUL"):
        fetch_url(server + "/a%00b", tmp_path)
    with pytest.raises(BuildError, match="NUL"):
        identify_url(server + "/a%00b", tmp_path)


@pytest.mark.parametrize("path,name", [("/x%2F..%2F..%2Fetc", "etc"), ("/%2e%2e", "__unnamed__")])
def test_encoded_climbs_stay_in_the_download_dir(server, tmp_path, path, name):
    got = fetch_url(server + path, tmp_path)
    assert got.filename == name
    assert got.path.parent.parent == tmp_path
