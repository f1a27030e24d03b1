"""`lamina build` with ADD of git repositories and URLs: a rebuild with nothing changed
does no work but hashing (DESIGN.md). A cached ADD git step runs `git ls-remote`
only (no init/fetch/clone: every git command is logged by a wrapper on PATH); a
cached ADD URL step makes no request with --checksum, one HEAD without (counted by
the test server); a changed source misses, naming the source, and lands in the
image. Expected behaviour: BuildKit's git and http sources (key by commit; by
checksum, or by the recorded digest when ETag / Last-Modified say unchanged)."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.builder.buildkit import build, build_rootfs, make_context
from tests.conftest import require_tool

pytestmark = pytest.mark.root


# --- a git repository, and every git command lamina runs ------------------------------------

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "GIT_CONFIG_NOSYSTEM": "1"}


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo.parent), "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def git_log(tmp_path, monkeypatch):
    """A `git` on PATH that logs each command line, then runs the real git."""
    real = require_tool("git")
    bindir = tmp_path / "wrapped-bin"
    bindir.mkdir()
    log = tmp_path / "git-commands.log"
    log.touch()
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def commands() -> list[str]:
        lines = log.read_text().splitlines()
        log.write_text("")
        return lines
    return commands


def _subcommands(lines: list[str]) -> list[str]:
    """The git subcommand of each logged command line (options like `-c x=y` skipped)."""
    out = []
    for line in lines:
        words = line.split()
        i = 0
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] == "-c" else 1
        out.append(words[i] if i < len(words) else "")
    return out


def test_add_git_is_keyed_by_ls_remote_and_cloned_only_on_a_miss(build_store, tmp_path, git_log):
    root, _ = build_store
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "f.txt").write_text("one\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    _git(repo, "tag", "-a", "v1", "-m", "annotated")  # peeled by ls-remote `v1^{}`
    first = _git(repo, "rev-parse", "HEAD")
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
ADD file://{repo}#v1 /tag/
ADD file://{repo}#{first} /sha/
ADD file://{repo}#main /branch/
""")
    git_log()  # forget the set-up's own commands
    # the --allow check comes before git touches the repository
    denied = build(root, ctx)
    assert denied.code != 0 and "--allow fs.read=" in denied.stderr
    assert git_log() == []

    allow = ("--allow", f"fs.read={repo}")
    build(root, ctx, *allow).check()
    assert "fetch" in _subcommands(git_log())

    again = build(root, ctx, *allow).check()
    for text in ("/tag/", "/sha/", "/branch/"):
        assert again.step(text).cached, again.stderr
    # a full commit id needs no lookup; the tag and the branch one ls-remote each
    assert _subcommands(git_log()) == ["ls-remote", "ls-remote"]

    (repo / "f.txt").write_text("two\n")
    _git(repo, "commit", "-q", "-am", "two")
    rootfs = tmp_path / "rootfs"
    changed = build_rootfs(root, ctx, rootfs, *allow)
    assert changed.step("/tag/").cached and changed.step("/sha/").cached
    branch = changed.step("/branch/")
    assert not branch.cached, changed.stderr
    assert f"source git:file://{repo}#main changed" in branch.miss, branch.miss
    assert _subcommands(git_log()).count("fetch") == 1  # only the branch is cloned
    assert (rootfs / "branch" / "f.txt").read_text() == "two\n"
    assert (rootfs / "tag" / "f.txt").read_text() == "one\n"
    assert (rootfs / "sha" / "f.txt").read_text() == "one\n"


# --- an http server that counts requests ----------------------------------------------------

@dataclass
class Served:
    """path -> (body, ETag or "", Last-Modified or ""); the request log; whether HEAD
    is refused (405, as some servers do)."""

    files: dict[str, tuple[bytes, str, str]] = field(default_factory=dict)
    # (method, path, status, body bytes sent)
    log: list[tuple[str, str, int, int]] = field(default_factory=list)
    refuse_head: bool = False

    def take_log(self) -> list[tuple[str, str, int, int]]:
        out, self.log = self.log, []
        return out


class _Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args):
        pass

    def do_HEAD(self):  # noqa: N802
        self._serve(with_body=False)

    def do_GET(self):  # noqa: N802
        self._serve(with_body=True)

    def _serve(self, with_body: bool) -> None:
        s = self.served
        method = "GET" if with_body else "HEAD"
        if not with_body and s.refuse_head:
            s.log.append((method, self.path, 405, 0))
            self.send_response(405)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in s.files:
            s.log.append((method, self.path, 404, 0))
            self.send_error(404)
            return
        body, etag, last_modified = s.files[self.path]
        inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
        # RFC 9110 13.2.2: If-None-Match, when sent, decides; else If-Modified-Since
        fresh = (inm == etag) if inm else (bool(ims) and ims == last_modified)
        if with_body and fresh and etag + last_modified:
            s.log.append((method, self.path, 304, 0))
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if etag:
            self.send_header("ETag", etag)
        if last_modified:
            self.send_header("Last-Modified", last_modified)
        self.end_headers()
        if with_body:
            self.wfile.write(body)
        s.log.append((method, self.path, 200, len(body) if with_body else 0))


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback, never through a proxy
    served = Served()
    handler = type("Handler", (_Handler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _http_date(epoch: int) -> str:
    return formatdate(epoch, usegmt=True)


def test_add_url_with_checksum_makes_no_request_on_a_hit(build_store, tmp_path, server):
    root, _ = build_store
    served, base = server
    body = b"pinned payload\n"
    served.files["/pinned.bin"] = (body, '"p1"', _http_date(1_500_000_000))
    digest = hashlib.sha256(body).hexdigest()
    ctx = make_context(tmp_path / "ctx",
                       f"FROM bb\nADD --checksum=sha256:{digest} {base}/pinned.bin /dl/\n")
    build(root, ctx).check()
    assert served.take_log() == [("GET", "/pinned.bin", 200, len(body))]
    rootfs = tmp_path / "rootfs"
    again = build_rootfs(root, ctx, rootfs)
    assert again.step("pinned.bin").cached
    assert served.take_log() == []
    assert (rootfs / "dl" / "pinned.bin").read_bytes() == body


@pytest.mark.parametrize("validator", ["etag", "last-modified", "head-refused"])
def test_add_url_revalidates_with_one_cheap_request(build_store, tmp_path, server, validator):
    """A hit costs a HEAD (or, where HEAD is refused, a conditional GET answered 304);
    a changed file misses, naming the URL, and its new content is in the image."""
    root, _ = build_store
    served, base = server
    served.refuse_head = validator == "head-refused"

    def publish(body: bytes, version: int) -> None:
        etag = f'"v{version}"' if validator == "etag" else ""
        last_modified = "" if validator == "etag" else _http_date(1_600_000_000 + version)
        served.files["/tool.txt"] = (body, etag, last_modified)

    publish(b"version one\n", 1)
    url = f"{base}/tool.txt"
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nADD {url} /dl/\n")
    build(root, ctx).check()
    assert served.take_log() == [("GET", "/tool.txt", 200, len(b"version one\n"))]

    again = build(root, ctx).check()
    assert again.step("tool.txt").cached, again.stderr
    if validator == "head-refused":
        assert served.take_log() == [("HEAD", "/tool.txt", 405, 0), ("GET", "/tool.txt", 304, 0)]
    else:
        assert served.take_log() == [("HEAD", "/tool.txt", 200, 0)]

    publish(b"version two, longer\n", 2)
    rootfs = tmp_path / "rootfs"
    changed = build_rootfs(root, ctx, rootfs)
    step = changed.step("tool.txt")
    assert not step.cached and f"source url:{url} changed" in step.miss, step.miss
    log = served.take_log()
    assert [entry for entry in log if entry[2] == 200 and entry[0] == "GET"] == [
        ("GET", "/tool.txt", 200, len(b"version two, longer\n"))]  # downloaded once
    assert (rootfs / "dl" / "tool.txt").read_bytes() == b"version two, longer\n"


def test_add_url_without_validators_downloads_but_stays_cached(build_store, tmp_path, server):
    root, _ = build_store
    served, base = server
    served.files["/plain.txt"] = (b"same bytes\n", "", "")
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nADD {base}/plain.txt /dl/\n")
    build(root, ctx).check()
    assert served.take_log() == [("GET", "/plain.txt", 200, 11)]
    again = build(root, ctx).check()
    assert again.step("plain.txt").cached
    assert served.take_log() == [("GET", "/plain.txt", 200, 11)]  # the only way to know
    served.files["/plain.txt"] = (b"other bytes\n", "", "")
    rootfs = tmp_path / "rootfs"
    changed = build_rootfs(root, ctx, rootfs)
    assert not changed.step("plain.txt").cached
    assert served.take_log() == [("GET", "/plain.txt", 200, 12)]  # not downloaded twice
    assert (rootfs / "dl" / "plain.txt").read_bytes() == b"other bytes\n"


def test_a_miss_for_another_reason_downloads_each_url_once(build_store, tmp_path, server):
    """A remote source that did not change, under a step that misses anyway (its
    parent changed): validated first, then downloaded once for the step."""
    root, _ = build_store
    served, base = server
    pinned, tool = b"pinned\n", b"tool\n"
    served.files["/pinned.bin"] = (pinned, "", "")
    served.files["/tool.txt"] = (tool, '"t1"', "")
    digest = hashlib.sha256(pinned).hexdigest()
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
COPY n.txt /n.txt
ADD --checksum=sha256:{digest} {base}/pinned.bin /pinned/
ADD {base}/tool.txt /dl/
""", {"n.txt": "1"})
    build(root, ctx).check()
    served.take_log()
    (ctx / "n.txt").write_text("2")
    rootfs = tmp_path / "rootfs"
    run = build_rootfs(root, ctx, rootfs)
    assert run.step("pinned.bin").miss == "previous step changed"
    assert served.take_log() == [("GET", "/pinned.bin", 200, len(pinned)),
                                 ("HEAD", "/tool.txt", 200, 0),
                                 ("GET", "/tool.txt", 200, len(tool))]
    assert (rootfs / "pinned" / "pinned.bin").read_bytes() == pinned
    assert (rootfs / "dl" / "tool.txt").read_bytes() == tool


def test_url_mtime_is_part_of_the_key(build_store, tmp_path, server, monkeypatch):
    """The Last-Modified time becomes the file's mtime in the layer: same bytes with
    another Last-Modified is another layer, so another key."""
    root, _ = build_store
    served, base = server
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "2000000000")  # later than both: times kept
    served.files["/t.txt"] = (b"bytes\n", "", _http_date(1_600_000_000))
    ctx = make_context(tmp_path / "ctx",
                       f"FROM bb\nADD {base}/t.txt /dl/\n")
    first = build(root, ctx).check()
    served.files["/t.txt"] = (b"bytes\n", "", _http_date(1_600_000_500))
    second = build(root, ctx).check()
    assert not second.step("t.txt").cached
    assert first.image_id != second.image_id
