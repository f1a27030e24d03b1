"""Table-driven tests of grammar.shell against BuildKit's lexer semantics.

Expected values come from BuildKit (moby/buildkit frontend/dockerfile/shell):
"envVarTest" / "wordsTest" mark cases of its data-driven tests, "lex_test" marks
cases of TestProcessWithMatches & co., and "lex.go" marks values worked out by
hand from the documented algorithm of lex.go (and, for `//`, Go's
regexp.ReplaceAllString rules).
"""

from __future__ import annotations

import pytest

from lamina import grammar
from lamina.grammar import DockerfileError
from lamina.grammar.shell import expand, referenced_names, split_words

# the environment of BuildKit's envVarTest
ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}

EXPAND_CASES = [
    # --- envVarTest: quotes and escapes
    (r"hello", "hello"),
    (r"he'll'o", "hello"),
    (r"he\'llo", "he'llo"),
    (r"abc\tdef", "abctdef"),
    (r'"abc\tdef"', r"abc\tdef"),
    (r'"abc\\tdef"', r"abc\tdef"),
    (r"'abc\tdef'", r"abc\tdef"),
    (r"hello\\", "hello\\"),
    ("hello\\", "hello"),  # an escape at the end is dropped
    (r'"hel\'lo"', r"hel\'lo"),
    (r'"hel' + "'" + r'lo"', "hel'lo"),
    (r"'hello\'", "hello\\"),
    (r"'hello\there'", r"hello\there"),
    (r"'hello\\there'", r"hello\\there"),
    (r'''"''"''', "''"),
    (r"""'"hello"'""", '"hello"'),
    # --- envVarTest: $ handling
    (r"$.", "$."),
    (r"he$1x", "hex"),
    (r"he$.x", "he$.x"),
    (r"he$pwd.", "he."),  # names are case-sensitive on Linux
    (r"he$PWD", "he/home"),
    (r"he\$PWD", "he$PWD"),
    (r"he\\$PWD", "he\\/home"),
    (r'"he\$PWD"', "he$PWD"),
    (r'"he\\$PWD"', "he\\/home"),
    (r"\${}", "${}"),
    (r"\${}aaa", "${}aaa"),
    (r"he\${}", "he${}"),
    (r"he\${}xx", "he${}xx"),
    (r"he${hi}", "he"),
    (r"he${hi}xx", "hexx"),
    (r"he${PWD}", "he/home"),
    (r"he${XXX:-000}xx", "he000xx"),
    (r"he${PWD:-000}xx", "he/homexx"),
    (r"he${XXX:-$PWD}xx", "he/homexx"),
    (r"he${XXX:-${PWD:-yyy}}xx", "he/homexx"),
    (r"he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
    (r"he${PWD?}", "he/home"),
    (r"he${PWD:?}", "he/home"),
    (r"he${NULL?}", "he"),
    (r"he${XXX:+${PWD}}xx", "hexx"),
    (r"he${PWD:+${XXX}}xx", "hexx"),
    (r"he${PWD:+${SHELL}}xx", "hebashxx"),
    (r"he${XXX:+000}xx", "hexx"),
    (r"he${PWD:+000}xx", "he000xx"),
    (r"'he${XX}'", "he${XX}"),
    (r'"he${PWD}"', "he/home"),
    (r'''"he'$PWD'"''', "he'/home'"),
    (r'"$PWD"', "/home"),
    (r"'$PWD'", "$PWD"),
    (r"'\$PWD'", r"\$PWD"),
    (r"'he\$PWD'", r"he\$PWD"),
    (r"he${PWD:+${PWD}:}xx", "he/home:xx"),
    (r"he${XXX:-\$PWD:}xx", "he$PWD:xx"),
    (r"he${XXX:-\${PWD}z}xx", "he${PWDz}xx"),  # the escaped ${ ends at the first }
    (r"${aaa}}", "}"),
    (r"${aaa}}}", "}}"),
    (r"${aaa:-bbb}}", "bbb}"),
    (r"${aaa:-\}}", "}"),
    (r"${aaa:-\}\}}", "}}"),
    (r"${aaa:-'}'}", "}"),  # lex.go: quotes protect the closing brace
    # --- envVarTest: non-ASCII
    ("안녕하세요", "안녕하세요"),
    ("안'녕'하세요", "안녕하세요"),
    ("안녕\\'하세요", "안녕'하세요"),
    ("안녕\\t하세요", "안녕t하세요"),
    ('"안녕\\t하세요"', "안녕\\t하세요"),
    ("$KOREAN", "한국어"),
    ("안녕$KOREAN", "안녕한국어"),
    # --- lex_test: - + with and without the colon
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", "xxx  ccc"),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", "xxx bbb ccc"),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", "aaa bbb "),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", "aaa  "),
    ("${FOO:-}", "xxx"),
    ("${FOO?aaa}", "xxx"),
    ("${BAR?bbb}", ""),
    ("${FOO:?aaa}", "xxx"),
    # --- lex.go: names
    ("$FOO_1x", ""),  # the name is FOO_1x
    ("${FOO}_1x", "xxx_1x"),
    ("$12x", "x"),  # a name starting with a digit is the run of digits
    ("$$", ""),  # $ is a special parameter name (unset here)
    ("$@x$#y$?z$-$!", "xyz"),
    ("$", "$"),
    ("a$ b", "a$ b"),
    ("a$", "a$"),
    ("$'x'", "$x"),
    ('$"x"', "$x"),
    ("$/$:", "$/$:"),
    ("${#}", ""),  # ${#} is the special parameter #
    ("${1}${0}", ""),
    ("$FOO$BAR$FOO", "xxxxxx"),
    # --- lex.go: escapes inside double quotes
    (r'"a\"b"', 'a"b'),
    (r'"a\\b"', "a\\b"),
    (r'"a\b"', "a\\b"),
    (r'"a\'b"', "a\\'b"),
    (r'"\$FOO"', "$FOO"),
    ('"a\\\nb"', "a\\\nb"),  # unlike sh, no line continuation inside quotes
    # --- lex.go: blanks and heredoc markers are kept in the single word
    ("a  b\tc", "a  b\tc"),
    ("cat <<  EOF", "cat <<  EOF"),
    ("a<b", "a<b"),
]

# for EXPAND_CASES from lex_test
ENV_LEX = {"FOO": "xxx", "BAR": ""}


@pytest.mark.parametrize(("word", "expected"), EXPAND_CASES)
def test_expand(word, expected):
    assert expand(word, {**ENV, **ENV_LEX}) == expected


PATTERN_CASES = [
    # --- lex_test (TestProcessWithMatches)
    (r"${FOO#()[]{\}^$.\*\?|\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x"),
    (r"${FOO%%\**}", {"FOO": "xx**"}, "xx"),
    (r"${FOO#*x*y}", {"FOO": "xxyy"}, "y"),
    (r"${FOO#*}", {"FOO": "xxyy"}, "xxyy"),
    (r"${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy"),
    (r"${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy"),
    (r"${FOO#}", {"FOO": "xxyy"}, "xxyy"),
    (r"${FOO##*x}", {"FOO": "xxyy"}, "yy"),
    (r"${FOO##}", {"FOO": "xxyy"}, "xxyy"),
    (r"${FOO#?\?}", {"FOO": "???y"}, "?y"),
    (r"${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy."),
    (r"${FOO%%\**\*}", {"FOO": "a***yy*"}, "a"),
    (r"${FOO%}", {"FOO": "xxyy"}, "xxyy"),
    (r"${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy"),
    (r"${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
     {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"}, "/foo.*/*.txt - /foo..*.txt"),
    (r"${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
     {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"}, "/tmp/bar.txt - /bar.txt"),
    (r"${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
     {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
     "/foo/b/c.txt - /foo/c.txt"),
    (r"${FOO/$NEEDLE/$REPLACEMENT}",
     {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
     "https://google.de"),
    (r"${FOO//\//\/}", {"FOO": "/tmp/foo.txt"}, r"\/tmp\/foo.txt"),
    (r"${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy"),
    (r"${FOO///}", {"FOO": "xxyy"}, "xxyy"),
    (r"${FOO///}", {}, ""),
    # lex_test TestProcessWithMatchesPlatform
    ("something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
     {"VERSION": "v1.2.3", "TARGETOS": "linux", "TARGETARCH": "arm", "TARGETVARIANT": "v7"},
     "something-v1.2.3.linux-arm-v7.tar.gz"),
    ("something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
     {"VERSION": "v1.2.3", "TARGETOS": "linux", "TARGETARCH": "arm64"},
     "something-v1.2.3.linux-arm64.tar.gz"),
    # --- lex.go: shortest / longest prefix and suffix
    ("${v%.*}", {"v": "a.b.c"}, "a.b"),
    ("${v%%.*}", {"v": "a.b.c"}, "a"),
    ("${v#*.}", {"v": "a.b.c"}, "b.c"),
    ("${v##*.}", {"v": "a.b.c"}, "c"),
    ("${v%/}", {"v": "dir/"}, "dir"),
    ("${v#?}", {"v": ""}, ""),
    ("${v%?}", {"v": "abc"}, "ab"),
    ("${v##a*}", {"v": "abc"}, ""),
    ("${v%\\*}", {"v": "a*"}, "a"),
    ("${v%\\\\}", {"v": "a\\"}, "a"),
    ("${v#$p}", {"v": "##x", "p": "##"}, "#x"),  # "##" from $p: longest, pattern "#"
    ("${v#.*}", {"v": "abc"}, "abc"),  # '.' is literal, not a regexp dot
    ("${v#a|b}", {"v": "a|bc"}, "c"),
    # --- lex.go: bracket expressions are not supported: [ and ] are literal
    ("${v#[ab]}", {"v": "[ab]c"}, "c"),
    ("${v#[ab]}", {"v": "ac"}, "ac"),
    ("${v//[0-9]/N}", {"v": "a1[0-9]"}, "a1N"),
    # --- lex.go: '*' and '?' never match a newline (Go's '.')
    ("${v#*}", {"v": "a\nb"}, "a\nb"),
    ("${v##*}", {"v": "a\nb"}, "\nb"),
    ("${v%%*}", {"v": "a\nb"}, "a\n"),
    # --- lex.go: quotes in a pattern only remove themselves
    ("${v#'*'}", {"v": "abc"}, "abc"),
    ('${v##"*"}', {"v": "abc"}, ""),
    # --- lex.go: single replacement
    ("${v/*/X}", {"v": "abc"}, "X"),
    ("${v/b*/X}", {"v": "abcb"}, "aX"),
    ("${v/?/X}", {"v": "abc"}, "Xbc"),
    ("${v/x/X}", {"v": "abc"}, "abc"),
    ("${v/a/'<$0>'}", {"v": "abc"}, "<$0>bc"),  # no template for a single replacement
    # --- Go ReplaceAllString: an empty match right after a match is skipped
    ("${v//*/X}", {"v": "abc"}, "X"),
    ("${v//*/X}", {"v": "a\nb"}, "X\nX"),
    ("${v//?/X}", {"v": "abc"}, "XXX"),
    ("${v//$e/-}", {"v": "ab", "e": ""}, "-a-b-"),
    ("${v//b*/X}", {"v": "abcb"}, "aX"),
    ("${v//b/X}", {"v": "abcb"}, "aXcX"),
    # --- Go ReplaceAllString: the replacement is a template
    ("${v//a/'<$0>'}", {"v": "abca"}, "<a>bc<a>"),
    ("${v//a/'${0}'}", {"v": "abc"}, "abc"),
    ("${v//a/'$1'}", {"v": "abc"}, "bc"),
    ("${v//a/'$x'}", {"v": "abc"}, "bc"),
    ("${v//a/'$$'}", {"v": "abc"}, "$bc"),
    ("${v//a/'$'}", {"v": "abc"}, "$bc"),
    ("${v//a/'${0'}", {"v": "abc"}, "${0bc"),
    ("${v//a/'$00'}", {"v": "abc"}, "bc"),
    ("${v//a/\\$0}", {"v": "abc"}, "\\abc"),  # the kept escape is plain text
    ("${v//a/$r}", {"v": "abc", "r": "[$0]"}, "[a]bc"),
    # --- lex.go: unset variable with patterns
    ("${v#x}${v%x}${v/x/y}${v//x/y}", {}, ""),
]


@pytest.mark.parametrize(("word", "env", "expected"), PATTERN_CASES)
def test_expand_patterns(word, env, expected):
    assert expand(word, env) == expected


BACKTICK_CASES = [
    # lex.go: with `# escape=\``, the backtick is the escape token
    ("he`$PWD", "he$PWD"),
    ("he``$PWD", "he`/home"),
    ("c:\\windows\\system32", "c:\\windows\\system32"),
    ('"c:\\path"', "c:\\path"),
    ('"a`"b"', 'a"b'),
    ('"a``b"', "a`b"),
    ('"a`$PWD"', "a$PWD"),
    ('"a`b"', "a`b"),
    ("a` b", "a b"),
    ("a`", "a"),
    ("${XXX:-`}}", "}"),
    ("'a`b'", "a`b"),
]


@pytest.mark.parametrize(("word", "expected"), BACKTICK_CASES)
def test_expand_backtick_escape(word, expected):
    assert expand(word, ENV, escape="`") == expected


WORDS_ENV = {"hi": "hi", "space": "abc  def", "leading": "  ab c", "trailing": "ab c   ",
             "empty": ""}

WORDS_CASES = [
    # --- wordsTest
    ("hello", ["hello"]),
    ("hello${nope}bye", ["hellobye"]),
    ("hello${hi}bye", ["hellohibye"]),
    ("hello${space}bye", ["helloabc", "defbye"]),
    ('hello"${space}"bye', ["helloabc  defbye"]),
    ('hello "${space}"bye', ["hello", "abc  defbye"]),
    ("hello${leading}def", ["hello", "ab", "cdef"]),
    ('hello"${leading}" def', ["hello  ab c", "def"]),
    ('hello"${leading}"', ["hello  ab c"]),
    ("hello${leading}", ["hello", "ab", "c"]),
    ("hello${trailing}", ["helloab", "c"]),
    ("hello${trailing}d", ["helloab", "c", "d"]),
    ('hello"${trailing}"d', ["helloab c   d"]),
    ('hel"lo${trailing}"', ["helloab c   "]),
    ('hello" there  "', ["hello there  "]),
    ("hello there     ", ["hello", "there"]),
    ("hello\\ there", ["hello there"]),
    ('hello\\" there', ['hello"', "there"]),
    ('hello"\\\\there"', ["hello\\there"]),
    ('hello"\\there"', ["hello\\there"]),
    ("hello'\\\\there'", ["hello\\\\there"]),
    ("hello'\\there'", ["hello\\there"]),
    ("hello'$there'", ["hello$there"]),
    # --- lex.go: empty words are dropped, quoted or not
    ("", []),
    ("   ", []),
    ('""', []),
    ("'' a ''", ["a"]),
    ("$empty", []),
    ('"$empty"', []),
    ("a $empty b", ["a", "b"]),
    ("a${space:-x}b", ["aabc", "defb"]),  # a modifier's value splits as well
    ("a${nope:-x y}b", ["ax", "yb"]),
    ('a"${nope:-x y}"b', ["ax yb"]),
    ("${nope:-'x y'}", ["x", "y"]),  # quotes inside the word part do not protect
    ("a\tb\nc\u3000d\xa0e", ["a", "b", "c", "d", "e"]),  # Go's unicode.IsSpace
    ("a\x1cb", ["a\x1cb"]),  # not a Go space (though Python's isspace says so)
    ("a\\\tb", ["a\tb"]),
    # --- lex.go (newer BuildKit): `<<` keeps the blanks after it in the word
    ("cat <<  EOF", ["cat", "<<  EOF"]),
    ("cat <<\tEOF >x", ["cat", "<<\tEOF", ">x"]),
    ("a < b", ["a", "<", "b"]),
    ("a <<", ["a", "<<"]),
]


@pytest.mark.parametrize(("word", "expected"), WORDS_CASES)
def test_split_words(word, expected):
    assert split_words(word, WORDS_ENV) == expected


ERROR_CASES = [
    # (word, env, message after 'failed to process "<word>": ')
    # --- envVarTest / lex_test: every one of these is an error in BuildKit
    ("he'llo", {}, "unexpected end of statement while looking for matching single-quote"),
    ("he\\\\'llo", {}, "unexpected end of statement while looking for matching single-quote"),
    ('"hello', {}, "unexpected end of statement while looking for matching double-quote"),
    ('"hello\\"', {}, "unexpected end of statement while looking for matching double-quote"),
    ("'hello", {}, "unexpected end of statement while looking for matching single-quote"),
    ("${}", {}, "syntax error: bad substitution"),
    ("${}xx", {}, "syntax error: bad substitution"),
    ("he${}", {}, "syntax error: bad substitution"),
    ("${{aaa}", {}, "syntax error: bad substitution"),
    ("${:}", {}, "syntax error: bad substitution"),
    ("${:-x}", {}, "syntax error: bad substitution"),
    ("he${.}", {}, "unsupported modifier (.) in substitution"),
    ("he${XXX:YYY}", {}, "unsupported modifier (:Y) in substitution"),
    ("he${XXX?}", {}, "XXX: is not allowed to be unset"),
    ("he${XXX:?}", {}, "XXX: is not allowed to be unset"),
    ("he${NULL:?}", {"NULL": ""}, "NULL: is not allowed to be empty"),
    ("${VAR:?message here$ARG}", {"VAR": "", "ARG": "x"}, "VAR: message herex"),
    ("${VAR:?message here$ARG}", {"ARG": "x"}, "VAR: message herex"),
    ("${VAR?message here$ARG}", {"ARG": "x"}, "VAR: message herex"),
    ("he${PWD", {"PWD": "/"}, "unsupported modifier (\ufffd) in substitution"),
    ("he${PWD:=000}xx", {}, "unsupported modifier (:=) in substitution"),
    ("${FOO=aaa}", {"FOO": "x"}, "unsupported modifier (=) in substitution"),
    ("${FOO=:aaa}", {"FOO": "x"}, "unsupported modifier (=) in substitution"),
    ("${FOO//ww}", {"FOO": "x"}, "syntax error: missing '/' in ${}"),
    ("${FOO//}", {"FOO": "x"}, "syntax error: missing '/' in ${}"),
    # --- lex.go
    ("${", {}, "syntax error: missing '}'"),
    ("a${", {}, "syntax error: missing '}'"),
    ("${v:", {}, "syntax error: missing '}'"),
    ("${v:-x", {}, "syntax error: missing '}'"),
    ("${v-x", {}, "syntax error: missing '}'"),
    ("${v:-'x", {}, "syntax error: missing '}'"),  # EOF turns any inner error into this
    ("${v:-${w:?oops}", {}, "syntax error: missing '}'"),
    ("${v:-${w:?oops}}", {}, "w: oops"),
    ("${v:-'x}", {}, "syntax error: missing '}'"),
    ("${v:}", {}, "syntax error: missing '}'"),
    ("${v:}x}", {}, "unsupported modifier (:}) in substitution"),
    ("${v/x", {}, "syntax error: missing '/' in ${}"),
    ("${v/x/y", {}, "syntax error: missing '}'"),
    ("${#v}", {}, "unsupported modifier (v) in substitution"),
    ("${v:#x}", {"v": "x"}, "unsupported modifier (:#) in substitution"),
    ("${v:%x}", {"v": "x"}, "unsupported modifier (:%) in substitution"),
    ("${v:/x/y}", {"v": "x"}, "unsupported modifier (:/) in substitution"),
    ("${v:0:1}", {"v": "x"}, "unsupported modifier (:0) in substitution"),
    ("${v#\\q}", {"v": "x"}, "invalid pattern (\\q) in substitution: invalid escape '\\q'"),
    # the suffix pattern is reported reversed, as BuildKit does
    ("${v%a\\x}", {"v": "x"}, "invalid pattern (\\xa) in substitution: invalid escape '\\x'"),
    ("${v/\\q/}", {"v": "x"}, "invalid pattern (\\q) in substitution: invalid escape '\\q'"),
    ("${v#$p}", {"v": "x", "p": "\\"},
     "invalid pattern (\\) in substitution: invalid escape '\\\ufffd'"),
    # the quote swallows the closing brace; at EOF that is reported as a missing }
    ("${v?it's unset}", {}, "syntax error: missing '}'"),
]


@pytest.mark.parametrize(("word", "env", "message"), ERROR_CASES)
def test_expand_errors(word, env, message):
    with pytest.raises(DockerfileError) as info:
        expand(word, env)
    assert str(info.value) == info.value.message
    assert info.value.message.startswith("failed to process ")
    assert info.value.message.endswith(": " + message)
    assert info.value.line is None and info.value.file is None


@pytest.mark.parametrize(("word", "env", "message"), ERROR_CASES[:12])
def test_split_words_errors(word, env, message):
    with pytest.raises(DockerfileError, match="failed to process"):
        split_words(word, env)


def test_error_quotes_the_word_like_go():
    # errors.Wrapf(err, "failed to process %q", word): Go's strconv.Quote
    with pytest.raises(DockerfileError) as info:
        expand('a"\\\t\x01é\u200b${x:?}', {})
    assert info.value.message == (
        'failed to process "a\\"\\\\\\t\\x01é\\u200b${x:?}": x: is not allowed to be unset')


def test_error_can_be_placed_in_a_file():
    with pytest.raises(DockerfileError) as info:
        expand("${v:?required}", {})
    placed = info.value.at(file="Dockerfile", line=3, column=5, source_line="ENV a=${v:?required}")
    assert str(placed).startswith('Dockerfile:3:5: failed to process "${v:?required}": v: required')


def test_question_mark_rules():
    # lex_test TestShellParserMandatoryEnvVars
    assert expand("${VAR:?message here$ARG}", {"VAR": "plain", "ARG": "x"}) == "plain"
    assert expand("${VAR?message here$ARG}", {"VAR": "plain", "ARG": "x"}) == "plain"
    assert expand("${VAR?message here$ARG}", {"VAR": "", "ARG": "x"}) == ""


def test_nested_expansions_are_evaluated_even_when_unused():
    # lex.go: the word part is processed before the variable is looked at, so an
    # error inside it surfaces even though ${v:-...} would not use it
    with pytest.raises(DockerfileError, match="w: must be set"):
        expand("${v:-${w:?must be set}}", {"v": "set"})
    assert expand("${v:+${w:-x}}", {}) == ""


def test_escape_before_newline_and_special_chars():
    assert expand("a\\\nb", {}) == "a\nb"
    assert expand("\\'\\\"\\$\\\\", {}) == "'\"$\\"
    assert expand("\\<\\<  x", {}) == "<<  x"


def test_byte_order_mark_at_start_is_ignored():
    # Go's text/scanner skips a BOM at the very start of the input
    assert expand("\ufeffa$X", {"X": "b"}) == "ab"
    assert expand("a\ufeff$X", {"X": "b"}) == "a\ufeffb"


def test_env_none_and_non_string_keys_are_fine():
    assert expand("a${X:-d}", None) == "ad"
    assert split_words("a $X", None) == ["a"]


def test_escape_must_be_one_character():
    with pytest.raises(ValueError):
        expand("a", {}, escape="")
    with pytest.raises(ValueError):
        split_words("a", {}, escape="\\\\")


# --- the flags BuildKit sets for other uses of the lexer

def test_skip_unset_keeps_references_as_written():
    # lex.go (SkipUnsetEnv): the reference is rebuilt from name, modifier and word
    env = {"SET": "v"}
    assert expand("$A ${B} ${C:-x} ${D#p} ${E//p/r} $SET ${SET:-x}", env,
                  skip_unset=True) == "$A ${B} ${C:-x} ${D#p} ${E/p/r} v v"
    assert expand("${A:-$SET}", env, skip_unset=True) == "${A:-v}"
    assert expand("${A:?}", env, skip_unset=True) == "${A:?}"


def test_raw_quotes_and_escapes():
    assert expand("'a'\"b\"", {}, raw_quotes=True) == "'a'\"b\""
    assert expand("a\\ b", {}, raw_escapes=True) == "a\\ b"
    # lex.go: a non-special escape in double quotes is written twice with raw escapes
    assert expand('"a\\b"', {}, raw_escapes=True) == 'a\\\\b'
    assert expand('"a\\"b"', {}, raw_escapes=True, raw_quotes=True) == '"a\\"b"'


def test_heredoc_detection_flags():
    # parser.go heredocsFromLine: RawQuotes + RawEscapes + SkipUnsetEnv on ProcessWords
    flags = {"raw_quotes": True, "raw_escapes": True, "skip_unset": True}
    assert split_words('RUN cat <<"EOF" >x', {}, **flags) == ["RUN", "cat", '<<"EOF"', ">x"]
    assert split_words("COPY <<  $EOF /dst", {}, **flags) == ["COPY", "<<  $EOF", "/dst"]
    assert split_words("RUN <<eo\\'f", {}, **flags) == ["RUN", "<<eo\\'f"]
    # the quote-count trick of heredocFromMatch
    assert split_words("eo'f'", {}) == ["eof"]
    assert split_words("eo'f'", {}, raw_quotes=True) == ["eo'f'"]


def test_process_quotes_false_only_substitutes():
    # convert.go ExpandRaw (heredoc bodies): SkipProcessQuotes
    body = "echo '$A' \"$A\" ${B:-'x'}\n"
    assert expand(body, {"A": "1"}, process_quotes=False) == "echo '1' \"1\" 'x'\n"
    assert referenced_names(body, process_quotes=False) == {"A", "B"}


# --- referenced_names

REFERENCED_CASES = [
    ("plain", set()),
    ("'$A'", set()),
    ("\\$A", set()),
    ("$A", {"A"}),
    ('"$A"', {"A"}),
    ("${A}b$C", {"A", "C"}),
    ("${A:-$B}", {"A", "B"}),
    ("${A:+${B:-${C}}}", {"A", "B", "C"}),
    ("${A#$B}${C%%$D}", {"A", "B", "C", "D"}),
    ("${A//$B/$C}", {"A", "B", "C"}),
    ("${A:?$B}", {"A", "B"}),
    ("$1 $@ ${#}", {"1", "@", "#"}),
    ("$ $. $'A'", set()),
]


@pytest.mark.parametrize(("word", "expected"), REFERENCED_CASES)
def test_referenced_names(word, expected):
    assert referenced_names(word) == frozenset(expected)


def test_referenced_names_with_backtick_escape():
    assert referenced_names("`$A $B", "`") == {"B"}
    assert referenced_names("\\$A", "`") == {"A"}


def test_referenced_names_rejects_malformed_words():
    with pytest.raises(DockerfileError):
        referenced_names("${A")
    with pytest.raises(DockerfileError):
        referenced_names("${A#\\q}")


def test_referenced_names_cover_what_expand_reads():
    word = "${A:-x}${B#$C}${D/$E/$F}$G"

    class Recording(dict):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __contains__(self, key):
            self.seen.add(key)
            return False

    env = Recording()
    expand(word, env)
    assert env.seen == referenced_names(word)


def test_package_reexports():
    assert grammar.expand is expand
    assert grammar.split_words is split_words


def test_deep_nesting_is_a_dockerfile_error():
    word = "${A:-" * 2000 + "x" + "}" * 2000
    with pytest.raises(DockerfileError):
        expand(word, {})
    shallow = "${A:-" * 50 + "x" + "}" * 50
    assert expand(shallow, {}) == "x"


# --- differential test against a real peer: buildah (imagebuilder) runs LABEL values
# through its vendored copy of the Docker/BuildKit shell lexer. Debian's buildah 1.28
# vendors an older lexer (no special parameters, no `?`/`#`/`%`/`/` modifiers, and it
# ignores `# escape=`), so only the core both versions share is compared here.

ORACLE_ENV = {"PWD": "/home", "NULL": "", "KOREAN": "한국어", "SHELL": "bash"}
ORACLE_WORDS = [
    r"he'll'o", r'"he\$PWD"', r"he${XXX:-${PWD:-yyy}}xx", r"he${XXX:-\${PWD}z}xx",
    r"${aaa:-\}\}}", r'"he\\$PWD"', r"$.a", r"he$1x", r'"abc\tdef"', r'"abc\\tdef"',
    r"'abc\tdef'", r"he\'llo", r"abc\tdef", r'''"''"''', r"""'"hello"'""", r"'he${XX}'",
    r'''"he'$PWD'"''', r"he${PWD:+${SHELL}}xx", r"he${NULL:-d}", r"he${NULL:+d}x",
    r"${aaa}}}", "안'녕'하세요", "안녕\\t하세요", r"$KOREAN", r"\${}aaa", r'"a\"b"',
    r'"a\b"', r"'$PWD'", r'"$PWD"', r"a${PWD:-'}'}b", r'${XXX:-"a\"b"}',
    r"${XXX:-'$PWD'}", r'"${XXX:-\$x}"', r"he${XXX:-$PWD}xx", r"a\$b\\c\d", r'"a$"b',
    r"$", r'"x$"', r"a\ b", r"'a b'", r'"${SHELL} ${PWD}"',
]


@pytest.mark.root
def test_expand_agrees_with_buildah(tmp_path):
    import json
    import subprocess

    from tests.conftest import require_tool

    buildah = require_tool("buildah")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    lines = ["FROM scratch", "ARG PWD=/home", "ARG NULL=", "ARG KOREAN=한국어",
             "ENV SHELL=bash"]
    lines += [f"LABEL k{i:03d}={word}" for i, word in enumerate(ORACLE_WORDS)]
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = [buildah, "--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "run"),
            "--storage-driver", "vfs"]
    subprocess.run(base + ["bud", "--isolation", "chroot", "-q", "-t", "shell-oracle",
                           str(ctx)], check=True, capture_output=True, timeout=120)
    out = subprocess.run(base + ["inspect", "shell-oracle"], check=True,
                         capture_output=True, timeout=60).stdout
    labels = json.loads(out)["OCIv1"]["config"]["Labels"]
    for i, word in enumerate(ORACLE_WORDS):
        assert expand(word, ORACLE_ENV) == labels[f"k{i:03d}"], word
    # and both reject unterminated quotes
    for bad in ("he'llo", '"hello'):
        (ctx / "Dockerfile").write_text(f"FROM scratch\nLABEL a={bad}\n", encoding="utf-8")
        done = subprocess.run(base + ["bud", "--isolation", "chroot", "-q", str(ctx)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert "unexpected end of statement while looking for matching" in done.stderr
        with pytest.raises(DockerfileError, match="unexpected end of statement"):
            expand(bad, {})
