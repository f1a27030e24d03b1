"""Exec (JSON) form vs shell form of every JSON-capable instruction, when the JSON
array is followed by more text on the line (`ENTRYPOINT ["x"] # a comment`).

What BuildKit does, read in moby/buildkit frontend/dockerfile/parser/line_parsers.go:
`parseJSON` decodes the argument text with `json.Unmarshal`, which fails on anything
but whitespace after the array ("invalid character '#' after top-level value"), so

- RUN, CMD, ENTRYPOINT, HEALTHCHECK CMD (`parseMaybeJSON`): the whole text becomes
  the shell form (node value = the raw text, later `/bin/sh -c <text>`);
- COPY, ADD, VOLUME (`parseMaybeJSONToList`): the text is split on whitespace;
- SHELL (`parseMaybeJSON`, then instructions.parseShell): "SHELL requires the
  arguments to be in JSON form".

Until dockerfile frontend 1.10.0 `parseJSON` used `json.NewDecoder(...).Decode`,
which reads the first JSON value and ignores what follows — exec form. BuildKit
changed it on purpose (commit 80518e257 "dockerfile: fix invalid usage of
json.NewDecoder", July 2024) and pins the new behaviour in its integration test
testInvalidJSONCommands: `ENTRYPOINT []random string` gives the image entrypoint
["/bin/sh", "-c", "[]random string"], and `RUN ["echo", "hello"]this is invalid`
fails running the shell form. lamina follows current BuildKit; Debian 12's docker.io
(20.10, BuildKit 0.8) still has the old frontend (see tests/builder/
test_differential_buildkit.py, where this is a listed difference of that oracle).

The dump lines are BuildKit's Node.Dump of those nodes: `(keyword "value")` with the
raw text as one Go-quoted value for the shell form, one per word for the lists.
"""

from __future__ import annotations

import pytest

from lamina.grammar import DockerfileError, ast, parse
from lamina.grammar.dump import dump


def one(line: str) -> ast.Instruction:
    df = parse("FROM scratch\n" + line + "\n")
    assert len(df.instructions) == 2
    return df.instructions[1]


def dump_line(line: str) -> str:
    return dump(parse("FROM scratch\n" + line + "\n")).splitlines()[1]


# ------------------------------------------------------------------ shell-form commands

@pytest.mark.parametrize("line, text", [
    ('ENTRYPOINT ["myentrypoint"] # the entrypoint', '["myentrypoint"] # the entrypoint'),
    ('CMD ["run", "--fast"] # default args', '["run", "--fast"] # default args'),
    ('RUN ["echo", "hello"]this is invalid', '["echo", "hello"]this is invalid'),
    ('ENTRYPOINT []random string', "[]random string"),
    ('CMD ["a"] ["b"]', '["a"] ["b"]'),       # two JSON values: not one array either
    ('CMD ["a"],', '["a"],'),
])
def test_json_then_more_text_is_the_shell_form(line, text):
    inst = one(line)
    assert inst.command == ast.ShellForm(text)


@pytest.mark.parametrize("line, dumped", [
    ('ENTRYPOINT ["myentrypoint"] # the entrypoint',
     '(entrypoint "[\\"myentrypoint\\"] # the entrypoint")'),
    ('RUN ["echo", "hello"]this is invalid', '(run "[\\"echo\\", \\"hello\\"]this is invalid")'),
    ('HEALTHCHECK CMD ["true"] # probe', '(healthcheck "CMD" "[\\"true\\"] # probe")'),
])
def test_dump_of_the_shell_form_is_the_raw_text(line, dumped):
    assert dump_line(line) == dumped


def test_healthcheck_cmd_followed_by_text_is_cmd_shell():
    inst = one('HEALTHCHECK --interval=5s CMD ["curl", "-f", "http://x/"] || exit 1')
    assert isinstance(inst, ast.Healthcheck)
    assert inst.command == ast.ShellForm('["curl", "-f", "http://x/"] || exit 1')


# ------------------------------------------------------------------ what still is exec form

@pytest.mark.parametrize("line, args", [
    ('ENTRYPOINT ["myentrypoint"]', ("myentrypoint",)),
    ('CMD ["a", "b"]   ', ("a", "b")),                 # trailing blanks: Unmarshal skips them
    ('CMD ["a", "b"]\t', ("a", "b")),
    ('RUN   [ "echo" ,"x" ]', ("echo", "x")),          # JSON whitespace inside
    ('HEALTHCHECK CMD ["true"]', ("true",)),
])
def test_a_whole_json_array_is_the_exec_form(line, args):
    assert one(line).command == ast.ExecForm(args)


@pytest.mark.parametrize("line, dumped", [
    ('ENTRYPOINT ["myentrypoint"]', '(entrypoint "myentrypoint")'),
    ('CMD ["a", "b"]   ', '(cmd "a" "b")'),
    ('SHELL ["/bin/bash", "-o", "pipefail", "-c"]', '(shell "/bin/bash" "-o" "pipefail" "-c")'),
])
def test_dump_of_the_exec_form(line, dumped):
    assert dump_line(line) == dumped


# ------------------------------------------------------------------ lists and SHELL

@pytest.mark.parametrize("line, words, dumped", [
    ('COPY ["a b", "/dst/"] # both', ('["a', 'b",', '"/dst/"]', "#", "both"),
     '(copy "[\\"a" "b\\"," "\\"/dst/\\"]" "#" "both")'),
    ('ADD ["src", "/dst"] x', ('["src",', '"/dst"]', "x"),
     '(add "[\\"src\\"," "\\"/dst\\"]" "x")'),
    ('VOLUME ["/data"] # the data', ('["/data"]', "#", "the", "data"),
     '(volume "[\\"/data\\"]" "#" "the" "data")'),
])
def test_lists_followed_by_text_split_on_whitespace(line, words, dumped):
    assert one(line).words == words
    assert dump_line(line) == dumped


def test_lists_in_whole_json_form():
    copy = one('COPY ["a b", "/dst/"]')
    assert copy.words == ("a b", "/dst/")
    assert one('VOLUME ["/data", "/logs"]  ').words == ("/data", "/logs")


def test_shell_followed_by_text_is_an_error():
    with pytest.raises(DockerfileError, match="SHELL requires the arguments to be in JSON form"):
        parse('FROM scratch\nSHELL ["/bin/sh", "-c"] # posix\n')


def test_a_json_array_of_non_strings_is_an_error_not_a_shell_form():
    # parseJSON's errDockerfileNotStringArray is returned, not a fallback
    with pytest.raises(DockerfileError, match="arrays must be comprised of strings only"):
        parse('FROM scratch\nCMD ["a", 1]\n')
    # ... but only when the whole text is one JSON value: with trailing text, shell form
    assert one('CMD ["a", 1] # n').command == ast.ShellForm('["a", 1] # n')
