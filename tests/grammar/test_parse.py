"""Instructions, flags and argument forms: the AST `grammar.parse` builds.

Expected values follow BuildKit's parser (frontend/dockerfile/parser) and the
Dockerfile reference: ENV/LABEL keep quotes in values, ARG keeps them in
defaults, shell form keeps the text after the flags, exec form decodes JSON.
"""

from __future__ import annotations

import pytest

from lamina.grammar import DockerfileError, parse
from lamina.grammar import ast


def only(text: str) -> ast.Instruction:
    """The single instruction after a leading FROM."""
    df = parse("FROM scratch\n" + text)
    assert len(df.instructions) == 2
    return df.instructions[1]


# -- FROM ---------------------------------------------------------------------

def test_from_image_only():
    i = parse("FROM alpine:3.19").instructions[0]
    assert isinstance(i, ast.From)
    assert (i.keyword, i.image, i.name, i.flags) == ("FROM", "alpine:3.19", None, ())
    assert i.span == ast.Span(1, 1)
    assert i.source == "FROM alpine:3.19"


def test_from_as_name_is_case_insensitive_and_lowercased():
    i = parse("from --platform=$BUILDPLATFORM golang:1.22 As Builder").instructions[0]
    assert i.image == "golang:1.22"
    assert i.name == "builder"
    assert i.flags == (ast.Flag("platform", "$BUILDPLATFORM"),)
    assert i.flag("platform") == "$BUILDPLATFORM"


@pytest.mark.parametrize("text", ["FROM a b", "FROM a AS", "FROM a AS b c", "FROM a FOR b"])
def test_from_argument_count(text):
    with pytest.raises(DockerfileError, match="FROM requires either one or three arguments"):
        parse(text)


# -- RUN / CMD / ENTRYPOINT / SHELL ----------------------------------------------

def test_run_shell_form_keeps_text_after_flags():
    i = only("RUN   apt-get update &&  apt-get install -y curl   ")
    assert isinstance(i, ast.Run)
    assert i.command == ast.ShellForm("apt-get update &&  apt-get install -y curl")
    assert i.heredocs == ()


def test_run_exec_form():
    i = only('RUN ["/bin/sh", "-c", "echo \\"hi\\" \\u00e9"]')
    assert i.command == ast.ExecForm(("/bin/sh", "-c", 'echo "hi" é'))


@pytest.mark.parametrize("text, expected", [
    ('RUN [ "a", ]', '[ "a", ]'),             # trailing comma: not JSON
    ("RUN ['a']", "['a']"),                   # single quotes: not JSON
    ('RUN ["a"] && b', '["a"] && b'),         # trailing text
    ('RUN [1e999]', "[1e999]"),               # Go cannot decode the number
    ('RUN ["a\tb"]', '["a\tb"]'),            # raw control character in a JSON string
    ("RUN [", "["),
])
def test_invalid_json_falls_back_to_shell_form(text, expected):
    assert only(text).command == ast.ShellForm(expected)


@pytest.mark.parametrize("text", ['RUN ["a", 1]', 'CMD [null]', 'ENTRYPOINT [["a"]]', 'RUN [{"a": "b"}]',
                                  'COPY ["a", true]', 'SHELL ["sh", 2]'])
def test_json_with_non_strings_is_an_error(text):
    with pytest.raises(DockerfileError, match="arrays must be comprised of strings only"):
        only(text)


def test_run_flags_mount_network_security():
    i = only("RUN --mount=type=cache,target=/root/.cache,sharing=locked "
             "--mount=type=secret,id=tok --network=none --security=insecure make")
    assert i.flag_values("mount") == ("type=cache,target=/root/.cache,sharing=locked", "type=secret,id=tok")
    assert i.flag("network") == "none"
    assert i.flag("security") == "insecure"
    assert i.command == ast.ShellForm("make")


def test_cmd_and_entrypoint_forms():
    assert only("CMD echo $HOME").command == ast.ShellForm("echo $HOME")
    assert only('CMD ["a", "b"]').command == ast.ExecForm(("a", "b"))
    assert only("ENTRYPOINT []").command == ast.ExecForm(())
    assert isinstance(only("entrypoint top -b"), ast.Entrypoint)


def test_double_dash_ends_flags():
    assert only("CMD -- --ignored-param1").command == ast.ShellForm("--ignored-param1")
    i = only("COPY -- --weird-name /dst/")
    assert i.flags == () and i.sources == ("--weird-name",)


def test_shell_exec_form_only():
    assert only('SHELL ["powershell", "-command"]').args == ("powershell", "-command")
    with pytest.raises(DockerfileError, match="SHELL requires the arguments to be in JSON form"):
        only("SHELL /bin/sh -c")


# -- COPY / ADD ---------------------------------------------------------------------

def test_copy_flags_and_sources():
    i = only('COPY --from=build --chown="1:1" --chmod=755 --link --parents --exclude=*.md '
             "--exclude=*.txt a b /dst/")
    assert isinstance(i, ast.Copy)
    assert i.sources == ("a", "b") and i.dest == "/dst/"
    assert i.flags == (ast.Flag("from", "build"), ast.Flag("chown", "1:1"), ast.Flag("chmod", "755"),
                       ast.Flag("link", None), ast.Flag("parents", None), ast.Flag("exclude", "*.md"),
                       ast.Flag("exclude", "*.txt"))
    assert i.bool_flag("link") and i.flag("link") == "true"
    assert i.flag_values("exclude") == ("*.md", "*.txt")


def test_copy_exec_form_allows_spaces():
    i = only('COPY ["my file.txt", "/dest dir/"]')
    assert i.sources == ("my file.txt",) and i.dest == "/dest dir/" and i.exec_form


def test_add_flags():
    i = only("ADD --keep-git-dir=true --checksum=sha256:abc --unpack=false --link=false "
             "--chown=app --chmod=u=rwX --exclude=x https://example.com/a.tar.gz /x/")
    assert isinstance(i, ast.Add)
    assert i.flag("keep-git-dir") == "true" and i.flag("unpack") == "false"
    assert not i.bool_flag("link")
    assert i.flag("checksum") == "sha256:abc"
    assert i.sources == ("https://example.com/a.tar.gz",)


@pytest.mark.parametrize("text, flag", [("ADD --from=x a b", "from"), ("ADD --parents a b", "parents"),
                                         ("COPY --unpack a b", "unpack"), ("COPY --checksum=x a b", "checksum"),
                                         ("RUN --link x", "link"), ("ENV --x=1 a=b", "x")])
def test_flags_belong_to_their_instruction(text, flag):
    with pytest.raises(DockerfileError) as err:
        only(text)
    assert err.value.message == f"unknown flag: {flag}"
    assert err.value.column == text.index("--" + flag) + 1


def test_copy_needs_a_destination():
    with pytest.raises(DockerfileError, match="COPY requires at least two arguments"):
        only("COPY onlyone")


# -- ENV / LABEL ----------------------------------------------------------------------

def test_env_key_value_pairs_keep_quotes_in_values():
    i = only('ENV A=1 B="two words" C=three\\ words D=')
    assert isinstance(i, ast.Env)
    assert i.pairs == (ast.KeyValue("A", "1", False), ast.KeyValue("B", '"two words"', False),
                       ast.KeyValue("C", "three\\ words", False), ast.KeyValue("D", "", False))


def test_env_legacy_form_value_is_rest_of_line():
    i = only("ENV PATH /usr/local/bin:$PATH  and more ")
    assert i.pairs == (ast.KeyValue("PATH", "/usr/local/bin:$PATH  and more", True),)


def test_label_pairs():
    i = only('LABEL "com.example.vendor"="ACME" version=1.0 description="multi \\\n  line"')
    assert isinstance(i, ast.Label)
    assert [p.key for p in i.pairs] == ['"com.example.vendor"', "version", "description"]
    assert i.pairs[0].value == '"ACME"'
    assert i.pairs[2].value == '"multi   line"'


def test_env_mixed_form_is_an_error():
    with pytest.raises(DockerfileError, match="can't find = in \"b\""):
        only("ENV a=1 b")


# -- ARG ------------------------------------------------------------------------------

def test_arg_several_per_line():
    i = only('ARG A B=2 C= D="x y"')
    assert isinstance(i, ast.Arg)
    assert i.args == (ast.ArgDecl("A", None), ast.ArgDecl("B", "2"), ast.ArgDecl("C", ""),
                      ast.ArgDecl("D", '"x y"'))


def test_arg_before_from():
    df = parse("ARG BASE=alpine\nFROM $BASE")
    assert df.instructions[0].args == (ast.ArgDecl("BASE", "alpine"),)
    assert df.instructions[1].image == "$BASE"


# -- the one-string instructions ------------------------------------------------------

def test_string_instructions():
    assert only("USER app:app").user == "app:app"
    assert only("WORKDIR /usr/src/my app").path == "/usr/src/my app"
    assert only("STOPSIGNAL SIGKILL").signal == "SIGKILL"
    assert only("MAINTAINER Jane Doe <jane@example.com>").name == "Jane Doe <jane@example.com>"


def test_expose_and_volume():
    assert only("EXPOSE 80/tcp 53/udp  8080").ports == ("80/tcp", "53/udp", "8080")
    assert only("VOLUME /data /logs").paths == ("/data", "/logs")
    assert only('VOLUME ["/a b", "/c"]').paths == ("/a b", "/c")


# -- ONBUILD / HEALTHCHECK --------------------------------------------------------------

def test_onbuild_nests_an_instruction():
    i = only("ONBUILD COPY --chown=1:1 . /app/src")
    assert isinstance(i, ast.Onbuild)
    inner = i.instruction
    assert isinstance(inner, ast.Copy) and inner.flags == (ast.Flag("chown", "1:1"),)
    assert inner.sources == (".",) and inner.span == i.span


@pytest.mark.parametrize("text, message", [
    ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD"),
    ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
    ("ONBUILD MAINTAINER x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("ONBUILD", "ONBUILD requires at least one argument"),
    ("ONBUILD BOGUS x", "unknown instruction: BOGUS"),
])
def test_onbuild_errors(text, message):
    with pytest.raises(DockerfileError, match=message):
        only(text)


def test_healthcheck_cmd_with_all_flags():
    i = only("HEALTHCHECK --interval=30s --timeout=1m30s --start-period=5s --start-interval=500ms "
             "--retries=3 CMD curl -f http://localhost/ || exit 1")
    assert isinstance(i, ast.Healthcheck)
    assert i.kind == "CMD" and i.command == ast.ShellForm("curl -f http://localhost/ || exit 1")
    assert [f.name for f in i.flags] == ["interval", "timeout", "start-period", "start-interval", "retries"]


def test_healthcheck_exec_and_none():
    assert only('HEALTHCHECK cmd ["pg_isready"]').command == ast.ExecForm(("pg_isready",))
    i = only("HEALTHCHECK none")
    assert (i.kind, i.command) == ("NONE", None)


@pytest.mark.parametrize("text, message", [
    ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
    ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
    ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
    ("HEALTHCHECK CONNECT TCP 7000", 'Unknown type "CONNECT" in HEALTHCHECK'),
    ("HEALTHCHECK --interval=5 CMD x", "time: missing unit|invalid duration|unknown unit"),
    ("HEALTHCHECK --retries=x CMD x", "invalid syntax"),
    ("HEALTHCHECK --retries=-1 CMD x", "cannot be negative"),
    ("HEALTHCHECK --timeout=1ns CMD x", "cannot be less than 1ms"),
])
def test_healthcheck_errors(text, message):
    with pytest.raises(DockerfileError, match=message):
        only(text)


# -- keywords and flags --------------------------------------------------------------------

def test_keywords_are_case_insensitive():
    df = parse("from a\nRuN x\ncopy a b\nEnV a=b\nhealthCHECK NONE")
    assert [i.keyword for i in df.instructions] == ["FROM", "RUN", "COPY", "ENV", "HEALTHCHECK"]


def test_flag_quoting_and_escapes():
    i = only("COPY --chown='a b' --chmod=\"7\"55 --from=x\\ y src dst")
    assert i.flags == (ast.Flag("chown", "a b"), ast.Flag("chmod", "755"), ast.Flag("from", "x y"))


@pytest.mark.parametrize("text, message", [
    ("COPY --link=maybe a b", "expecting boolean value for flag link, not: maybe"),
    ("COPY --link= a b", "missing a value on flag: link"),
    ("COPY --from a b", "missing a value on flag: from"),
    ("COPY --from=a --from=b a b", "duplicate flag specified: from"),
    ("RUN --network=bridge x", 'unsupported network mode "bridge"'),
    ("RUN --security=root x", 'unsupported security mode "root"'),
    ('RUN --mount=type=cache,a\\"b x', 'bare " in non-quoted-field'),
    ("RUN --mount=type=bind,from=$STAGE x", "doesn't support variable expansion"),
])
def test_malformed_flags(text, message):
    with pytest.raises(DockerfileError, match=message):
        only(text)


def test_flag_helpers():
    i = only("COPY --link=false --from=a a b")
    assert i.has_flag("link") and not i.bool_flag("link")
    assert i.flag("chown") is None and i.flag_values("exclude") == ()
    assert ast.Flag("link", None).render() == "--link"
    assert ast.Flag("from", "").render() == "--from="


def test_variables_in_network_flag_are_left_for_build_time():
    assert only("RUN --network=$NET x").flag("network") == "$NET"
