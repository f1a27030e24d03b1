"""Physical-line handling: directives, comments, continuations, heredocs, spans.

Behaviour as BuildKit's parser.Parse: directives only at the very top, the
escape directive changes the continuation character, comment and blank lines
inside a continuation are skipped, a continuation may run into the end of the
file, heredoc bodies follow the instruction line.
"""

from __future__ import annotations

import pytest

from lamina.grammar import DockerfileError, dump, parse
from lamina.grammar import ast


# -- directives ---------------------------------------------------------------

def test_directives_at_the_top():
    df = parse("# syntax=docker/dockerfile:1.7\n#  Escape = `\n# check=skip=JSONArgsRecommended;error=true\n"
               "FROM a\n")
    assert df.directives == (ast.Directive("syntax", "docker/dockerfile:1.7", 1),
                             ast.Directive("escape", "`", 2),
                             ast.Directive("check", "skip=JSONArgsRecommended;error=true", 3))
    assert df.escape == "`"
    assert df.directive("check") == "skip=JSONArgsRecommended;error=true"
    assert df.directive("nothing") is None


@pytest.mark.parametrize("text", [
    "# a comment\n# escape=`\nFROM a",          # after a comment
    "\n# escape=`\nFROM a",                     # after a blank line
    "FROM a\n# escape=`\nRUN x",                # after an instruction
    "# unknown=1\n# escape=`\nFROM a",          # after an unknown directive
])
def test_directives_not_at_the_top_are_comments(text):
    df = parse(text)
    assert df.escape == "\\"
    assert all(d.name != "escape" for d in df.directives)


def test_unknown_directive_is_a_comment():
    df = parse("# foo=bar\nFROM a")
    assert df.directives == ()


@pytest.mark.parametrize("text, line", [
    ("# syntax=a\n# syntax=b\nFROM a", 2),
    ("# escape=\\\n# SYNTAX=x\n# Escape=`\nFROM a", 3),
])
def test_repeated_directive_is_an_error(text, line):
    with pytest.raises(DockerfileError, match="only one (syntax|escape) parser directive can be used") as err:
        parse(text)
    assert err.value.line == line and err.value.column == 1


def test_invalid_escape_token():
    with pytest.raises(DockerfileError, match="invalid escape token '/' does not match ` or"):
        parse("# escape=/\nFROM a")


def test_backtick_escape_continuation():
    df = parse("# escape=`\nFROM a\nRUN dir c:\\ `\n    && echo done\nCOPY a\\ b `\n c:\\dst\\\n")
    run, copy = df.instructions[1:]
    assert run.command == ast.ShellForm("dir c:\\     && echo done")
    assert run.span == ast.Span(3, 4)
    # with ` as escape a trailing backslash is a plain character
    assert copy.sources == ("a\\", "b") and copy.dest == "c:\\dst\\"


def test_backtick_escape_in_env_words():
    df = parse("# escape=`\nFROM a\nENV A=x`\"y B=\"q\\\"\"")
    assert df.instructions[1].pairs == (ast.KeyValue("A", 'x`"y', False), ast.KeyValue("B", '"q\\""', False))


# -- comments and continuations -----------------------------------------------------

def test_comments_and_blank_lines_are_skipped():
    df = parse("# hello\n\n   # indented comment\nFROM a\n\n\nRUN x # not a comment\n")
    assert [i.span for i in df.instructions] == [ast.Span(4, 4), ast.Span(7, 7)]
    # a # after the keyword is part of the arguments, not a comment
    assert df.instructions[1].command == ast.ShellForm("x # not a comment")


def test_continuation_joins_lines_keeping_spacing():
    df = parse("FROM a\nRUN apt-get update \\\n    && apt-get install -y \\\n        curl\n")
    run = df.instructions[1]
    assert run.command == ast.ShellForm("apt-get update     && apt-get install -y         curl")
    assert run.span == ast.Span(2, 4)
    assert run.source == "RUN apt-get update \\\n    && apt-get install -y \\\n        curl"


def test_comment_and_blank_lines_inside_a_continuation():
    df = parse("FROM a\nRUN a \\\n# comment\n    # indented comment\n\n   \nb\nCMD c")
    assert df.instructions[1].command == ast.ShellForm("a b")
    assert df.instructions[1].span == ast.Span(2, 7)
    assert df.instructions[2].span == ast.Span(8, 8)


def test_continuation_at_end_of_file():
    df = parse("FROM alpine:3.5\n\nRUN something \\")
    assert df.instructions[1].command == ast.ShellForm("something")


def test_escaped_escape_is_not_a_continuation():
    df = parse("FROM a\nRUN echo \\\\\nCMD b")
    assert df.instructions[1].command == ast.ShellForm("echo \\\\")
    assert isinstance(df.instructions[2], ast.Cmd)


def test_continuation_with_trailing_whitespace():
    df = parse("FROM a\nRUN a \\  \t\n  b")
    assert df.instructions[1].command == ast.ShellForm("a   b")


def test_continuation_between_flags():
    df = parse("FROM a\nCOPY --chown=1:1 \\\n  --chmod=644 \\\n  src /dst")
    assert [f.name for f in df.instructions[1].flags] == ["chown", "chmod"]


def test_crlf_and_bom():
    df = parse("\ufeff# syntax=x\r\nFROM a\r\nRUN b \\\r\n c\r\n")
    assert df.directives == (ast.Directive("syntax", "x", 1),)
    assert df.instructions[1].command == ast.ShellForm("b  c")


def test_leading_whitespace_before_keyword():
    df = parse("   FROM a\n\tRUN b")
    assert [i.keyword for i in df.instructions] == ["FROM", "RUN"]


# -- heredocs -------------------------------------------------------------------------

def test_run_heredoc():
    df = parse("FROM a\nRUN <<EOF\napt-get update\napt-get install -y vim\nEOF\nCMD x\n")
    run = df.instructions[1]
    assert run.command == ast.ShellForm("<<EOF")
    assert run.heredocs == (ast.Heredoc("EOF", "apt-get update\napt-get install -y vim\n", True, False, None),)
    assert run.span == ast.Span(2, 5)
    assert df.instructions[2].span == ast.Span(6, 6)


def test_heredoc_with_program_and_quoted_delimiters():
    df = parse('FROM a\nRUN python3 <<"PY" && sh <<\'SH\'\nprint("$x")\nPY\necho $y\nSH\n')
    docs = df.instructions[1].heredocs
    assert [(d.delimiter, d.body, d.expand) for d in docs] == [("PY", 'print("$x")\n', False),
                                                                ("SH", "echo $y\n", False)]


def test_heredoc_strip_tabs_and_fd():
    df = parse("FROM a\nRUN 3<<-EOF cat /dev/fd/3\n\tone\n\t\ttwo\n\tEOF\n")
    (doc,) = df.instructions[1].heredocs
    assert doc.fd == 3 and doc.strip_tabs
    assert doc.body == "\tone\n\t\ttwo\n"
    assert doc.content == "one\ntwo\n"


def test_copy_heredocs_and_lookup():
    df = parse("FROM a\nCOPY <<one.txt <<two.txt /dst/\nfirst\none.txt\nsecond\ntwo.txt\n")
    copy = df.instructions[1]
    assert copy.sources == ("<<one.txt", "<<two.txt") and copy.dest == "/dst/"
    assert [d.delimiter for d in copy.heredocs] == ["one.txt", "two.txt"]
    assert copy.heredoc_for("<<two.txt").body == "second\n"
    assert copy.heredoc_for("plain") is None


def test_add_heredoc_and_onbuild_heredoc():
    df = parse("FROM a\nADD <<EOF /x\nhi\nEOF\nONBUILD RUN <<EOF\necho\nEOF\n")
    assert df.instructions[1].heredocs[0].body == "hi\n"
    onbuild = df.instructions[2]
    assert onbuild.instruction.heredocs[0].body == "echo\n"
    assert onbuild.span == ast.Span(5, 7)


def test_no_heredoc_for_exec_form_or_other_instructions():
    df = parse('FROM a\nRUN ["cat", "<<EOF"]\nCMD cat <<EOF\nENV A=<<EOF\n')
    assert df.instructions[1].heredocs == ()
    assert len(df.instructions) == 4


def test_heredoc_marker_inside_quotes_is_not_a_heredoc():
    df = parse("FROM a\nRUN echo '<<EOF' \"<<X\"\nCMD y")
    assert df.instructions[1].heredocs == ()


def test_heredoc_body_lines_are_not_instructions_or_comments():
    df = parse("FROM a\nRUN <<EOF\n# not a comment\nFROM not-an-instruction\n\\\nEOF\n")
    assert len(df.instructions) == 2
    assert df.instructions[1].heredocs[0].body == "# not a comment\nFROM not-an-instruction\n\\\n"


def test_heredoc_keeps_crlf_and_terminator_may_end_file():
    df = parse("FROM a\r\nRUN <<EOF\r\nx\r\nEOF")
    assert df.instructions[1].heredocs[0].body == "x\r\n"


def test_heredoc_opened_on_continuation_line():
    df = parse("FROM a\nRUN cat \\\n  <<EOF\nbody\nEOF\n")
    assert df.instructions[1].heredocs[0].body == "body\n"
    assert df.instructions[1].span == ast.Span(2, 5)


def test_unterminated_heredoc_points_at_the_marker():
    with pytest.raises(DockerfileError, match="unterminated heredoc") as err:
        parse("FROM a\nRUN cat \\\n  <<EOF\nbody\n")
    assert (err.value.line, err.value.column) == (3, 3)
    assert err.value.source_line == "  <<EOF"


def test_heredoc_destination_is_an_error():
    with pytest.raises(DockerfileError, match="COPY cannot accept a heredoc as a destination"):
        parse("FROM a\nCOPY x <<EOF\nEOF\n")


def test_dump_omits_comments_directives_and_heredoc_bodies():
    text = "# syntax=x\n# comment\nFROM a\nRUN <<EOF\nbody\nEOF\n"
    assert dump(parse(text)) == '(from "a")\n(run "<<EOF")\n'
