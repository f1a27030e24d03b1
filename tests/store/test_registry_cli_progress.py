"""The registry commands as a CI job sees them, against a real docker-registry on
loopback: per-layer progress lines of `lamina push` / `lamina pull` when stderr is
no terminal (each layer named, with its size as the registry's manifest gives it),
and the global `--registry-mirror` (docker.io names pulled through a mirror; the
flag replaces $LAMINA_REGISTRY_MIRRORS)."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.builder.buildkit import lamina
from tests.conftest import require_tool
from tests.store.registryfix import free_port, registry, store_with_app

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def source_store(tmp_path_factory):
    # two RUN layers over busybox's: several layers, one of them over 1 MB
    return store_with_app(tmp_path_factory.mktemp("src"),
                          "FROM bb\nRUN echo hello > /greeting\n"
                          "RUN head -c 3000000 /dev/urandom > /big\n")


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def _manifest(ref: str) -> dict:
    """The image manifest the registry serves (skopeo), the image entry of an index."""
    skopeo = require_tool("skopeo")

    def raw(r):
        out = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{r}"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    doc = raw(ref)
    if "manifests" in doc:
        (entry,) = [m for m in doc["manifests"]
                    if "vnd.docker.reference.type" not in (m.get("annotations") or {})]
        doc = raw(f"{ref.rsplit(':', 1)[0]}@{entry['digest']}")
    return doc


LINE = re.compile(r"^(layer (\d+)/(\d+)|config): (pushed|downloaded) (\d+\.\d) MB(?: \((\d+\.\d) MB/s\))?$")


def _progress(stderr: str, verb: str) -> dict[str, str]:
    """{"layer 1/3": "1.0", ...} from the plain progress lines of `verb`."""
    out = {}
    for line in stderr.splitlines():
        m = LINE.match(line)
        if m and m.group(4) == verb:
            assert m.group(1) not in out, f"{m.group(1)} reported twice:\n{stderr}"
            out[m.group(1)] = m.group(5)
    return out


def test_push_and_pull_print_one_line_per_layer(source_store, plain_registry, tmp_path):
    dest = f"{plain_registry}/progress/app:1"
    pushed = lamina(source_store, "push", "app:1", dest)
    assert pushed.code == 0, pushed.stderr
    assert "\r" not in pushed.stderr and "\x1b" not in pushed.stderr  # no terminal: plain lines
    manifest = _manifest(dest)
    layers = manifest["layers"]
    assert len(layers) >= 3
    expected = {f"layer {i + 1}/{len(layers)}": f"{l['size'] / 1e6:.1f}" for i, l in enumerate(layers)}
    shown = _progress(pushed.stderr, "pushed")
    assert {k: v for k, v in shown.items() if k.startswith("layer")} == expected, pushed.stderr
    assert shown["config"] == f"{manifest['config']['size'] / 1e6:.1f}"
    assert max(float(v) for v in expected.values()) >= 1.0  # a real transfer, not only empties

    pulled = lamina(tmp_path / "fresh", "pull", dest)
    assert pulled.code == 0, pulled.stderr
    assert "\r" not in pulled.stderr and "\x1b" not in pulled.stderr
    assert _progress(pulled.stderr, "downloaded") == expected, pulled.stderr


def test_registry_mirror_flag(source_store, plain_registry, tmp_path, monkeypatch):
    """`--registry-mirror` serves docker.io names from the mirror (Docker Hub is not
    reachable here); given, it replaces $LAMINA_REGISTRY_MIRRORS, and the environment
    is as before once the command is done."""
    assert lamina(source_store, "push", "app:1", f"{plain_registry}/library/mirrored:1").code == 0
    monkeypatch.delenv("LAMINA_REGISTRY_MIRRORS", raising=False)
    fresh = tmp_path / "fresh"
    pulled = lamina(fresh, "--registry-mirror", f"http://{plain_registry}/", "pull", "mirrored:1")
    assert pulled.code == 0, pulled.stderr
    ids = [json.loads(lamina(root, "inspect", ref).stdout)[0]["Id"]
           for root, ref in ((fresh, "docker.io/library/mirrored:1"), (source_store, "app:1"))]
    assert ids[0] == ids[1]
    assert "LAMINA_REGISTRY_MIRRORS" not in os.environ

    # the flag wins over the environment: a dead mirror on the command line, the
    # working one only in the environment -> not pulled from the environment's
    monkeypatch.setenv("LAMINA_REGISTRY_MIRRORS", plain_registry)
    dead = f"127.0.0.1:{free_port()}"
    other = lamina(tmp_path / "other", "--registry-mirror", dead, "pull", "mirrored:1")
    assert other.code != 0
    assert "Traceback" not in other.stderr
    assert os.environ["LAMINA_REGISTRY_MIRRORS"] == plain_registry
    again = lamina(tmp_path / "other", "pull", "mirrored:1")  # the environment alone: pulled
    assert again.code == 0, again.stderr

    secret = lamina(tmp_path / "x", "--registry-mirror", "http://u:hunter2@mirror.example", "pull", "m:1")
    assert secret.code != 0 and "hunter2" not in secret.stderr + secret.stdout


class _SlowRelay:
    """TCP relay to the registry that sends its answers at `rate` bytes/s per
    connection: transfers last long enough for a terminal view to redraw."""

    def __init__(self, upstream: str, rate: int) -> None:
        import socket
        import threading

        self.upstream = upstream
        self.rate = rate
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src, dst, slow: bool) -> None:
        import time

        try:
            while data := src.recv(16384):
                dst.sendall(data)
                if slow:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def _screen(raw: str) -> tuple[list[str], int]:
    """What a terminal shows after `raw` (lines; the codes a progress view writes:
    CSI n F, CSI [2] K, CR, LF), and the most lines with a rate shown at once."""
    lines: list[str] = []
    row, col0, most = 0, True, 0
    for token in re.findall(r"\x1b\[(\d*)([A-Za-z])|(\r)|(\n)|([^\x1b\r\n]+)", raw):
        n, code, cr, lf, text = token
        if code == "F":
            row -= int(n or 1)
        elif code == "K":
            if row < len(lines):
                lines[row] = ""
        elif cr:
            col0 = True
        elif lf:
            row += 1
        elif text:
            while len(lines) <= row:
                lines.append("")
            lines[row] = text if col0 else lines[row] + text
            col0 = False
            most = max(most, sum("MB/s" in line for line in lines))
    return [line for line in lines if line], most


def test_terminal_view_keeps_one_live_line_per_layer(source_store, plain_registry, tmp_path):
    """On a terminal (a pty here), parallel downloads each keep their own line with
    bytes and rate while they run, and the screen ends with one finished line per
    blob - not one shared line that the last writer wins."""
    import pty
    import threading

    from tests.builder.buildkit import lamina_argv

    dest = f"{plain_registry}/tty/app:1"
    assert lamina(source_store, "push", "app:1", dest).code == 0
    manifest = _manifest(dest)
    relay = _SlowRelay(plain_registry, rate=2_000_000)
    try:
        master, slave = pty.openpty()
        proc = subprocess.Popen(lamina_argv(tmp_path / "fresh", "pull", f"{relay.host}/tty/app:1"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        chunks: list[bytes] = []

        def read() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the pty's other end is closed
                    return
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert proc.wait(timeout=120) == 0
        reader.join(10)
        os.close(master)
    finally:
        relay.close()
    shown, live = _screen(b"".join(chunks).decode())
    assert live >= 2, "parallel downloads never had a live line each (bytes and rate)"
    layers = manifest["layers"]
    expected = {f"layer {i + 1}/{len(layers)}: downloaded {l['size'] / 1e6:.1f} MB"
                for i, l in enumerate(layers)}  # (a pull reports its layers, as docker pull)
    finished = [line for line in shown if ": downloaded " in line]
    assert sorted(finished) == sorted(expected), shown
