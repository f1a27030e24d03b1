"""The build context walk and the persistent stat cache (builder/context.py)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import time

import pytest

from lamina.builder.context.context import BuildContext, SourceTree
from lamina.builder.context.statcache import StatCache
from lamina.builder.context.dockerignore import IgnoreRules
from lamina.builder.errors import BuildError

SETTLE = 0.12  # > StatCache's default racy window (50 ms): entries become trustworthy


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tree(root, files: dict[str, bytes | str]):
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        p.write_bytes(content)


@pytest.fixture
def ctx_dir(tmp_path):
    root = tmp_path / "ctx"
    make_tree(root, {
        "Dockerfile": "FROM scratch\n",
        "app/main.py": "print('hi')\n",
        "app/util.py": "x = 1\n",
        "docs/guide.md": "# guide\n",
        "docs/api/README.md": "api\n",
        "node_modules/pkg/index.js": "module.exports = 1\n",
    })
    (root / "empty").mkdir()
    os.symlink("/etc", root / "etc-link")
    os.symlink("app/main.py", root / "main-link")
    return root


def paths(entries):
    return [e.path for e in entries]


def open_ctx(root, rules_text="", cache_dir=None, **kw):
    return BuildContext(root, IgnoreRules.parse(rules_text), StatCache(cache_dir, **kw))


# -- walking --------------------------------------------------------------------------

def test_walk_lists_everything_sorted_with_types(ctx_dir):
    entries = open_ctx(ctx_dir).entries()
    assert paths(entries) == [
        "Dockerfile", "app", "app/main.py", "app/util.py", "docs", "docs/api",
        "docs/api/README.md", "docs/guide.md", "empty", "etc-link", "main-link",
        "node_modules", "node_modules/pkg", "node_modules/pkg/index.js"]
    by = {e.path: e for e in entries}
    assert by["app"].kind == "dir" and by["app"].digest is None
    assert by["app/main.py"].kind == "file"
    assert by["app/main.py"].digest == sha(b"print('hi')\n")
    assert by["app/main.py"].size == len(b"print('hi')\n")
    assert by["main-link"].kind == "symlink" and by["main-link"].link_target == "app/main.py"
    assert by["main-link"].digest is None


def test_symlink_out_of_context_is_an_entry_never_followed(ctx_dir):
    entries = open_ctx(ctx_dir).entries()
    link = [e for e in entries if e.path == "etc-link"][0]
    assert link.kind == "symlink" and link.link_target == "/etc"
    assert not any(p.startswith("etc-link/") for p in paths(entries))
    assert not any("passwd" in p for p in paths(entries))


def test_modes_and_owners_are_reported(ctx_dir):
    os.chmod(ctx_dir / "app/main.py", 0o4751)
    if os.geteuid() == 0:
        os.chown(ctx_dir / "app/util.py", 1234, 5678)
    by = {e.path: e for e in open_ctx(ctx_dir).entries()}
    assert by["app/main.py"].mode == 0o4751
    if os.geteuid() == 0:
        assert (by["app/util.py"].uid, by["app/util.py"].gid) == (1234, 5678)


def test_dockerignore_filters_the_walk(ctx_dir):
    # docs: "*.md" is anchored at the context root (no "**/"), so docs/guide.md stays
    entries = open_ctx(ctx_dir, "node_modules\n*.md\n!docs/api/README.md\nDockerfile\n").entries()
    assert paths(entries) == [
        "app", "app/main.py", "app/util.py", "docs", "docs/api", "docs/api/README.md",
        "docs/guide.md", "empty", "etc-link", "main-link"]
    entries = open_ctx(ctx_dir, "**/*.md\n!docs/api/README.md\n").entries()
    assert [p for p in paths(entries) if p.endswith(".md")] == ["docs/api/README.md"]


def test_exception_under_excluded_dir_brings_the_dir_back(ctx_dir):
    # docs: "docs" excluded, "!docs/api/README.md" re-included: the walker must descend
    entries = open_ctx(ctx_dir, "docs\n!docs/api/README.md\n").entries()
    got = [p for p in paths(entries) if p.startswith("docs")]
    assert got == ["docs", "docs/api", "docs/api/README.md"]


def test_wildcard_exception_under_excluded_dir(ctx_dir):
    # the docker/cli#2919 case: "!**/*.py" must reach files under an excluded dir
    entries = open_ctx(ctx_dir, "*\n!**/*.py\n").entries()
    assert paths(entries) == ["app", "app/main.py", "app/util.py"]


def test_excluded_dir_is_not_entered_without_exceptions(ctx_dir, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, *a, **kw):
        opened.append(os.fspath(path))
        return real_open(path, flags, *a, **kw)
    monkeypatch.setattr(os, "open", spy)
    open_ctx(ctx_dir, "node_modules\n").entries()
    assert "node_modules" not in opened and "pkg" not in opened


def test_fifo_is_listed_not_read(ctx_dir):
    os.mkfifo(ctx_dir / "pipe")
    by = {e.path: e for e in open_ctx(ctx_dir).entries()}
    assert by["pipe"].kind == "fifo" and by["pipe"].digest is None


def test_children_and_entry(ctx_dir):
    ctx = open_ctx(ctx_dir, "docs\n!docs/api/README.md\n")
    assert paths(ctx.children("")) == [
        "Dockerfile", "app", "docs", "empty", "etc-link", "main-link", "node_modules"]
    assert paths(ctx.children("docs")) == ["docs/api"]
    assert ctx.entry("docs/guide.md") is None
    assert ctx.entry("docs/api/README.md").digest == sha(b"api\n")
    assert ctx.entry("/../app/../app/util.py").path == "app/util.py"  # clamped inside
    assert ctx.entry("main-link/x") is None  # never walks through a symlink


def test_root_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BuildError, match="not a directory"):
        SourceTree(tmp_path / "f")
    with pytest.raises(BuildError):
        SourceTree(tmp_path / "missing")


# -- stat cache -----------------------------------------------------------------------

def test_unchanged_context_hashes_nothing_across_processes(ctx_dir, tmp_path):
    cache_dir = tmp_path / "statcache"
    time.sleep(SETTLE)
    first = open_ctx(ctx_dir, cache_dir=cache_dir)
    e1 = first.entries()
    assert first.stat_cache.files_hashed == 6
    first.stat_cache.close()
    # a new StatCache object on the same directory = the next build
    again = open_ctx(ctx_dir, cache_dir=cache_dir)
    assert again.entries() == e1
    assert again.stat_cache.files_hashed == 0
    assert (cache_dir / "statcache.db").exists()


def test_content_change_rehashes_exactly_that_file(ctx_dir, tmp_path):
    cache_dir = tmp_path / "statcache"
    time.sleep(SETTLE)
    c = open_ctx(ctx_dir, cache_dir=cache_dir)
    c.entries()
    c.stat_cache.close()
    (ctx_dir / "app/util.py").write_text("x = 2222\n")
    time.sleep(SETTLE)
    c = open_ctx(ctx_dir, cache_dir=cache_dir)
    by = {e.path: e for e in c.entries()}
    assert c.stat_cache.files_hashed == 1
    assert by["app/util.py"].digest == sha(b"x = 2222\n")


def test_mtime_only_change_rereads_same_digest(ctx_dir, tmp_path):
    cache_dir = tmp_path / "statcache"
    time.sleep(SETTLE)
    c = open_ctx(ctx_dir, cache_dir=cache_dir)
    before = {e.path: e.digest for e in c.entries()}
    c.stat_cache.close()
    os.utime(ctx_dir / "app/main.py")  # touch
    c = open_ctx(ctx_dir, cache_dir=cache_dir)
    after = {e.path: e.digest for e in c.entries()}
    assert c.stat_cache.files_hashed == 1
    assert after == before  # the digest never depends on times


def test_same_size_change_with_restored_mtime_is_caught_by_ctime(ctx_dir, tmp_path):
    cache_dir = tmp_path / "statcache"
    target = ctx_dir / "app/main.py"
    time.sleep(SETTLE)
    c = open_ctx(ctx_dir, cache_dir=cache_dir)
    c.entries()
    c.stat_cache.close()
    st = os.stat(target)
    target.write_text("print('HI')\n")  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(target)
    assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    c = open_ctx(ctx_dir, cache_dir=cache_dir)
    by = {e.path: e for e in c.entries()}
    assert c.stat_cache.files_hashed == 1
    assert by["app/main.py"].digest == sha(b"print('HI')\n")


def test_racy_entry_is_not_trusted(tmp_path):
    """A file hashed in the same timestamp tick as its last change may change again
    without its stat changing: such an entry must be re-read, never trusted."""
    root = tmp_path / "ctx"
    make_tree(root, {"f": "aaaa"})
    cache = StatCache(tmp_path / "sc", racy_window_ns=10**12)  # everything is "racy"
    ctx = BuildContext(root, IgnoreRules(), cache)
    assert ctx.digest("f") == sha(b"aaaa")
    st = os.stat(root / "f")
    (root / "f").write_text("bbbb")
    os.utime(root / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ctx.digest("f") == sha(b"bbbb")
    assert cache.files_hashed == 2
    assert ctx.digest("f") == sha(b"bbbb") and cache.files_hashed == 3  # still racy: re-read


def test_in_memory_cache_without_directory(ctx_dir):
    time.sleep(SETTLE)
    c = open_ctx(ctx_dir)
    c.entries()
    n = c.stat_cache.files_hashed
    c.entries()
    assert n == 6 and c.stat_cache.files_hashed == 6


def test_corrupt_database_is_replaced(ctx_dir, tmp_path):
    cache_dir = tmp_path / "statcache"
    cache_dir.mkdir()
    (cache_dir / "statcache.db").write_bytes(b"this is not sqlite" * 100)
    c = open_ctx(ctx_dir, cache_dir=cache_dir)
    assert len(c.entries()) == 14
    c.stat_cache.close()
    db = sqlite3.connect(cache_dir / "statcache.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 6


def _hash_worker(root, cache_dir, rounds, q):
    try:
        out = []
        for _ in range(rounds):
            c = BuildContext(root, IgnoreRules(), StatCache(cache_dir, batch=7))
            out.append(tuple((e.path, e.digest) for e in c.entries()))
            c.stat_cache.close()
        q.put(("ok", out))
    except BaseException as e:  # report, never hang the parent
        q.put(("err", repr(e)))


def test_concurrent_builds_share_the_cache_safely(tmp_path):
    root = tmp_path / "ctx"
    make_tree(root, {f"d{i}/f{j}": f"{i}-{j}\n" * (j + 1) for i in range(5) for j in range(20)})
    cache_dir = tmp_path / "statcache"
    time.sleep(SETTLE)
    mp = multiprocessing.get_context("fork")
    q = mp.Queue()
    procs = [mp.Process(target=_hash_worker, args=(root, cache_dir, 3, q)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r[0] == "ok" for r in results), results
    expected = tuple(sorted(
        [(f"d{i}", None) for i in range(5)]
        + [(f"d{i}/f{j}", sha((f"{i}-{j}\n" * (j + 1)).encode())) for i in range(5) for j in range(20)]))
    for _, rounds in results:
        for listing in rounds:
            assert tuple(sorted(listing, key=lambda t: t[0])) == tuple(sorted(expected))
    db = sqlite3.connect(cache_dir / "statcache.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 100
    # and a later build reads nothing
    c = BuildContext(root, IgnoreRules(), StatCache(cache_dir))
    c.entries()
    assert c.stat_cache.files_hashed == 0


def test_open_uses_dockerfile_specific_ignore_and_statcache_dir(ctx_dir, tmp_path):
    (ctx_dir / "build.Dockerfile").write_text("FROM scratch\n")
    (ctx_dir / "build.Dockerfile.dockerignore").write_text("app\n")
    (ctx_dir / ".dockerignore").write_text("docs\n")
    c = BuildContext.open(ctx_dir, ctx_dir / "build.Dockerfile", tmp_path / "root/cache/statcache")
    ps = paths(c.entries())
    assert "app/main.py" not in ps and "docs/guide.md" in ps
    assert (tmp_path / "root/cache/statcache/statcache.db").exists()


# -- differential: buildah (a real peer implementation of .dockerignore) -------------

_DIFF_FILES = ["a.md", "b.txt", "docs/api/README.md", "docs/guide.md", "docs/x/y/z.py",
               "app/a.py", "app/sub/b.py", "node_modules/p/i.js", "node_modules/p/keep.md",
               ".git/config", "tempa", "dir/temp1/f", "dir/sub/temporary", "x[1]", "sp ace/f",
               "deep/a/b/c/d.go"]
_DIFF_SAME = [
    "docs\n!docs/api/README.md\n", "*.md\n!README*.md\n", "**/*.md\n",
    "*/temp*\n*/*/temp*\ntemp?\n", "node_modules\n!node_modules/p/keep.md\n", ".*\n",
    "*\n!app\napp/sub\n", "deep/**\n!deep/a/b\n", "**\n!app/sub/*.py\n", "x\\[1\\]\n",
    "app/\n!app/sub/\n", "*/*\n", "**/b*\n", "dir\n!dir/temp1\ndir/temp1/f\n", "/app\n",
    "*\n!deep/a\n",
]
# buildah 1.28 only descends into an excluded directory when an exception pattern's
# text starts with that directory (the docker/cli#2919 prefix check); BuildKit's
# walker descends whenever exceptions exist. lamina follows BuildKit: it finds more.
_DIFF_BUILDAH_PREFIX_BUG = ["*\n!**/*.py\n", "*\n!deep/*/b\n"]


def _buildah_context_files(tmp_path, ctx_dir, n):
    import subprocess
    from tests.conftest import require_tool
    buildah = require_tool("buildah")
    df = tmp_path / f"Dockerfile{n}"
    df.write_text("FROM scratch\nCOPY . /ctx/\n")
    out = tmp_path / f"out{n}"
    # vfs storage: buildah mounts nothing, so nothing can outlive the test
    r = subprocess.run([buildah, "--root", str(tmp_path / "store"), "--runroot",
                        str(tmp_path / "run"), "--storage-driver", "vfs", "bud", "--isolation", "chroot", "-f", str(df),
                        "-o", f"type=local,dest={out}", str(ctx_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = out / "ctx"
    return sorted(str(p.relative_to(got)) for p in got.rglob("*")) if got.exists() else []


@pytest.mark.root
@pytest.mark.interop
@pytest.mark.parametrize("n,rules", list(enumerate(_DIFF_SAME + _DIFF_BUILDAH_PREFIX_BUG)))
def test_same_files_as_buildah(tmp_path, n, rules):
    ctx_dir = tmp_path / "ctx"
    make_tree(ctx_dir, {f: f for f in _DIFF_FILES})
    (ctx_dir / "emptydir").mkdir()
    (ctx_dir / ".dockerignore").write_text(rules)
    theirs = _buildah_context_files(tmp_path, ctx_dir, n)
    ours = paths(open_ctx(ctx_dir, rules).entries())
    if rules in _DIFF_SAME:
        assert ours == theirs
    else:
        assert set(theirs) < set(ours)
        assert all(IgnoreRules.parse(rules).excluded(p.split("/")[0]) for p in set(ours) - set(theirs))
