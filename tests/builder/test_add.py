"""ADD mechanics (builder.steps.add): archives by content, hostile archives, URLs from a
loopback http.server (checksums), git repositories (a local repo via file://).

Expected behaviour: the Dockerfile reference ("ADD") and BuildKit's unpack / http /
git sources, as cited in the module docstring of builder.steps.add."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from tests.conftest import require_tool
import zstandard

from lamina.builder.context.context import BuildContext
from lamina.builder.context.statcache import StatCache
from lamina.builder.context.copysrc import select_sources
from lamina.builder.context.dockerignore import IgnoreRules
from lamina.builder.errors import BuildError
from lamina.builder.steps.add import (add_git, add_local, add_url, extract_archive, fetch_git,
                               fetch_identified, fetch_identified_git, fetch_url, identify_git,
                               identify_url, is_archive, parse_git_source, url_filename)
from lamina.builder.steps.url import URLIdentity, load_record


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, *,
           mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: int = 1_600_000_000,
           linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = linkname
    if kind == tarfile.REGTYPE:
        data = data or b""
        info.size = len(data)
    return info, data


SAMPLE = [
    member("app", tarfile.DIRTYPE, mode=0o750, uid=1001, gid=1002, mtime=1_500_000_000),
    member("app/run.sh", data=b"#!/bin/sh\n", mode=0o755, uid=1001, gid=1002),
    member("app/link", tarfile.SYMTYPE, linkname="run.sh"),
    member("app/hard", tarfile.LNKTYPE, linkname="app/run.sh", mode=0o755, uid=1001, gid=1002),
    member("app/.wh.hidden", data=b"not a whiteout"),
]


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gz":
        import gzip
        return gzip.compress(data)
    if kind == "bz2":
        import bz2
        return bz2.compress(data)
    if kind == "xz":
        import lzma
        return lzma.compress(data)
    if kind == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def ctx_tree(d: Path) -> BuildContext:
    return BuildContext(d, IgnoreRules(), StatCache())


@pytest.fixture
def env(tmp_path: Path):
    ctx, root, sentinel = tmp_path / "ctx", tmp_path / "root", tmp_path / "sentinel"
    for d in (ctx, root / "srv", sentinel):
        d.mkdir(parents=True)
    (sentinel / "keep").write_text("keep")
    return ctx, root, sentinel


def snapshot(d: Path) -> list[tuple[str, int, int]]:
    return sorted((os.path.relpath(os.path.join(p, n), d), os.lstat(os.path.join(p, n)).st_mode,
                   os.lstat(os.path.join(p, n)).st_mtime_ns)
                  for p, ds, fs in os.walk(d) for n in ds + fs)


# -- local archives -----------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("kind", ["tar", "gz", "bz2", "xz", "zst"])
def test_local_archive_extracted_by_content(env, kind):
    ctx, root, _ = env
    (ctx / f"data.{kind}.bin").write_bytes(compress(kind, tar_bytes(SAMPLE)))  # name says nothing
    assert is_archive(ctx / f"data.{kind}.bin")
    add_local(root, select_sources(ctx_tree(ctx), [f"data.{kind}.bin"]), "/opt")
    app = root / "opt" / "app"
    assert (app / "run.sh").read_bytes() == b"#!/bin/sh\n"
    s = os.lstat(app / "run.sh")
    assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o755, 1001, 1002)  # from the archive
    assert s.st_mtime_ns == 1_600_000_000 * 10**9
    assert os.lstat(app).st_mtime_ns == 1_500_000_000 * 10**9
    assert stat.S_IMODE(os.lstat(app).st_mode) == 0o750
    assert os.readlink(app / "link") == "run.sh"
    assert os.lstat(app / "hard").st_ino == s.st_ino
    # docker's ADD does not interpret whiteouts: the file is extracted as it is named
    assert (app / ".wh.hidden").read_bytes() == b"not a whiteout"
    assert stat.S_IMODE(os.lstat(root / "opt").st_mode) == 0o755


@pytest.mark.root
def test_chown_overrides_archive_owner_and_chmod_does_not_apply(env):
    ctx, root, _ = env
    (ctx / "a.tar.gz").write_bytes(compress("gz", tar_bytes(SAMPLE)))
    add_local(root, select_sources(ctx_tree(ctx), ["a.tar.gz"]), "/x/", chown=(7, 8), chmod="600")
    s = os.lstat(root / "x" / "app" / "run.sh")
    assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (7, 8, 0o755)
    assert (os.lstat(root / "x").st_uid, os.lstat(root / "x").st_gid) == (7, 8)


def test_non_archives_and_unpack_false_are_copied(env):
    ctx, root, _ = env
    (ctx / "fake.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    (ctx / "zeros.tar").write_bytes(bytes(1024))  # only an end-of-archive marker: no header
    (ctx / "real.tar").write_bytes(tar_bytes(SAMPLE))
    assert not is_archive(ctx / "fake.tar.gz") and not is_archive(ctx / "zeros.tar")
    add_local(root, select_sources(ctx_tree(ctx), ["fake.tar.gz", "zeros.tar"]), "/d/")
    assert (root / "d" / "fake.tar.gz").read_bytes() == b"\x1f\x8b not really gzip"
    assert (root / "d" / "zeros.tar").stat().st_size == 1024
    add_local(root, select_sources(ctx_tree(ctx), ["real.tar"]), "/keep/", unpack=False)
    assert (root / "keep" / "real.tar").read_bytes() == tar_bytes(SAMPLE)


def test_archive_follows_symlinks_inside_the_extraction_root(env):
    ctx, root, _ = env
    (root / "opt" / "usr" / "lib").mkdir(parents=True)
    os.symlink("/usr/lib", root / "opt" / "lib")  # absolute: re-rooted at the destination
    (ctx / "l.tar").write_bytes(tar_bytes([member("lib/libx.so", data=b"x")]))
    add_local(root, select_sources(ctx_tree(ctx), ["l.tar"]), "/opt")
    assert (root / "opt" / "usr" / "lib" / "libx.so").read_bytes() == b"x"
    assert os.readlink(root / "opt" / "lib") == "/usr/lib"


@pytest.mark.parametrize("members,error", [
    ([member("../evil", data=b"x")], "outside the extraction root"),
    ([member("a/../../evil", data=b"x")], "outside the extraction root"),
    ([member("x", data=b"x"), member("h", tarfile.LNKTYPE, linkname="../../x")],
     "outside the extraction root"),
    ([member("h", tarfile.LNKTYPE, linkname="/etc/passwd")], "hard link"),
    ([member("null", tarfile.CHRTYPE)], "device nodes"),
])
def test_hostile_archive_refused(env, members, error):
    ctx, root, sentinel = env
    before = snapshot(sentinel)
    (ctx / "h.tar").write_bytes(tar_bytes(members))
    with pytest.raises(BuildError, match=error):
        add_local(root, select_sources(ctx_tree(ctx), ["h.tar"]), "/srv/d")
    assert snapshot(sentinel) == before
    assert not (root.parent / "evil").exists()


def test_hostile_archive_symlinks_stay_inside(env):
    ctx, root, sentinel = env
    before = snapshot(sentinel)
    depth = "../" * 12
    members = [
        member("root", tarfile.SYMTYPE, linkname="/"),
        member("root/etc/pwned", data=b"1"),
        member("up", tarfile.SYMTYPE, linkname=depth),
        member("up/pwned2", data=b"2"),
        member("host", tarfile.SYMTYPE, linkname=str(sentinel)),
        member("/abs/file", data=b"4"),
        member("dirlink", tarfile.SYMTYPE, linkname=depth + str(sentinel).lstrip("/")),
        member("dirlink", tarfile.DIRTYPE, mode=0o777),
        member("dirlink/made", data=b"5"),
    ]
    (ctx / "h.tar").write_bytes(tar_bytes(members))
    add_local(root, select_sources(ctx_tree(ctx), ["h.tar"]), "/srv/d")
    d = root / "srv" / "d"
    assert (d / "etc" / "pwned").read_bytes() == b"1"
    assert (d / "pwned2").read_bytes() == b"2"
    assert (d / "abs" / "file").read_bytes() == b"4"
    # a directory member replaces the symlink of that name (not followed)
    assert not (d / "dirlink").is_symlink() and (d / "dirlink" / "made").read_bytes() == b"5"
    assert os.readlink(d / "host") == str(sentinel)
    assert snapshot(sentinel) == before
    assert (sentinel / "keep").read_text() == "keep"


@pytest.mark.parametrize("members", [
    # a symlink (of the archive or of the image) to a directory missing in the
    # extraction root: docker build (BuildKit v0.8) fails "Error processing tar file:
    # open /linkdir/inside: no such file or directory"; current go-archive the same
    # (createImpliedDirectories: the parent is Lstat'ed, the link exists, nothing made)
    [member("host", tarfile.SYMTYPE, linkname="/tmp/sentinel-elsewhere"),
     member("host/keep", data=b"3")],
    [member("rel", tarfile.SYMTYPE, linkname="missing/dir"), member("rel/deeper/f", data=b"3")],
    [member("image-link/inside", data=b"3")],
])
def test_archive_creates_nothing_inside_a_symlink_to_a_missing_dir(env, members):
    ctx, root, _ = env
    d = root / "srv" / "d"
    d.mkdir()
    os.symlink("/real", d / "image-link")   # /srv/d/real does not exist; /real does
    (root / "real").mkdir()
    (ctx / "h.tar").write_bytes(tar_bytes(members))
    with pytest.raises(BuildError, match="does not exist"):
        add_local(root, select_sources(ctx_tree(ctx), ["h.tar"]), "/srv/d")
    links = {m.name for m, _ in members if m.type == tarfile.SYMTYPE}
    assert sorted(p.name for p in d.iterdir()) == sorted({"image-link"} | links)
    assert list((root / "real").iterdir()) == []


def test_archive_dir_member_replaces_a_symlink_and_creates_through_links(env):
    ctx, root, _ = env
    d = root / "srv" / "d"
    (d / "sub").mkdir(parents=True)
    os.symlink("sub", d / "rel")
    os.symlink("sub", d / "dirlink")
    (ctx / "t.tar").write_bytes(tar_bytes([
        member("rel/new/deep/f", data=b"f"),          # missing dirs below an existing link
        member("dirlink", tarfile.DIRTYPE, mode=0o711),
        member("dirlink/y", data=b"y")]))
    add_local(root, select_sources(ctx_tree(ctx), ["t.tar"]), "/srv/d")
    assert (d / "sub" / "new" / "deep" / "f").read_bytes() == b"f"
    assert os.readlink(d / "rel") == "sub"
    assert not (d / "dirlink").is_symlink() and stat.S_IMODE(os.lstat(d / "dirlink").st_mode) == 0o711
    assert (d / "dirlink" / "y").read_bytes() == b"y" and not (d / "sub" / "y").exists()


def test_extract_replaces_existing_entries(env):
    ctx, root, _ = env
    (root / "e" / "was_dir" / "inner").mkdir(parents=True)
    (root / "e" / "was_file").write_text("old")
    arc = ctx / "r.tar"
    arc.write_bytes(tar_bytes([member("was_dir", data=b"now a file"),
                               member("was_file", tarfile.DIRTYPE, mode=0o755)]))
    extract_archive(root, arc, "/e")
    assert (root / "e" / "was_dir").read_bytes() == b"now a file"
    assert (root / "e" / "was_file").is_dir()


# -- URLs ---------------------------------------------------------------------------------

PAYLOAD = b"remote content\n"


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    archive = compress("gz", tar_bytes(SAMPLE[:2]))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = {"/files/tool.sh": PAYLOAD, "/": PAYLOAD, "/a.tgz": archive}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    t.join()


def test_url_fetched_and_added(env, server, tmp_path):
    _, root, _ = env
    good = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    f = fetch_url(server + "/files/tool.sh", tmp_path, checksum=good)
    assert (f.digest, f.filename, f.path.read_bytes()) == (good, "tool.sh", PAYLOAD)
    add_url(root, f, "/usr/bin/")
    p = root / "usr" / "bin" / "tool.sh"
    s = os.lstat(p)
    assert p.read_bytes() == PAYLOAD
    assert stat.S_IMODE(s.st_mode) == 0o600        # docker: remote files get mode 600
    assert s.st_mtime_ns == 1445412480 * 10**9      # Last-Modified
    add_url(root, f, "/t/renamed", chmod="755")
    assert stat.S_IMODE(os.lstat(root / "t" / "renamed").st_mode) == 0o755
    unnamed = fetch_url(server + "/", tmp_path)
    assert unnamed.filename == "__unnamed__"


def test_url_checksum_mismatch_and_errors(env, server, tmp_path):
    bad = "sha256:" + "0" * 64
    with pytest.raises(BuildError) as e:
        fetch_url(server + "/files/tool.sh", tmp_path, checksum=bad)
    assert bad in str(e.value) and hashlib.sha256(PAYLOAD).hexdigest() in str(e.value)
    with pytest.raises(BuildError, match="HTTP 404"):
        fetch_url(server + "/missing", tmp_path)
    with pytest.raises(BuildError, match="network access is disabled"):
        fetch_url(server + "/files/tool.sh", tmp_path, network=False)
    with pytest.raises(BuildError, match="invalid --checksum"):
        fetch_url(server + "/files/tool.sh", tmp_path, checksum="md5:abc")


def test_url_archive_not_unpacked_unless_asked(env, server, tmp_path):
    _, root, _ = env
    f = fetch_url(server + "/a.tgz", tmp_path)
    add_url(root, f, "/dl/")
    assert (root / "dl" / "a.tgz").is_file()        # remote archives are not decompressed
    add_url(root, f, "/ex/", unpack=True)            # ADD --unpack=true (Dockerfile 1.17)
    assert (root / "ex" / "app" / "run.sh").read_bytes() == b"#!/bin/sh\n"


@pytest.mark.parametrize("url,name", [
    ("https://example.com/a/b/file.tar.gz", "file.tar.gz"),
    ("https://example.com/dir/", "dir"),
    ("https://example.com", "__unnamed__"),
    ("https://example.com/", "__unnamed__"),
    ("https://example.com/x%20y?q=1#f", "x y"),
])
def test_url_filename(url, name):
    assert url_filename(url) == name


# -- git ----------------------------------------------------------------------------------

def test_parse_git_source():
    g = parse_git_source("https://github.com/moby/buildkit.git#v0.10.1:docs")
    assert (g.remote, g.ref, g.subdir) == ("https://github.com/moby/buildkit.git", "v0.10.1", "docs")
    g = parse_git_source("git@github.com:moby/buildkit.git#main")
    assert (g.remote, g.ref, g.subdir) == ("git@github.com:moby/buildkit.git", "main", "")
    g = parse_git_source("https://x.org/r.git##ref=main,subdir=a/b,commit=abc123")
    assert (g.ref, g.subdir, g.commit) == ("main", "a/b", "abc123")
    assert parse_git_source("https://example.com/file.tar.gz") is None  # needs .git
    assert parse_git_source("relative/path") is None
    assert parse_git_source("file:///srv/repo.git") is None            # never from a Dockerfile
    assert parse_git_source("file:///srv/repo", allow_file=True).remote == "file:///srv/repo"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    require_tool("git")
    r = tmp_path / "repo"
    r.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_COMMITTER_DATE": "1600000000 +0000",
           "GIT_AUTHOR_DATE": "1600000000 +0000"}

    def git(*args):
        subprocess.run(["git", *args], cwd=r, env=env, check=True, capture_output=True)
    git("init", "-q", "-b", "main")
    (r / "sub").mkdir()
    (r / "sub" / "hello.txt").write_text("v1\n")
    (r / "top.txt").write_text("top\n")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    git("tag", "v1")
    (r / "sub" / "hello.txt").write_text("v2\n")
    git("commit", "-q", "-am", "two")
    return r


@pytest.mark.parametrize("src", ["https://x.org/r.git#--upload-pack=touch /tmp/pwned",
                                 "https://x.org/r.git##ref=-c,subdir=a",
                                 "git@x.org:r.git##commit=--exec=x"])
def test_git_refs_that_git_would_read_as_options_are_refused(src):
    with pytest.raises(BuildError, match="cannot start with '-'"):
        parse_git_source(src)


def test_git_over_ssh_reads_no_ssh_config_of_the_user(tmp_path):
    """BuildKit's git source runs ssh with -F /dev/null: the invoking user's ssh config
    (aliases, ProxyCommand) plays no part in an ADD."""
    from lamina.builder.steps.git import _git_env

    argv = _git_env(tmp_path)["GIT_SSH_COMMAND"].split()
    assert argv[0] == "ssh" and argv[argv.index("-F") + 1] == "/dev/null"


def test_add_local_git_repo_at_ref_and_subdir(env, repo, tmp_path):
    _, root, _ = env
    src = parse_git_source(f"file://{repo}#v1:sub", allow_file=True)
    fetched = fetch_git(src, tmp_path, network=False)  # file:// needs no network
    add_git(root, fetched, "/code")
    assert (root / "code" / "hello.txt").read_text() == "v1\n"
    assert not (root / "code" / "top.txt").exists()
    assert os.lstat(root / "code" / "hello.txt").st_mtime_ns == 1_600_000_000 * 10**9
    head = parse_git_source(f"file://{repo}", allow_file=True)
    full = fetch_git(head, tmp_path, keep_git_dir=True)
    add_git(root, full, "/full/")
    assert (root / "full" / "sub" / "hello.txt").read_text() == "v2\n"
    assert (root / "full" / ".git").is_dir()
    assert full.commit != fetched.commit and len(full.commit) == 40
    with pytest.raises(BuildError, match="git fetch failed"):
        fetch_git(parse_git_source(f"file://{repo}#no-such-ref", allow_file=True), tmp_path)
    with pytest.raises(BuildError, match="network access is disabled"):
        fetch_git(parse_git_source("https://example.com/r.git"), tmp_path, network=False)


# -- identifying remote sources for the cache key (no clone, no download when avoidable) ---

def _rev_parse(repo: Path, name: str) -> str:
    """What git itself resolves `name` to in the repository (the oracle)."""
    return subprocess.run(["git", "rev-parse", "-q", "--verify", name + "^{commit}"], cwd=repo,
                          env={"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1",
                               "HOME": str(repo)},
                          check=True, capture_output=True, text=True).stdout.strip()


def test_identify_git_resolves_refs_like_git_without_cloning(repo, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "tag", "-a", "rel", "-m", "annotated", "HEAD~1"], cwd=repo, env=env,
                   check=True)
    # a branch and a tag of the same name: git prefers the tag (rev-parse order)
    subprocess.run(["git", "branch", "v1", "main"], cwd=repo, env=env, check=True)
    work = tmp_path / "work"
    work.mkdir()

    def ident(fragment: str):
        return identify_git(parse_git_source(f"file://{repo}{fragment}", allow_file=True), work)

    for fragment, name in (("", "HEAD"), ("#main", "main"), ("#rel", "rel"),
                           ("#refs/tags/v1", "refs/tags/v1"), ("#heads/v1", "heads/v1")):
        got = ident(fragment)
        assert got.commit == _rev_parse(repo, name), fragment
    assert ident("#v1").commit == _rev_parse(repo, "refs/tags/v1")
    # nothing was cloned: only the empty HOME directories of the ls-remote runs
    assert not list(work.glob("git-[0-9]*"))
    full = _rev_parse(repo, "v1")
    assert ident(f"#{full}").commit == full and ident(f"#{full}").ref == ""
    with pytest.raises(BuildError, match="abbreviated commit id"):
        ident(f"#{full[:10]}")
    with pytest.raises(BuildError, match="has no ref 'nope'"):
        ident("#nope")
    with pytest.raises(BuildError, match="not the expected"):
        ident(f"##ref=main,commit={full}")


def test_fetch_identified_git_is_at_the_identified_commit(repo, tmp_path):
    source = parse_git_source(f"file://{repo}#main:sub", allow_file=True)
    identity = identify_git(source, tmp_path)
    fetched = fetch_identified_git(identity, tmp_path)
    assert fetched.commit == identity.commit
    assert (fetched.path / "sub" / "hello.txt").read_text() == "v2\n"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "three"], cwd=repo, env=env,
                   check=True)
    with pytest.raises(BuildError, match="moved while building"):
        fetch_identified_git(identity, tmp_path)


def test_identify_url_with_checksum_records_and_validation(server, tmp_path):
    records = tmp_path / "records"
    url = server + "/files/tool.sh"
    good = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    pinned = identify_url(url, tmp_path, checksum=good, records_dir=records)
    assert (pinned.how, pinned.key, pinned.fetched) == ("checksum", good, None)
    assert not records.exists()  # no request was made, nothing recorded
    first = identify_url(url, tmp_path, records_dir=records)
    assert first.how == "downloaded" and first.fetched.digest == good
    record = load_record(records, url)
    assert (record.digest, record.last_modified, record.size) == (
        good, "Wed, 21 Oct 2015 07:28:00 GMT", len(PAYLOAD))
    assert record.mtime_ns == 1445412480 * 10**9
    assert [p.name for p in records.iterdir()] == [hashlib.sha256(url.encode()).hexdigest() + ".json"]
    # this server answers HEAD with 501 and ignores If-Modified-Since: downloaded again
    second = identify_url(url, tmp_path, records_dir=records)
    assert second.how == "downloaded" and second.key == first.key
    # a damaged record is ignored
    next(records.iterdir()).write_text("{not json")
    assert load_record(records, url) is None
    assert identify_url(url, tmp_path, records_dir=records).how == "downloaded"
    # what identifying downloaded is what a miss uses (no second download)
    assert fetch_identified(first, tmp_path) is first.fetched


def test_fetch_identified_url_must_be_what_was_keyed(server, tmp_path):
    url = server + "/files/tool.sh"
    good = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    mtime = 1445412480 * 10**9  # the server's Last-Modified
    keyed = URLIdentity(url=url, key="k", how="validated", digest=good, mtime_ns=mtime)
    assert fetch_identified(keyed, tmp_path).path.read_bytes() == PAYLOAD
    stale = URLIdentity(url=url, key="k", how="validated", digest="sha256:" + "0" * 64,
                        mtime_ns=mtime)
    with pytest.raises(BuildError, match="changed while building"):
        fetch_identified(stale, tmp_path)
    pinned = identify_url(url, tmp_path, checksum=good)
    assert fetch_identified(pinned, tmp_path).digest == good
