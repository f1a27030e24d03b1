"""grammar.checks: BuildKit's text-level build checks and the `check` directive.

Every expected finding (rule, message, line) comes from BuildKit's rule
documentation (frontend/dockerfile/docs/rules/*.md) or its integration tests
(frontend/dockerfile/dockerfile_check_test.go); a Dockerfile that BuildKit's
documentation or tests show as "good" must give no finding of that rule.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from lamina.grammar import DockerfileError, dump, parse
from lamina.grammar.checks import (
    EXPLANATIONS, Finding, explain, file_findings, stage_findings, text_findings,
)
from lamina.grammar.directives import CheckOptions, check_options_in_comments, parse_check_options


def found(text: str) -> list[tuple[str, str, int]]:
    """(rule, message, line), ordered as BuildKit's tests order them (line, message)."""
    return sorted(((f.rule, f.message, f.line) for f in text_findings(parse(text))),
                  key=lambda t: (t[2], t[1]))


JSON_CMD = "JSON arguments recommended for {} to prevent unintended behavior related to OS signals"
MULTIPLE = ("Multiple {} instructions should not be used in the same stage because only the "
            "last one will be used")
LEGACY = '"{0} key=value" should be used instead of legacy "{0} key value" format'
SECRET = "Do not use ARG or ENV instructions for sensitive data ({} {})"

CASES = [
    # -- StageNameCasing (docs + testStageName)
    ("FROM alpine AS BuilderBase\n",
     [("StageNameCasing", "Stage name 'BuilderBase' should be lowercase", 1)]),
    ("FROM alpine AS builder-base\n", []),
    ("\n# warning: stage name should be lowercase\n#\nFROM scratch AS BadStageName\n\n"
     "# warning: 'as' should match 'FROM' cmd casing.\n#\nFROM scratch as base2\n\n"
     "FROM scratch AS base3\n",
     [("StageNameCasing", "Stage name 'BadStageName' should be lowercase", 4),
      ("FromAsCasing", "'as' and 'FROM' keywords' casing do not match", 8)]),
    # -- FromAsCasing
    ("FROM debian:latest as builder\n",
     [("FromAsCasing", "'as' and 'FROM' keywords' casing do not match", 1)]),
    ("FROM debian:latest AS deb-builder\n", []),
    ("from debian:latest as deb-builder\n", []),
    ("\n# warning: 'AS' should match 'from' cmd casing.\n#\nfrom scratch AS base\n\n"
     "from scratch as base2\n",
     [("FromAsCasing", "'AS' and 'from' keywords' casing do not match", 4)]),
    # -- NoEmptyContinuation: BuildKit places it on the instruction's last line
    ("\nFROM scratch\n# warning: empty continuation line\nCOPY Dockerfile \\\n\n.\n"
     "COPY Dockerfile \\\n.\n",
     [("NoEmptyContinuation", "Empty continuation line", 6)]),
    ("FROM alpine\nEXPOSE \\\n# Port\n80\n", []),
    # -- ConsistentInstructionCasing (testConsistentInstructionCasing)
    ("\n# warning: 'FROM' should be either lowercased or uppercased\n#\nFrom scratch as base\n"
     "FROM scratch AS base2\n",
     [("ConsistentInstructionCasing",
       "Command 'From' should match the case of the command majority (uppercase)", 4)]),
    ("\nFROM scratch\n# warning: 'copy' should match command majority's casing (uppercase)\n"
     "copy Dockerfile /foo\nCOPY Dockerfile /bar\n",
     [("ConsistentInstructionCasing",
       "Command 'copy' should match the case of the command majority (uppercase)", 4)]),
    ("\n# warning: 'frOM' should be either lowercased or uppercased\n#\nfrOM scratch as base\n"
     "from scratch as base2\n",
     [("ConsistentInstructionCasing",
       "Command 'frOM' should match the case of the command majority (lowercase)", 4)]),
    ("\nfrom scratch\n# warning: 'COPY' should match command majority's casing (lowercase)\n"
     "COPY Dockerfile /foo\ncopy Dockerfile /bar\n",
     [("ConsistentInstructionCasing",
       "Command 'COPY' should match the case of the command majority (lowercase)", 4)]),
    ("\n#\n#\nfrom scratch\nCOPY Dockerfile /foo\nCOPY Dockerfile /bar\nCOPY Dockerfile /baz\n",
     [("ConsistentInstructionCasing",
       "Command 'from' should match the case of the command majority (uppercase)", 4)]),
    ("\n#\n#\nFROM scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\ncopy Dockerfile /baz\n",
     [("ConsistentInstructionCasing",
       "Command 'FROM' should match the case of the command majority (lowercase)", 4)]),
    ("\nfrom scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\n", []),
    ("\nFROM scratch\nCOPY Dockerfile /foo\nCOPY Dockerfile /bar\n", []),
    ("From alpine\nRun echo hello > /greeting.txt\nEntRYpOiNT [\"cat\", \"/greeting.txt\"]\n",
     [("ConsistentInstructionCasing",
       "Command 'From' should match the case of the command majority (uppercase)", 1),
      ("ConsistentInstructionCasing",
       "Command 'Run' should match the case of the command majority (uppercase)", 2),
      ("ConsistentInstructionCasing",
       "Command 'EntRYpOiNT' should match the case of the command majority (uppercase)", 3)]),
    # -- DuplicateStageName
    ("\nFROM scratch AS b\nFROM scratch AS b\n",
     [("DuplicateStageName", 'Duplicate stage name "b", stage names should be unique', 3)]),
    ("\nFROM scratch AS b1\nFROM scratch AS b2\n", []),
    # -- ReservedStageName
    ("\nFROM scratch AS scratch\nFROM scratch AS context\n",
     [("ReservedStageName", 'Stage name should not use the same name as reserved stage "scratch"', 2),
      ("ReservedStageName", 'Stage name should not use the same name as reserved stage "context"', 3)]),
    ("\nFROM scratch\nFROM scratch AS a\n", []),
    # -- JSONArgsRecommended
    ("\nFROM scratch\nCMD mycommand\n", [("JSONArgsRecommended", JSON_CMD.format("CMD"), 3)]),
    ("\nFROM scratch\nENTRYPOINT mycommand\n",
     [("JSONArgsRecommended", JSON_CMD.format("ENTRYPOINT"), 3)]),
    ('\nFROM scratch\nSHELL ["/usr/bin/customshell"]\nCMD mycommand\n', []),
    ('\nFROM scratch\nSHELL ["/usr/bin/customshell"]\nENTRYPOINT mycommand\n', []),
    ('\nFROM scratch AS base\nSHELL ["/usr/bin/customshell"]\n\nFROM base\nCMD mycommand\n', []),
    ('\nFROM scratch AS base\nSHELL ["/usr/bin/customshell"]\n\nFROM base\nENTRYPOINT mycommand\n', []),
    ('FROM alpine\nENTRYPOINT ["my-program", "start"]\n', []),
    # -- MaintainerDeprecated
    ("\nFROM scratch\nMAINTAINER me@example.org\n",
     [("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label", 3)]),
    ('\nFROM scratch\nLABEL org.opencontainers.image.authors="me@example.org"\n', []),
    # -- WorkdirRelativePath
    ("\nFROM scratch\nWORKDIR app/\n",
     [("WorkdirRelativePath",
       'Relative workdir "app/" can have unexpected results if the base image changes', 3)]),
    ("\nFROM scratch AS a\nWORKDIR /app\n\nFROM a AS b\nWORKDIR subdir/\n", []),
    ("FROM nginx AS web\nWORKDIR /usr/share/nginx/html\nCOPY public .\n", []),
    # -- MultipleInstructionsDisallowed: reported at the earlier, ignored one
    ('\nFROM scratch\nENTRYPOINT ["/myapp"]\nENTRYPOINT ["/myotherapp"]\nCMD ["/myapp"]\n'
     'CMD ["/myotherapp"]\nHEALTHCHECK CMD ["/myapp"]\nHEALTHCHECK CMD ["/myotherapp"]\n',
     [("MultipleInstructionsDisallowed", MULTIPLE.format("ENTRYPOINT"), 3),
      ("MultipleInstructionsDisallowed", MULTIPLE.format("CMD"), 5),
      ("MultipleInstructionsDisallowed", MULTIPLE.format("HEALTHCHECK"), 7)]),
    ('\nFROM scratch\nENTRYPOINT ["/myapp"]\nCMD ["/myapp"]\nHEALTHCHECK CMD ["/myapp"]\n'
     'COPY <<EOF /a.txt\nHello, World!\nEOF\nENTRYPOINT ["/myotherapp"]\nCMD ["/myotherapp"]\n'
     'HEALTHCHECK CMD ["/myotherapp"]\n',
     [("MultipleInstructionsDisallowed", MULTIPLE.format("ENTRYPOINT"), 3),
      ("MultipleInstructionsDisallowed", MULTIPLE.format("CMD"), 4),
      ("MultipleInstructionsDisallowed", MULTIPLE.format("HEALTHCHECK"), 5)]),
    ('\nFROM scratch AS a\nENTRYPOINT ["/myapp"]\nCMD ["/myapp"]\nHEALTHCHECK CMD ["/myapp"]\n\n'
     'FROM a AS b\nENTRYPOINT ["/myotherapp"]\nCMD ["/myotherapp"]\nHEALTHCHECK CMD ["/myotherapp"]\n',
     []),
    ('FROM python:alpine\nRUN apk add curl\nHEALTHCHECK --interval=1s --timeout=3s \\\n'
     '  CMD ["curl", "-f", "http://localhost:8080"]\nCMD ["python", "-m", "http.server", "8080"]\n', []),
    # -- LegacyKeyValueFormat
    ("\nFROM scratch\nENV testkey value\nLABEL key value\n",
     [("LegacyKeyValueFormat", LEGACY.format("ENV"), 3),
      ("LegacyKeyValueFormat", LEGACY.format("LABEL"), 4)]),
    ("\nFROM scratch\nENV testkey=value\nLABEL key=value\n", []),
    ('FROM alpine\nENV DEPS="\\\n    curl \\\n    git \\\n    make"\n', []),
    ("FROM alpine\nENV DEPS \\\n    curl \\\n    git \\\n    make\n",
     [("LegacyKeyValueFormat", LEGACY.format("ENV"), 2)]),
    # -- SecretsUsedInArgOrEnv (testSecretsUsedInArgOrEnv)
    ("# check=skip=InvalidDefinitionDescription\n\nFROM scratch\nARG SECRET_PASSPHRASE\n"
     "ENV SUPER_Secret=foo\nENV password=bar secret=baz\nARG super_duper_secret_token=foo auth=bar\n"
     "ENV apikey=bar sunflower=foo\nENV git_key=\nENV PUBLIC_KEY=\nARG public_token\n"
     "ARG SECRET_PASSPHRASE_FILE\nENV password_file=bar secret_File=baz\nARG AUTH_MODULE_VERSION\n"
     "# check=skip=SecretsUsedInArgOrEnv // allow secret in environment\nENV password=bar\n"
     "# check=skip=SecretsUsedInArgOrEnv // allow secret in arg\nARG password\n"
     "# check=skip=all // is local to only this instruction\nENV alternate_password=bar\n"
     "# check=skip=all // is local to only this instruction\nARG alternate_password\n",
     [("SecretsUsedInArgOrEnv", SECRET.format("ARG", '"SECRET_PASSPHRASE"'), 4),
      ("SecretsUsedInArgOrEnv", SECRET.format("ENV", '"SUPER_Secret"'), 5),
      ("SecretsUsedInArgOrEnv", SECRET.format("ENV", '"password"'), 6),
      ("SecretsUsedInArgOrEnv", SECRET.format("ENV", '"secret"'), 6),
      ("SecretsUsedInArgOrEnv", SECRET.format("ARG", '"auth"'), 7),
      ("SecretsUsedInArgOrEnv", SECRET.format("ARG", '"super_duper_secret_token"'), 7),
      ("SecretsUsedInArgOrEnv", SECRET.format("ENV", '"apikey"'), 8),
      ("SecretsUsedInArgOrEnv", SECRET.format("ENV", '"git_key"'), 9)]),
    # -- ExposeProtoCasing
    ("\nFROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n",
     [("ExposeProtoCasing", "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase", 3),
      ("ExposeProtoCasing", "Defined protocol '8080/TCP' in EXPOSE instruction should be lowercase", 3)]),
    ("FROM alpine\nEXPOSE 80/tcp\n", []),
    # -- ExposeInvalidFormat
    ("\nFROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n",
     [("ExposeInvalidFormat", "EXPOSE instruction should not define an IP address or host-port "
       "mapping, found '127.0.0.1:80:80'", 3),
      ("ExposeInvalidFormat", "EXPOSE instruction should not define an IP address or host-port "
       "mapping, found '5000:5000'", 3),
      ("ExposeInvalidFormat", "EXPOSE instruction should not define an IP address or host-port "
       "mapping, found '[::1]:8080:8080'", 3)]),
    ("FROM alpine\nEXPOSE 80\n", []),
    ("FROM alpine\nEXPOSE 80:80\n",
     [("ExposeInvalidFormat", "EXPOSE instruction should not define an IP address or host-port "
       "mapping, found '80:80'", 2)]),
    # -- the check directive (testRuleCheckOption, per-instruction comments)
    ("#check=skip=all\nFROM scratch as base\ncopy Dockerfile .\n", []),
    ("#check=skip=all;error=true\nFROM scratch as base\ncopy Dockerfile .\n", []),
    ("#check=skip=ConsistentInstructionCasing,FromAsCasing\nFROM scratch as base\ncopy Dockerfile .\n", []),
    ("#check=skip=ConsistentInstructionCasing\nFROM scratch as base\ncopy Dockerfile .\n",
     [("FromAsCasing", "'as' and 'FROM' keywords' casing do not match", 2)]),
    ("\nFROM scratch\n# check=skip=JSONArgsRecommended\nCMD mycommand\n", []),
    ("\nFROM scratch\n# check=skip=MaintainerDeprecated\nMAINTAINER me@example.org\n", []),
    ("\nFROM scratch\n# check=skip=WorkdirRelativePath\nWORKDIR app/\n", []),
    ("\nFROM scratch\n# check=skip=LegacyKeyValueFormat\nENV testkey value\n"
     "# check=skip=LegacyKeyValueFormat\nLABEL key value\n", []),
    # the casing rule runs on the whole file: a comment before one instruction does not skip it
    ("FROM scratch\nCOPY a b\n# check=skip=ConsistentInstructionCasing\ncopy a b\n",
     [("ConsistentInstructionCasing",
       "Command 'copy' should match the case of the command majority (uppercase)", 4)]),
    # a bare `#` forgets the comment before it: the skip no longer applies
    ("\nFROM scratch\n# check=skip=MaintainerDeprecated\n#\nMAINTAINER me@example.org\n",
     [("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label", 5)]),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_rules_match_buildkit_examples(text, expected):
    assert found(text) == sorted(expected, key=lambda t: (t[2], t[1]))


def test_every_rule_has_a_one_line_explanation_without_links():
    assert len(EXPLANATIONS) == 21
    for rule, text in EXPLANATIONS.items():
        assert text and "\n" not in text and "http" not in text, rule


def test_finding_short_form_is_buildkits():
    f = Finding("FromAsCasing", "'as' and 'FROM' keywords' casing do not match", 2, 14, "Dockerfile")
    assert f.short() == "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)"


def test_columns_point_at_the_word():
    findings = text_findings(parse("FROM scratch as Base\n  EXPOSE 80/TCP\n"))
    by_rule = {f.rule: f for f in findings}
    assert (by_rule["StageNameCasing"].line, by_rule["StageNameCasing"].column) == (1, 17)
    assert by_rule["FromAsCasing"].column == 14
    assert (by_rule["ExposeProtoCasing"].line, by_rule["ExposeProtoCasing"].column) == (2, 10)


def test_stage_rules_only_for_the_stages_asked():
    df = parse("FROM scratch AS a\nCMD x\nFROM scratch AS b\nENTRYPOINT y\n")
    assert [f.line for f in stage_findings(df, [1])] == [4]
    assert [f.line for f in stage_findings(df)] == [2, 4]
    assert file_findings(df) == []


def test_variable_words_are_not_guessed_without_an_expander():
    # WORKDIR $X could be absolute; the text alone cannot tell
    assert found("FROM scratch\nWORKDIR $X\nEXPOSE $P\n") == []


# -- the AST facts the checks need -------------------------------------------------------

def test_ast_keeps_keyword_casing_comments_and_empty_continuations():
    df = parse("# syntax=docker/dockerfile:1\n# about a\n#\n# about b\nfRoM scratch\n"
               "RUN a \\\n\n  b\n# c1\n\n  # c2\ncopy x y\n")
    f, run, copy = df.instructions
    assert (f.keyword, f.keyword_text, f.comments) == ("FROM", "fRoM", ("about b",))
    assert run.empty_continuations == (7,) and run.comments == ()
    assert copy.keyword_text == "copy" and copy.comments == ("c1", "# c2")


def test_dump_and_equality_ignore_the_new_facts():
    df = parse("from scratch\n# note\nrun echo \\\n\n  hi\n")
    for inst in df.instructions:
        assert replace(inst, keyword_text="", comments=(), empty_continuations=()) == inst
    assert dump(df) == '(from "scratch")\n(run "echo   hi")\n'


# -- the directive's value ----------------------------------------------------------------

def test_parse_check_options():
    assert parse_check_options("") == CheckOptions()
    assert parse_check_options("skip=all") == CheckOptions(skip_all=True)
    assert parse_check_options(" skip = A, B ;error=true") == CheckOptions(
        skip=frozenset({"A", "B"}), error=True)
    assert parse_check_options("error=1").error and not parse_check_options("error=False").error
    assert parse_check_options("experimental=all").experimental_all


@pytest.mark.parametrize("value,message", [
    ("skip", 'invalid check option "skip"'),
    ("nope=1", 'invalid check option "nope"'),
    ("error=yes", 'failed to parse check option "error=yes": strconv.ParseBool: parsing "yes": '
                  "invalid syntax"),
])
def test_parse_check_options_errors(value, message):
    with pytest.raises(ValueError) as info:
        parse_check_options(value)
    assert str(info.value) == message


def test_malformed_directive_is_an_error_at_its_line():
    with pytest.raises(DockerfileError) as info:
        text_findings(parse("# check=error=maybe\nFROM scratch\n"))
    assert info.value.line == 1
    assert info.value.message == ('failed to parse check options: failed to parse check option '
                                  '"error=maybe": strconv.ParseBool: parsing "maybe": invalid syntax')


def test_comment_options_take_value_up_to_a_space_and_ignore_bad_ones():
    assert check_options_in_comments(["hello", "check=skip=A,B // why"]) == CheckOptions(
        skip=frozenset({"A", "B"}))
    assert check_options_in_comments(["check=bogus"]) is None
    assert check_options_in_comments(["nothing here"]) is None


# -- columns ------------------------------------------------------------------------------
# BuildKit locates findings by line only (its ranges carry no character); lamina's
# column, as grammar.checks documents it, is the 1-based column of the word the rule
# is about on that line. Each case shows the line and a caret under that word (one per
# finding on it).

COLUMNS = [
    # an image path holding the name must not be taken for the stage name
    ("StageNameCasing", "FROM ghcr.io/org/Base:1 AS Base\n", 1,
     "FROM ghcr.io/org/Base:1 AS Base",
     "                           ^"),
    # nor the `as` inside an image name for the AS keyword
    ("FromAsCasing", "FROM alias as base\n", 1,
     "FROM alias as base",
     "           ^"),
    ("NoEmptyContinuation", "FROM scratch\nCOPY a \\\n\n  b /\n", 4,
     "  b /",
     "^"),
    ("ConsistentInstructionCasing", "FROM scratch\nCOPY a /a\n  copy b /b\n", 3,
     "  copy b /b",
     "  ^"),
    ("DuplicateStageName", "FROM scratch AS b\nFROM b AS b\n", 2,
     "FROM b AS b",
     "          ^"),
    ("ReservedStageName", "FROM scratch AS scratch\n", 1,
     "FROM scratch AS scratch",
     "                ^"),
    ("JSONArgsRecommended", "FROM scratch\n\tCMD run\n", 2,
     "\tCMD run",
     " ^"),
    ("MaintainerDeprecated", "FROM scratch\n  MAINTAINER me\n", 2,
     "  MAINTAINER me",
     "  ^"),
    ("WorkdirRelativePath", "FROM scratch\nWORKDIR   app/\n", 2,
     "WORKDIR   app/",
     "          ^"),
    ("MultipleInstructionsDisallowed", 'FROM scratch\n CMD ["a"]\nCMD ["b"]\n', 2,
     ' CMD ["a"]',
     " ^"),
    ("LegacyKeyValueFormat", "FROM scratch\nLABEL  maintainer me\n", 2,
     "LABEL  maintainer me",
     "       ^"),
    # the whole key, not the same letters at the end of another key
    ("SecretsUsedInArgOrEnv", "FROM scratch\nENV my_password_file=1 password=2\n", 2,
     "ENV my_password_file=1 password=2",
     "                       ^"),
    # the whole port, not the same characters at the end of another port
    ("ExposeProtoCasing", "FROM scratch\nEXPOSE 8080/TCP 80/TCP\n", 2,
     "EXPOSE 8080/TCP 80/TCP",
     "       ^        ^"),
    ("ExposeInvalidFormat", "FROM scratch\nEXPOSE 8000 18000:8000 127.0.0.1:8000:8000 8000:8000\n", 2,
     "EXPOSE 8000 18000:8000 127.0.0.1:8000:8000 8000:8000",
     "            ^          ^                   ^"),
]


@pytest.mark.parametrize("rule,text,line,shown,caret", COLUMNS, ids=[c[0] for c in COLUMNS])
def test_column_of_each_text_rule(rule, text, line, shown, caret):
    assert text.split("\n")[line - 1] == shown  # the case shows the finding's line
    hits = [(f.line, f.column) for f in text_findings(parse(text)) if f.rule == rule]
    assert sorted(hits) == [(line, i + 1) for i, c in enumerate(caret) if c == "^"]


def test_column_falls_back_to_the_keyword_on_a_continuation_line():
    text = "FROM scratch\n  WORKDIR \\\n    app/\n"
    assert [(f.line, f.column) for f in text_findings(parse(text))] == [(2, 3)]


def test_legacy_key_value_explanation_names_the_instruction():
    label, env = (text_findings(parse(f"FROM scratch\n{word} key value\n"))[0]
                  for word in ("LABEL", "ENV"))
    assert label.message == LEGACY.format("LABEL") and env.message == LEGACY.format("ENV")
    assert "`LABEL key value`" in explain(label) and "ENV" not in explain(label)
    assert "`ENV key value`" in explain(env) and "LABEL" not in explain(env)
    assert "ENV" not in EXPLANATIONS["LegacyKeyValueFormat"]  # the rule's generic line
    other = text_findings(parse("FROM scratch\nMAINTAINER me\n"))[0]
    assert explain(other) == EXPLANATIONS["MaintainerDeprecated"]
