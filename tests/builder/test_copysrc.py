"""COPY/ADD source selection, content keys and destinations (builder/copysrc.py).

Expected values come from the Dockerfile reference (COPY, COPY --parents,
COPY --exclude sections) and BuildKit's documented behaviour.
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.builder.context.context import BuildContext, SourceTree
from lamina.builder.context.statcache import StatCache
from lamina.builder.context.copysrc import content_key, plan_copy, resolve_in_tree, select_sources
from lamina.builder.context.dockerignore import IgnoreRules
from lamina.builder.errors import BuildError


def make_tree(root, files):
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


@pytest.fixture
def ctx_dir(tmp_path):
    root = tmp_path / "ctx"
    make_tree(root, {
        "a.txt": "A", "b.txt": "B", "home.txt": "H", "homer.md": "HM", "hom/x.txt": "HX",
        "hom/y.py": "HY", "src/a.txt": "SA", "src/x/b.txt": "SB", "src/x/y/c.txt": "SC",
        "src/x/y/d.py": "SD", "x/a.txt": "XA", "y/a.txt": "YA", "secret/key": "K",
        "ign/keep.txt": "KEEP", "ign/drop.txt": "DROP",
    })
    os.symlink("src/x", root / "link-dir")
    os.symlink("a.txt", root / "link-file")
    os.symlink("/etc/passwd", root / "link-abs")
    os.symlink("../../../../../../etc/passwd", root / "link-up")
    os.symlink("y/c.txt", root / "src/x/rel-link")
    return root


def ctx(root, rules="secret\nign\n!ign/keep.txt\n"):
    return BuildContext(root, IgnoreRules.parse(rules), StatCache())


def dests(selection, dest="/dst/", workdir="/", is_dir=lambda p: False):
    return [(a.kind, a.dest) for a in plan_copy(selection, dest, workdir, is_dir)]


# -- selection ------------------------------------------------------------------------

def test_single_file(ctx_dir):
    sel = select_sources(ctx(ctx_dir), ["a.txt"])
    (src,) = sel.sources
    assert (src.kind, src.name, src.path) == ("file", "a.txt", "a.txt")
    assert src.entries[0].digest.startswith("sha256:") and src.entries[0].rel == ""
    assert src.entries[0].abs_path == str(ctx_dir / "a.txt")


def test_directory_means_its_content(ctx_dir):
    sel = select_sources(ctx(ctx_dir), ["src"])
    (src,) = sel.sources
    assert src.kind == "dir"
    assert [e.rel for e in src.entries] == [
        "a.txt", "x", "x/b.txt", "x/rel-link", "x/y", "x/y/c.txt", "x/y/d.py"]
    link = [e for e in src.entries if e.rel == "x/rel-link"][0]
    assert link.kind == "symlink" and link.link_target == "y/c.txt"  # copied as a link


def test_dot_is_the_whole_visible_context(ctx_dir):
    (src,) = select_sources(ctx(ctx_dir), ["."]).sources
    rels = [e.rel for e in src.entries]
    assert "secret" not in rels and "secret/key" not in rels
    assert "ign/keep.txt" in rels and "ign/drop.txt" not in rels and "ign" in rels


@pytest.mark.parametrize("spec,expected", [
    ("*.txt", ["a.txt", "b.txt", "home.txt"]),
    ("hom*", ["hom", "home.txt", "homer.md"]),
    ("src/*/b.txt", ["src/x/b.txt"]),
    ("?.txt", ["a.txt", "b.txt"]),
    ("[ab].txt", ["a.txt", "b.txt"]),
    ("*/a.txt", ["src/a.txt", "x/a.txt", "y/a.txt"]),
    # "**" is not special outside --parents (Go filepath.Match: ** == *)
    ("**/a.txt", ["src/a.txt", "x/a.txt", "y/a.txt"]),
    ("src/**", ["src/a.txt", "src/x"]),
    ("ign/*", ["ign/keep.txt"]),
])
def test_wildcards(ctx_dir, spec, expected):
    sel = select_sources(ctx(ctx_dir), [spec])
    assert [s.path for s in sel.sources] == expected
    assert all(s.from_wildcard for s in sel.sources)


def test_wildcard_with_no_match_selects_nothing(ctx_dir):
    # BuildKit copies with AllowEmptyWildcard: an unmatched wildcard is not an error
    assert select_sources(ctx(ctx_dir), ["*.nomatch", "a.txt"]).sources[0].path == "a.txt"
    with pytest.raises(BuildError, match="no source files"):
        select_sources(ctx(ctx_dir), ["*.nomatch"], allow_empty_wildcard=False)


@pytest.mark.parametrize("spec,shown", [
    ("missing.txt", "missing.txt"),
    ("secret/key", "secret/key"),          # excluded by .dockerignore
    ("ign/drop.txt", "ign/drop.txt"),
    ("nodir/*.txt", "nodir"),
    ("../../etc/passwd", "etc/passwd"),    # clamped inside the context
    ("/etc/passwd", "etc/passwd"),         # absolute = context-relative
])
def test_missing_sources_are_errors(ctx_dir, spec, shown):
    with pytest.raises(BuildError) as ei:
        select_sources(ctx(ctx_dir), [spec])
    assert str(ei.value) == ("COPY failed: file not found in build context or excluded by "
                             f".dockerignore: stat {shown}: file does not exist")


def test_dotdot_and_absolute_stay_inside(ctx_dir):
    (ctx_dir / "etc").mkdir()
    (ctx_dir / "etc/passwd").write_text("inside")
    for spec in ["../../etc/passwd", "/etc/passwd", "src/../../../etc/passwd"]:
        (src,) = select_sources(ctx(ctx_dir), [spec]).sources
        assert src.abs_path == str(ctx_dir / "etc/passwd")


def test_source_symlinks_are_followed_inside_the_root(ctx_dir):
    c = ctx(ctx_dir)
    (f,) = select_sources(c, ["link-file"]).sources
    assert (f.kind, f.name, f.path) == ("file", "link-file", "a.txt")
    (d,) = select_sources(c, ["link-dir"]).sources
    assert d.kind == "dir" and d.path == "src/x"
    assert [e.rel for e in d.entries][:2] == ["b.txt", "rel-link"]
    # links that point outside resolve inside the root, where nothing is: not found
    for spec in ["link-abs", "link-up"]:
        with pytest.raises(BuildError, match="file not found"):
            select_sources(c, [spec])
    (ctx_dir / "etc").mkdir()
    (ctx_dir / "etc/passwd").write_text("inside")
    for spec in ["link-abs", "link-up"]:
        (s,) = select_sources(c, [spec]).sources
        assert s.abs_path == str(ctx_dir / "etc/passwd")


def test_symlink_to_excluded_file_is_not_found(ctx_dir):
    os.symlink("secret/key", ctx_dir / "to-secret")
    with pytest.raises(BuildError, match="file not found"):
        select_sources(ctx(ctx_dir), ["to-secret"])


def test_symlink_loop_is_an_error(ctx_dir):
    os.symlink("loop2", ctx_dir / "loop1")
    os.symlink("loop1", ctx_dir / "loop2")
    assert resolve_in_tree(ctx(ctx_dir), "a.txt") == "a.txt"
    with pytest.raises(BuildError, match="too many levels"):
        select_sources(ctx(ctx_dir), ["loop1"])


# -- --exclude ------------------------------------------------------------------------

def test_exclude_docs_example(ctx_dir):
    # reference: COPY --exclude=*.txt hom* /mydir/ copies files starting with "hom"
    # except .txt files
    sel = select_sources(ctx(ctx_dir), ["hom*"], excludes=["*.txt"])
    assert [s.path for s in sel.sources] == ["hom", "homer.md"]
    hom = sel.sources[0]
    assert [e.rel for e in hom.entries] == ["y.py"]
    assert dests(sel, "/mydir/") == [("mkdir", "/mydir"), ("file", "/mydir/y.py"),
                                     ("file", "/mydir/homer.md")]


def test_exclude_inside_directory_with_exception(ctx_dir):
    sel = select_sources(ctx(ctx_dir), ["src"], excludes=["x", "!x/y/c.txt"])
    assert [e.rel for e in sel.sources[0].entries] == ["a.txt", "x", "x/y", "x/y/c.txt"]


def test_bad_exclude_is_a_build_error(ctx_dir):
    with pytest.raises(BuildError, match="invalid --exclude"):
        select_sources(ctx(ctx_dir), ["src"], excludes=["[x"])


# -- --parents ------------------------------------------------------------------------

def test_parents_docs_examples(ctx_dir):
    c = ctx(ctx_dir)
    # COPY --parents ./x/a.txt ./y/a.txt /parents/  ->  /parents/x/a.txt, /parents/y/a.txt
    sel = select_sources(c, ["./x/a.txt", "./y/a.txt"], parents=True)
    files = [d for k, d in dests(sel, "/parents/") if k == "file"]
    assert files == ["/parents/x/a.txt", "/parents/y/a.txt"]
    # COPY --parents ./x/./y/*.txt  (pivot)  ->  /parents/y/a.txt ...
    make_tree(ctx_dir, {"x/y/a.txt": "1", "x/y/b.txt": "2"})
    sel = select_sources(c, ["./x/./y/*.txt"], parents=True)
    assert [d for k, d in dests(sel, "/parents/") if k == "file"] == [
        "/parents/y/a.txt", "/parents/y/b.txt"]
    # COPY --parents ./src/**/*.txt: ** matches any number of directories
    sel = select_sources(c, ["./src/**/*.txt"], parents=True)
    assert [d for k, d in dests(sel, "/parents/") if k == "file"] == [
        "/parents/src/a.txt", "/parents/src/x/b.txt", "/parents/src/x/y/c.txt"]


def test_parents_keeps_parent_dirs_with_their_modes(ctx_dir):
    os.chmod(ctx_dir / "src/x", 0o700)
    (src,) = select_sources(ctx(ctx_dir), ["src/x/y/c.txt"], parents=True).sources
    assert [(e.rel, e.kind) for e in src.entries] == [
        ("src", "dir"), ("src/x", "dir"), ("src/x/y", "dir"), ("src/x/y/c.txt", "file")]
    assert src.entries[1].mode == 0o700


def test_parents_missing_literal_is_an_error(ctx_dir):
    with pytest.raises(BuildError, match="stat src/nothing"):
        select_sources(ctx(ctx_dir), ["src/nothing"], parents=True)


# -- content key ----------------------------------------------------------------------

SETTLE = 0.12


def key_of(root, specs=("src", "a.txt"), **kw):
    return content_key(select_sources(ctx(root), list(specs), **kw))


def test_content_key_tracks_exactly_the_selected_files(ctx_dir):
    time.sleep(SETTLE)
    k0 = key_of(ctx_dir)
    assert key_of(ctx_dir) == k0  # stable
    # an unselected file changes: same key
    (ctx_dir / "b.txt").write_text("changed")
    (ctx_dir / "ign/drop.txt").write_text("changed")
    assert key_of(ctx_dir) == k0
    # only times change: same key
    os.utime(ctx_dir / "src/x/b.txt", (1, 1))
    os.utime(ctx_dir / "src/x", (2, 2))
    assert key_of(ctx_dir) == k0
    # owner of a context file: not part of the key (docker copies as root:root)
    if os.geteuid() == 0:
        os.chown(ctx_dir / "src/a.txt", 4242, 4242)
        assert key_of(ctx_dir) == k0
    # content of a selected file
    (ctx_dir / "src/x/b.txt").write_text("SB2")
    k1 = key_of(ctx_dir)
    assert k1 != k0
    # mode of a selected file
    os.chmod(ctx_dir / "a.txt", 0o600)
    k2 = key_of(ctx_dir)
    assert k2 != k1
    # path of a selected file (rename inside the copied dir)
    os.rename(ctx_dir / "src/x/y/d.py", ctx_dir / "src/x/y/e.py")
    k3 = key_of(ctx_dir)
    assert k3 != k2
    # link target of a selected symlink
    os.remove(ctx_dir / "src/x/rel-link")
    os.symlink("y/e.py", ctx_dir / "src/x/rel-link")
    k4 = key_of(ctx_dir)
    assert k4 != k3
    # a new empty directory inside a selected dir is copied too
    (ctx_dir / "src/newdir").mkdir()
    assert key_of(ctx_dir) != k4


def test_content_key_depends_on_landing_name_not_on_tree_path(ctx_dir):
    # COPY a.txt vs COPY link-file (-> a.txt): same bytes, different landing name
    assert key_of(ctx_dir, ["a.txt"]) != key_of(ctx_dir, ["link-file"])
    # same file found through a different directory but landing the same way
    k = key_of(ctx_dir, ["x/a.txt"])
    os.rename(ctx_dir / "x", ctx_dir / "x2")
    assert key_of(ctx_dir, ["x2/a.txt"]) == k


@pytest.mark.root  # chown
def test_stage_trees_keep_ownership_in_the_key(ctx_dir):
    tree = SourceTree(ctx_dir)  # e.g. COPY --from=stage: ownership is copied
    k0 = content_key(select_sources(tree, ["a.txt"]))
    os.chown(ctx_dir / "a.txt", 1000, 1000)
    assert content_key(select_sources(tree, ["a.txt"])) != k0


def test_rebuild_hashes_only_selected_files(ctx_dir, tmp_path):
    time.sleep(SETTLE)
    cache_dir = tmp_path / "sc"
    c = BuildContext(ctx_dir, IgnoreRules(), StatCache(cache_dir))
    select_sources(c, ["src/x/y"])
    assert c.stat_cache.files_hashed == 2  # c.txt, d.py: nothing else is read
    c.stat_cache.close()
    c = BuildContext(ctx_dir, IgnoreRules(), StatCache(cache_dir))
    select_sources(c, ["src/x/y"])
    assert c.stat_cache.files_hashed == 0


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "d/c", "d/e/f", "ex/g"]),
                       st.binary(max_size=8), min_size=1),
       st.sampled_from(["a", "b", "d/c", "d/e/f", "ex/g"]), st.binary(max_size=8))
def test_key_changes_iff_a_selected_file_changes(tmp_path_factory, files, victim, new):
    root = tmp_path_factory.mktemp("prop")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    tree = BuildContext(root, IgnoreRules.parse("ex\n"), StatCache(racy_window_ns=0))
    k0 = content_key(select_sources(tree, ["."]))
    old = files.get(victim)
    (root / victim).parent.mkdir(parents=True, exist_ok=True)
    (root / victim).write_bytes(new)
    tree = BuildContext(root, IgnoreRules.parse("ex\n"), StatCache(racy_window_ns=0))
    k1 = content_key(select_sources(tree, ["."]))
    changed = not victim.startswith("ex/") and old != new
    assert (k1 != k0) is changed


# -- destinations ---------------------------------------------------------------------

def test_dir_source_copies_content_into_dest(ctx_dir):
    sel = select_sources(ctx(ctx_dir), ["src/x/y"])
    assert dests(sel, "/x") == [("mkdir", "/x"), ("file", "/x/c.txt"), ("file", "/x/d.py")]
    assert dests(sel, "/x/") == dests(sel, "/x")


@pytest.mark.parametrize("dest,workdir,existing,expected", [
    ("/x/", "/", set(), "/x/a.txt"),            # COPY file /x/  -> /x/file
    ("/x", "/", set(), "/x"),                   # COPY file /x   -> /x is the file
    ("/x", "/", {"/x"}, "/x/a.txt"),            # ... unless /x is a directory in the image
    ("rel", "/app", set(), "/app/rel"),         # relative to WORKDIR
    ("rel/", "/app", set(), "/app/rel/a.txt"),
    (".", "/app", set(), "/app/a.txt"),         # "." is the WORKDIR, a directory
    ("./", "/app/", set(), "/app/a.txt"),
    ("../up", "/app/sub", set(), "/app/up"),
    ("/", "/", set(), "/a.txt"),
])
def test_single_file_destinations(ctx_dir, dest, workdir, existing, expected):
    sel = select_sources(ctx(ctx_dir), ["a.txt"])
    assert dests(sel, dest, workdir, lambda p: p in existing) == [("file", expected)]


def test_several_sources_onto_a_non_directory_are_copied_in_turn(ctx_dir):
    # BuildKit (v0.8 and current; docker 20.10 checked): no trailing-slash rule - one
    # copy per source onto dest as the ones before left it (fsutil prepareTargetDir)
    sel = select_sources(ctx(ctx_dir), ["a.txt", "b.txt"])
    assert dests(sel, "/x") == [("file", "/x"), ("file", "/x")]          # b.txt wins
    assert dests(sel, "/x/") == [("file", "/x/a.txt"), ("file", "/x/b.txt")]
    assert dests(sel, "/x", is_dir=lambda p: p == "/x") == [("file", "/x/a.txt"),
                                                          ("file", "/x/b.txt")]
    # a wildcard's matches likewise
    sel = select_sources(ctx(ctx_dir), ["?.txt"])
    assert dests(sel, "/x") == [("file", "/x"), ("file", "/x")]
    sel = select_sources(ctx(ctx_dir), ["a.*"])
    assert dests(sel, "/x") == [("file", "/x")]
    # a directory makes dest a directory for the sources after it
    sel = select_sources(ctx(ctx_dir), ["hom", "a.txt"])
    assert dests(sel, "/x") == [("mkdir", "/x"), ("file", "/x/x.txt"), ("file", "/x/y.py"),
                                ("file", "/x/a.txt")]
    # ... and after a file is refused, as BuildKit ("cannot copy to non-directory")
    sel = select_sources(ctx(ctx_dir), ["a.txt", "hom"])
    with pytest.raises(BuildError, match="cannot copy to non-directory: /x"):
        plan_copy(sel, "/x", "/", instruction="ADD")


def test_symlink_source_lands_under_its_own_name(ctx_dir):
    sel = select_sources(ctx(ctx_dir), ["link-file"])
    assert dests(sel, "/d/") == [("file", "/d/link-file")]
