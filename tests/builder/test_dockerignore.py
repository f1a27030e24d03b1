"""`.dockerignore` semantics (builder/dockerignore.py).

Expected values come from docker's documentation ("dockerignore" section of the
Dockerfile reference / docs.docker.com/build/concepts/context) and from the test
tables of moby/patternmatcher and patternmatcher/ignorefile (the peer
implementation BuildKit uses); each case names the rule it checks.
"""

from __future__ import annotations

import os
import re
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lamina.builder.context.dockerignore import IgnoreRules, load_ignore_rules
from lamina.builder.context.patterns import GlobPattern, PatternError, go_clean, go_trim_space
from lamina.builder.context.patterns import ignore_tokens as _ignore_tokens
from lamina.builder.context.globmatch import regex_of
from lamina.builder.errors import BuildError

# -- file format (ignorefile.ReadAll) -------------------------------------------------


def test_readall_table_from_ignorefile():
    # ignorefile_test.go TestReadAll: leading "/" removed, comments skipped,
    # "! /inverted/abs/path" -> "!inverted/abs/path"; "!" and "! " are kept (and then
    # rejected by the matcher: see test_lone_bang_is_an_error).
    text = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n"
    rules = IgnoreRules.parse(text)
    assert [("!" if p.exception else "") + p.text for p in rules.patterns] == [
        "test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path"]


@pytest.mark.parametrize("text", ["!\n", "! \n", "a\n!\n"])
def test_lone_bang_is_an_error(text):
    # patternmatcher.New: `illegal exclusion pattern: "!"`
    with pytest.raises(PatternError, match="illegal exclusion"):
        IgnoreRules.parse(text, source="ctx/.dockerignore")


def test_error_is_a_build_error_naming_the_file():
    with pytest.raises(BuildError, match=r"ctx/\.dockerignore: invalid pattern"):
        IgnoreRules.parse("ok\n[\n", source="ctx/.dockerignore")


@pytest.mark.parametrize("text,path,excluded,rule", [
    ("\ufeff*.tmp\n", "a.tmp", True, "UTF-8 BOM on the first line is stripped"),
    ("  *.tmp  \n", "a.tmp", True, "patterns are trimmed"),
    ("*.tmp\r\n", "a.tmp", True, "CRLF line endings (bufio.ScanLines drops the \\r)"),
    ("# *.tmp\n", "a.tmp", False, "a line starting with # is a comment"),
    (" # x\n", " # x", False, "# only comments at column 0; ' # x' is trimmed to pattern '# x'"),
    (" # x\n", "# x", True, "... which then matches the file '# x'"),
    ("/foo/bar\n", "foo/bar", True, "a leading / is removed: /foo/bar == foo/bar"),
    ("foo/\n", "foo/x", True, "filepath.Clean drops the trailing slash; foo/ excludes the dir"),
    ("./foo\n", "foo", True, "filepath.Clean removes ./"),
    ("foo/../bar\n", "bar", True, "filepath.Clean resolves .."),
    ("foo//bar\n", "foo/bar", True, "filepath.Clean collapses //"),
    ("\n\n   \n", "x", False, "blank lines are ignored"),
    ("*.tmp\n!  /keep.tmp\n", "keep.tmp", False, "'!' then spaces then a rooted path"),
    ("x\x1c\n", "x\x1c", True, "Go TrimSpace does not trim \\x1c (Python's strip would)"),
])
def test_file_format(text, path, excluded, rule):
    assert IgnoreRules.parse(text).excluded(path) is excluded, rule


# -- matching: cases from the docs ----------------------------------------------------

DOCS = "# comment\n*/temp*\n*/*/temp*\ntemp?\n"


@pytest.mark.parametrize("path,excluded,rule", [
    ("somedir/temporary.txt", True, "*/temp* excludes temp* in any immediate subdirectory"),
    ("somedir/temp", True, "*/temp* also matches a directory named temp..."),
    ("somedir/temp/inner/file", True, "...and a matched directory excludes everything under it"),
    ("temporary.txt", False, "*/temp* does not match at the root"),
    ("somedir/subdir/temporary.txt", True, "*/*/temp* two levels below the root"),
    ("a/b/c/temporary.txt", False, "*/*/temp* exactly two levels"),
    ("tempa", True, "temp? one-character extension at the root"),
    ("tempab", False, "? matches exactly one character"),
    ("a/b/c/tempa", False, "temp? only at the root (and no */temp* form reaches depth 4)"),
])
def test_docs_example(path, excluded, rule):
    assert IgnoreRules.parse(DOCS).excluded(path) is excluded, rule


@pytest.mark.parametrize("text,path,excluded,rule", [
    ("**/*.go\n", "x.go", True, "**/ matches zero directories"),
    ("**/*.go\n", "a/b/c/x.go", True, "** matches any number of directories"),
    ("**/*.go\n", "a/x.gox", False, "anchored at the end"),
    ("*.md\n!README*.md\nREADME-secret.md\n", "README-secret.md", True,
     "docs: the last matching line wins (README-secret.md excluded again)"),
    ("*.md\n!README*.md\nREADME-secret.md\n", "README.md", False,
     "docs: README*.md exception re-includes README.md"),
    ("*.md\n!README*.md\nREADME-secret.md\n", "other.md", True, "docs: *.md"),
    ("*.md\nREADME-secret.md\n!README*.md\n", "README-secret.md", False,
     "docs: with the exception last, all README*.md are included"),
    ("*\n!src\n", "src/deep/file.c", False, "an exception naming a directory re-includes its content"),
    ("*\n!src\n", "other", True, "* excludes everything else"),
    ("docs\n!docs/README.md\n", "docs/README.md", False,
     "patternmatcher TestPatternMatchesFolderExclusions"),
    ("docs\n!docs/README.md\n", "docs/other.md", True, "the rest of docs stays excluded"),
    ("docs/*\n!docs/README.md\n", "docs/README.md", False,
     "patternmatcher TestPatternMatchesFolderWildcardExclusions"),
    ("!fileutils.go\n*.go\n", "fileutils.go", True,
     "patternmatcher TestExclusionPatternMatchesPatternBefore: later inclusion wins"),
    ("*.go\n!fileutils.go\n", "fileutils.go", False,
     "patternmatcher TestExclusionPatternMatchesPatternAfter"),
    ("Dockerfile\n.dockerignore\n", "Dockerfile", True,
     "docs: Dockerfile and .dockerignore may be excluded (still used by the build)"),
    (".*\n", ".git/config", True, ".* matches dot directories; content follows"),
    (".*\n", "a/.hidden", False, ".* is anchored at the root"),
    ("a\\*b\n", "a*b", True, "backslash escapes *"),
    ("a\\*b\n", "axb", False, "escaped * is literal"),
    ("[ab]c\n", "bc", True, "character class"),
    ("[^ab]c\n", "zc", True, "negated class with ^ (Go syntax)"),
    ("[!a]c\n", "!c", True, "[!a] is not negation in Go: it lists ! and a"),
    ("[!a]c\n", "zc", False, "[!a] does not match z"),
])
def test_semantics(text, path, excluded, rule):
    assert IgnoreRules.parse(text).excluded(path) is excluded, rule


def test_root_is_never_excluded():
    # patternmatcher.MatchesOrParentMatches: file "." is never matched
    assert IgnoreRules.parse("*\n**\n").excluded(".") is False


# -- matching: moby/patternmatcher TestMatches table (MatchesOrParentMatches) --------

PM_SINGLE = [
    ("**", "file", True), ("**", "file/", True), ("**/", "file", True), ("**/", "file/", True),
    ("**", "/", True), ("**/", "/", True), ("**", "dir/file", True), ("**/", "dir/file", True),
    ("**", "dir/file/", True), ("**/", "dir/file/", True), ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True), ("dir/**", "dir/file", True), ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True), ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True), ("**/dir", "dir/file", True), ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True), ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True), ("**file", "file", True),
    ("**file", "dir/file", True), ("**/file", "dir/file", True), ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True), ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True), ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True), ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True), ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True), ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True), ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True), ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True), ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False), ("a[b-d]e", "ace", True), ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True), (".*", ".foo", True), (".*", "foo", False),
    ("abc.def", "abcdef", False), ("abc.def", "abc.def", True), ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True), ("abc?def", "abcdef", False), ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True), ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False), ("abc/**", "abc/def", True), ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True), ("**/.foo", "bar.foo", False), ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False), ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\\\", "a\\", True), ("a\\*b", "a*b", True),
]


@pytest.mark.parametrize("pattern,path,expected", PM_SINGLE)
def test_patternmatcher_table(pattern, path, expected):
    rules = IgnoreRules.from_patterns([pattern])
    assert rules.match(path)[0] is expected


@pytest.mark.parametrize("patterns,path,expected", [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
])
def test_patternmatcher_multi_table(patterns, path, expected):
    assert IgnoreRules.from_patterns(patterns).match(path)[0] is expected


# Go's filepath.Match table, as run through patternmatcher's Matches (TestMatch).
GO_MATCH = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "abc", True), ("a*", "ab/c", True), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True), ("ab[b-d]", "abc", True), ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False), ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True), ("a???b", "a☺b", False), ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True), ("*[a-ζ]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False),
    ("[\\]a]", "]", True), ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True),
    ("[x\\-]", "z", False), ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False),
    ("*x", "xxx", True),
]
GO_BAD = ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "*.go\\"]


@pytest.mark.parametrize("pattern,path,expected", GO_MATCH)
def test_go_match_table(pattern, path, expected):
    assert IgnoreRules.from_patterns([pattern]).match(path)[0] is expected


@pytest.mark.parametrize("pattern", GO_BAD)
def test_go_bad_patterns(pattern):
    with pytest.raises(PatternError):
        IgnoreRules.from_patterns([pattern])
    with pytest.raises(PatternError):
        GlobPattern.compile(pattern)


@pytest.mark.parametrize("pattern,name,expected", [
    ("*.txt", "a.txt", True), ("*.txt", "d/a.txt", False), ("**", "d/a", False),
    ("**.txt", "a.txt", True), ("*/*.txt", "d/a.txt", True), ("a?c", "abc", True),
    ("[ab]*", "bz", True), ("\\[x", "[x", True), ("*", ".hidden", True),
])
def test_glob_pattern(pattern, name, expected):
    # Go filepath.Match: * and ? never cross /, ** is just *, no dot-file rule
    assert GlobPattern.compile(pattern).match(name) is expected


# -- pruning --------------------------------------------------------------------------

@pytest.mark.parametrize("text,directory,may", [
    ("a\n!a/b/c\n", "a", True), ("a\n!a/b/c\n", "a/b", True), ("a\n!a/b/c\n", "a/b/c", False),
    ("a\n!a/b/c\n", "x", False), ("*\n!*/keep\n", "zz", True), ("*\n!*/keep\n", "zz/y", False),
    ("*\n!**/*.py\n", "deep/er", True), ("node_modules\n", "node_modules", False),
    ("x\n!x/[ab]\n", "x", True),
])
def test_may_include_under(text, directory, may):
    assert IgnoreRules.parse(text).may_include_under(directory) is may


# -- properties -----------------------------------------------------------------------

_chars = st.sampled_from(list("ab*?[]^-\\/.!# ") + ["**", "x", "é"])
_patterns = st.lists(_chars, max_size=12).map("".join)
_paths = st.lists(st.sampled_from(["a", "b", "ab", ".x", "*", "é", "[", "-"]), min_size=1,
                  max_size=5).map("/".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_patterns, max_size=5), _paths)
def test_never_crashes(patterns, path):
    try:
        rules = IgnoreRules.parse("\n".join(patterns))
    except BuildError:
        return
    assert isinstance(rules.excluded(path), bool)
    parts = path.split("/")
    for i in range(1, len(parts)):
        assert isinstance(rules.may_include_under("/".join(parts[:i])), bool)


@settings(max_examples=300, deadline=None)
# Whitespace inside a pattern is excluded here: docker itself treats "/ a" (cleaned to
# " a", then trimmed again by patternmatcher.New to "a") and "!/ a" (kept as " a")
# differently, so the property only holds for patterns without blanks.
@given(_patterns.filter(lambda p: not go_trim_space(p).startswith("!")
                        and not any(c.isspace() for c in p)), _paths)
def test_pattern_then_its_exception_excludes_nothing(p, path):
    try:
        only = IgnoreRules.parse(p + "\n")
        both = IgnoreRules.parse(f"{p}\n!{p}\n")
    except BuildError:
        return
    assert both.excluded(path) is False
    if not only.excluded(path):
        assert both.excluded(path) is False


@settings(max_examples=200, deadline=None)
@given(st.lists(_patterns, max_size=4), _paths)
def test_pruning_is_sound(patterns, path):
    """If a path is visible (not excluded) below a directory that is excluded, the
    walker must not have pruned that directory."""
    try:
        rules = IgnoreRules.parse("\n".join(patterns))
    except BuildError:
        return
    if rules.excluded(path):
        return
    parts = path.split("/")
    for i in range(1, len(parts)):
        d = "/".join(parts[:i])
        if rules.excluded(d):
            assert rules.may_include_under(d), (patterns, path, d)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab./", max_size=12))
def test_go_clean_is_idempotent_and_clean(p):
    c = go_clean(p)
    assert go_clean(c) == c
    assert "//" not in c
    assert c == "/" or not c.endswith("/")
    assert c == "." or "/./" not in f"/{c}/"


# -- loading --------------------------------------------------------------------------

def test_load_prefers_dockerfile_specific_ignore(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / ".dockerignore").write_text("*.log\n")
    df = ctx / "sub" / "build.Dockerfile"
    df.write_text("FROM scratch\n")
    assert load_ignore_rules(ctx, df).excluded("a.log") is True
    # docs: <Dockerfile>.dockerignore next to the Dockerfile takes precedence
    (ctx / "sub" / "build.Dockerfile.dockerignore").write_text("*.tmp\n")
    rules = load_ignore_rules(ctx, df)
    assert rules.excluded("a.tmp") is True and rules.excluded("a.log") is False
    # an empty Dockerfile-specific file still wins (it exists)
    (ctx / "sub" / "build.Dockerfile.dockerignore").write_text("")
    assert load_ignore_rules(ctx, df).excluded("a.log") is False
    # no file at all: nothing excluded
    os.remove(ctx / ".dockerignore")
    os.remove(ctx / "sub" / "build.Dockerfile.dockerignore")
    assert not load_ignore_rules(ctx, df)


def test_load_rejects_a_directory(tmp_path):
    (tmp_path / ".dockerignore").mkdir()
    with pytest.raises(BuildError, match="not a regular file"):
        load_ignore_rules(tmp_path, None)


def test_go_trim_space_matches_go():
    assert go_trim_space("\t\n\v\f\r \x85\xa0x\u3000") == "x"
    assert go_trim_space("\x1cx\x1f") == "\x1cx\x1f"
    assert string.whitespace.strip(string.whitespace) == ""


# -- incremental matching agrees with whole-path matching ------------------------------
# The oracle is the matcher lamina had before matching became incremental: each pattern
# tried on the path and on every parent directory ("/".join of its first components),
# exact/prefix/suffix patterns by string comparison as patternmatcher does, the others
# through Python's re on the pattern's regex (the automaton is checked against re in
# test_globmatch.py).

def _whole_path_hit(pattern, path: str) -> bool:
    kind, text = pattern.kind, pattern.text
    if kind == "exact":
        return path == text
    if kind == "prefix":
        return path.startswith(text[:-2])
    if kind == "suffix":
        suffix = text[2:]
        return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
    return re.fullmatch(regex_of(_ignore_tokens(text)[1]), path) is not None


def _whole_path_excluded(rules: IgnoreRules, path: str) -> bool:
    parts = path.split("/")
    chain = ["/".join(parts[:i]) for i in range(1, len(parts))] + [path]
    verdict = False
    for p in rules.patterns:  # the last pattern matching the path or a parent wins
        if any(_whole_path_hit(p, a) for a in chain):
            verdict = not p.exception
    return verdict


_PIECE = st.sampled_from(["a", "b", "/", "*", "**", "?", "[a-b]", "[^a]", "[/]", "\\a", "\n",
                          ".", "..", "ab", "/**/"])
_PATTERN = st.builds(lambda neg, pieces: ("!" if neg else "") + "".join(pieces),
                     st.booleans(), st.lists(_PIECE, min_size=1, max_size=6))
_NAME = st.text(alphabet="ab.\n*", min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))


def _rules_or_reject(patterns):
    from hypothesis import assume
    try:
        return IgnoreRules.from_patterns(patterns)
    except PatternError:
        assume(False)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERN, min_size=1, max_size=4), st.lists(_NAME, min_size=1, max_size=5))
@example(["a", "!a/b"], ["a", "b"])   # pruning: an exception one level below
@example(["**/b", "!b*/a"], ["ba", "a"])
def test_walk_order_matching_agrees_with_whole_path_matching(patterns, names):
    """A walker resumes each path from its directory's info; every level gets the
    whole-path answer, and the pruning test with the walk's info the string one."""
    rules = _rules_or_reject(patterns)
    info, path = rules.root_info(), ""
    walk = rules.walk_matcher()
    for name in names:
        path = f"{path}/{name}" if path else name
        want = _whole_path_excluded(rules, path)
        excluded, info = rules.match(path, info)
        assert excluded == want, (patterns, path)
        assert rules.match(path)[0] == want
        assert walk.excluded(path) == want
        assert rules.may_include_under(path, info) == rules.may_include_under(path)
    # a walk matcher asked out of order (back up to a sibling, then deep again)
    assert walk.excluded(names[0]) == _whole_path_excluded(rules, names[0])
    assert walk.excluded(path) == _whole_path_excluded(rules, path)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERN, min_size=1, max_size=4), st.text(alphabet="ab/\n.*", max_size=10))
@example(["a/b"], "a/b/a")            # a middle parent is matched
@example(["b/*", "!b/a/**"], "b/a/b/a")
@example(["a**"], "ab/b/b")           # a prefix pattern without "/"
@example(["**/b"], "a/b/a/a")         # a suffix pattern on a middle parent
@example(["*"], "/a")                 # a leading "/": "" is a parent too
@example(["**/b"], "ba/a")            # a suffix pattern's bare form is the whole path only
def test_matching_any_string_agrees_with_whole_path_matching(patterns, path):
    """Any string (`//`, a leading `/`, `.` components): the same answer as before."""
    rules = _rules_or_reject(patterns)
    assert rules.match(path)[0] == _whole_path_excluded(rules, path), (patterns, path)


_TREE = ["a/b/ab", "a/a\nb/b", "a/ab", "b/a", "b/b/a/b", "ab/b/a/b", "ab/a", "a\nb/a/b", "b\n/b",
         "*/a", "a.b/b"]


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ignore-tree")
    for rel in _TREE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    return root


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_PATTERN, min_size=1, max_size=4))
def test_a_walk_sees_what_whole_path_matching_lets_through(small_tree, patterns):
    """BuildKit's visibility: a file is there when not excluded, a directory when not
    excluded or when it holds something visible - computed here from whole-path
    answers, against the walk with its incremental matching and pruning."""
    from lamina.builder.context.context import SourceTree
    rules = _rules_or_reject(patterns)
    files = set(_TREE)
    dirs = {rel.rsplit("/", i)[0] for rel in _TREE for i in range(1, rel.count("/") + 1)}
    want = {f for f in files if not _whole_path_excluded(rules, f)}
    want |= {d for d in dirs if not _whole_path_excluded(rules, d)
             or any(f.startswith(d + "/") for f in want)}
    got = {e.path for e in SourceTree(small_tree, rules).entries(hash_files=False)}
    assert got == want, patterns
