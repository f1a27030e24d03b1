"""Properties of `grammar.parse` and `grammar.dump` over generated input.

- Nothing but DockerfileError ever escapes `parse`, for arbitrary text and for
  arbitrary mutations of valid Dockerfiles.
- Whatever parses has sane spans and dumps to one line per instruction.
- Structured instructions rendered to text parse back to the same values.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, assume, given, settings, strategies as st

from lamina.grammar import DockerfileError, dump, parse
from lamina.grammar import ast
from lamina.grammar.dump import go_quote

SETTINGS = settings(max_examples=int(__import__("os").environ.get("GRAMMAR_EXAMPLES", "250")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that matter to the Dockerfile grammar, plus some that matter to Go.
SPECIAL = list("\\`\"'=[]{},:#$<-\t \n\r\v\f") + ["\u00a0", "\u2028", "\ufeff", "\x00", "\x85", "é"]
TOKENS = ["FROM ", "RUN ", "COPY ", "ADD ", "ENV ", "ARG ", "ONBUILD ", "HEALTHCHECK ", "CMD ", "SHELL ",
          "LABEL ", "EXPOSE ", "VOLUME ", "USER ", "WORKDIR ", "STOPSIGNAL ", "ENTRYPOINT ", "MAINTAINER ",
          "--mount=type=cache,target=/x ", "--from=a ", "--link ", "--chown=1:1 ", "-- ", "<<EOF", "<<-EOF",
          '<<"EOF"', "3<<EOF", "EOF\n", "\tEOF\n", "\\\n", "`\n", "# escape=`\n", "# syntax=x\n",
          '["a", "b"]', "[1]", "a=b ", 'k="v w" ', "NONE", "CMD ", "AS ", "\n", "\r\n"]

fragments = st.one_of(st.sampled_from(SPECIAL), st.sampled_from(TOKENS), st.text(max_size=4))
dockerfile_like = st.lists(fragments, max_size=40).map("".join)

VALID = [
    "FROM a\nRUN echo hi\n",
    "# syntax=docker/dockerfile:1\n# escape=`\nFROM a AS b\nRUN x `\n  y\nCOPY --from=b /x /y\n",
    "FROM a\nRUN <<EOF\nset -e\necho $HOME\nEOF\nCOPY <<-\"X\" /f\n\tbody\n\tX\n",
    "ARG V=1\nFROM img:$V\nENV A=1 B=\"2 3\"\nLABEL l=v\nEXPOSE 80\nUSER u\nWORKDIR /w\n",
    "FROM a\nONBUILD RUN x\nHEALTHCHECK --interval=5s CMD [\"true\"]\nSHELL [\"sh\", \"-c\"]\n"
    "CMD [\"a\"]\nENTRYPOINT e\nVOLUME /v\nSTOPSIGNAL 9\nMAINTAINER m\n",
    "FROM a\nRUN --mount=type=secret,id=x --network=none \\\n  # comment\n\n  cat /run/secrets/x\n",
]


def check(text: str) -> ast.Dockerfile | None:
    try:
        df = parse(text, path="Dockerfile")
    except DockerfileError as err:
        assert err.file == "Dockerfile"
        assert err.message
        str(err)  # renders without failing
        return None
    line_count = len(text.lstrip("\ufeff").split("\n"))
    previous_end = 0
    for instruction in df.instructions:
        assert previous_end < instruction.span.start <= instruction.span.end <= line_count
        previous_end = instruction.span.end
    dumped = dump(df)
    lines = dumped.split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == len(df.instructions)
    for line, instruction in zip(lines, df.instructions):
        assert line.startswith("(" + instruction.keyword.lower())
    return df


@SETTINGS
@given(st.text())
def test_arbitrary_text_only_raises_dockerfile_error(text):
    check(text)


@SETTINGS
@given(dockerfile_like)
def test_dockerfile_like_text_only_raises_dockerfile_error(text):
    check(text)


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(fragments)
        if kind == "insert":
            text = text[:at] + piece + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 5)):]
        else:
            text = text[:at] + piece + text[at + len(piece):]
    return text


@SETTINGS
@given(mutated())
def test_mutated_valid_dockerfiles_only_raise_dockerfile_error(text):
    check(text)


def test_valid_corpus_parses():
    for text in VALID:
        assert check(text) is not None


# -- structured round trips -----------------------------------------------------

words = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters="\\`\"'=#[<"),
                min_size=1, max_size=12)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)


@SETTINGS
@given(st.lists(st.text(max_size=10), max_size=6), st.booleans(),
       st.sampled_from(["CMD", "ENTRYPOINT", "RUN", "SHELL"]))
def test_exec_form_round_trip(args, ascii_only, keyword):
    assume(keyword not in ("RUN", "SHELL") or args)
    text = f"FROM a\n{keyword} {json.dumps(args, ensure_ascii=ascii_only)}\n"
    df = parse(text)
    instruction = df.instructions[1]
    got = instruction.args if keyword == "SHELL" else instruction.command.args
    assert got == tuple(args)
    expected = f"({keyword.lower()}" + "".join(" " + go_quote(a) for a in args) + ")\n"
    assert dump(df).split("\n", 1)[1] == expected


@SETTINGS
@given(st.lists(st.tuples(names, words), min_size=1, max_size=5), st.sampled_from(["ENV", "LABEL"]))
def test_key_value_round_trip(pairs, keyword):
    text = f"FROM a\n{keyword} " + " ".join(f"{k}={v}" for k, v in pairs)
    instruction = parse(text).instructions[1]
    assert instruction.pairs == tuple(ast.KeyValue(k, v, False) for k, v in pairs)


@SETTINGS
@given(st.lists(st.tuples(names, st.none() | words), min_size=1, max_size=5))
def test_arg_round_trip(decls):
    text = "ARG " + " ".join(n if d is None else f"{n}={d}" for n, d in decls) + "\nFROM a"
    assert parse(text).instructions[0].args == tuple(ast.ArgDecl(n, d) for n, d in decls)


@SETTINGS
@given(st.lists(words.filter(lambda w: not w.startswith("-")), min_size=1, max_size=8),
       st.lists(st.integers(0, 1), min_size=8, max_size=8), st.sampled_from(["\\", "`"]))
def test_continuations_split_anywhere_between_words(parts, breaks, escape):
    # joining words with " " or " <escape>\n" gives the same shell-form text,
    # apart from the spaces the continuation keeps
    assume(not any(escape in p for p in parts))
    text = parts[0]
    expected = parts[0]
    for part, brk in zip(parts[1:], breaks):
        text += f" {escape}\n" if brk else " "
        expected += " "
        text += part
        expected += part
    df = parse(f"# escape={escape}\nFROM a\nRUN {text}\n")
    assert df.instructions[1].command == ast.ShellForm(expected)
    assert df.instructions[1].span == ast.Span(3, 3 + sum(breaks[: len(parts) - 1]))


@SETTINGS
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
                        max_size=20), max_size=6),
       names.filter(lambda n: n.upper() == n), st.booleans())
def test_heredoc_body_is_kept_verbatim(body_lines, delimiter, strip):
    assume(all(line.lstrip("\t") != delimiter for line in body_lines))
    body = "".join(line + "\n" for line in body_lines)
    marker = f"<<-{delimiter}" if strip else f"<<{delimiter}"
    df = parse(f"FROM a\nRUN cat {marker}\n{body}{delimiter}\nCMD x\n")
    (doc,) = df.instructions[1].heredocs
    assert doc.body == body and doc.delimiter == delimiter and doc.strip_tabs == strip
    assert df.instructions[2].span.start == 4 + len(body_lines)
