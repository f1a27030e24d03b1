"""DockerfileError positions: file, line, column and the offending source line.

Every user mistake is one DockerfileError naming the file, the 1-based line and
column of what is wrong, and rendering that line with a caret.
"""

from __future__ import annotations

import pytest

from lamina.grammar import DockerfileError, parse


def error(text: str, path: str = "Dockerfile") -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse(text, path=path)
    return info.value


@pytest.mark.parametrize("text, message, line, column", [
    # unknown instruction, with a suggestion when it looks like a typo
    ("FROM a\nRUNN make", "unknown instruction: RUNN (did you mean run?)", 2, 1),
    ("FROM a\n  bogus thing", "unknown instruction: bogus", 2, 3),
    ("FROM a\n--flag x", "unknown instruction: --flag", 2, 1),
    # unknown and malformed flags, at the flag's column
    ("FROM a\nCOPY --chown=1 --bogus=2 a b", "unknown flag: bogus", 2, 16),
    ("FROM a\nRUN --mount=type=cache \\\n    --netwrk=host make", "unknown flag: netwrk", 3, 5),
    ("FROM --plat=x a", "unknown flag: plat", 1, 6),
    ("FROM a\nWORKDIR --x=1 /a", "unknown flag: x", 2, 9),
    ("FROM a\nCOPY --from a b", "missing a value on flag: from", 2, 6),
    ("FROM a\nADD --link=perhaps a b", "expecting boolean value for flag link, not: perhaps", 2, 5),
    ("FROM a\nCOPY --from=a --from=b x y", "duplicate flag specified: from", 2, 15),
    # instructions without their arguments
    ("FROM", "FROM requires either one or three arguments", 1, 1),
    # (a bare RUN/CMD/ENTRYPOINT is BuildKit's `/bin/sh -c ""`: accepted; `RUN []` is not)
    ("FROM a\nRUN []", "RUN requires at least one argument", 2, 1),
    ("FROM a\nRUN --network=none []", "RUN requires at least one argument", 2, 1),
    ("FROM a\nUSER", "USER requires exactly one argument", 2, 1),
    ("FROM a\nWORKDIR", "WORKDIR requires exactly one argument", 2, 1),
    ("FROM a\nEXPOSE", "EXPOSE requires at least one argument", 2, 1),
    ("FROM a\nVOLUME", "VOLUME requires at least one argument", 2, 1),
    ("FROM a\nARG", "ARG requires at least one argument", 2, 1),
    ("FROM a\nSTOPSIGNAL", "STOPSIGNAL requires exactly one argument", 2, 1),
    ("FROM a\nMAINTAINER", "MAINTAINER requires exactly one argument", 2, 1),
    ("FROM a\nSHELL", "SHELL requires at least one argument", 2, 1),
    ("FROM a\nSHELL []", "SHELL requires at least one argument", 2, 1),
    ("FROM a\nCOPY", "COPY requires at least two arguments, but only one was provided. "
     "Destination could not be determined.", 2, 1),
    ("FROM a\nADD x", "ADD requires at least two arguments, but only one was provided. "
     "Destination could not be determined.", 2, 1),
    # ENV / LABEL without a value
    ("FROM a\nENV", "ENV requires at least one argument", 2, 1),
    ("FROM a\nENV NAME", "ENV must have two arguments", 2, 5),
    ("FROM a\nLABEL version", "LABEL must have two arguments", 2, 7),
    ("FROM a\nLABEL", "LABEL requires at least one argument", 2, 1),
    ("FROM a\nENV a=1 b c=2", "Syntax error - can't find = in \"b\". Must be of the form: name=value", 2, 9),
    ("FROM a\nENV =x", "ENV names can not be blank", 2, 5),
    ("FROM a\nARG =x", "ARG names can not be blank", 2, 5),
    ("FROM a\nVOLUME [\"\"]", "VOLUME specified can not be an empty string", 2, 8),
    # heredocs
    ("FROM a\nRUN <<EOF\necho\n", "unterminated heredoc EOF", 2, 5),
    ("FROM a\nCOPY <<A <<B /x\na\nA\nb\n", "unterminated heredoc B", 2, 10),
    # repeated directive
    ("# syntax=a\n# escape=`\n# syntax=b\nFROM a", "only one syntax parser directive can be used", 3, 1),
    # JSON with something else than strings
    ("FROM a\nCMD [\"a\", {\"b\": 1}]", "when using JSON array syntax, arrays must be comprised of strings only",
     2, 5),
    # a lone continuation character
    ("FROM a\n\\\n", "empty instruction (a line continuation with nothing after it)", 2, 1),
])
def test_error_positions(text, message, line, column):
    err = error(text)
    assert err.message == message
    assert (err.file, err.line, err.column) == ("Dockerfile", line, column)
    assert err.source_line == text.split("\n")[line - 1]


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n", "# syntax=x\n\n  \n# more\n", "\ufeff"])
def test_file_with_no_instructions(text):
    err = error(text, path="ci/Dockerfile.empty")
    assert err.message == "file with no instructions"
    assert err.file == "ci/Dockerfile.empty"


def test_rendered_error_shows_line_and_caret():
    err = error("FROM a\nCOPY --chmod=644 --owner=me src /dst\n", path="app/Dockerfile")
    assert str(err) == ("app/Dockerfile:2:18: unknown flag: owner\n"
                        "    COPY --chmod=644 --owner=me src /dst\n"
                        "                     ^")


def test_error_inside_onbuild_trigger_points_at_the_trigger():
    err = error("FROM a\nONBUILD COPY --nope=1 a b")
    assert (err.message, err.line, err.column) == ("unknown flag: nope", 2, 14)


def test_first_error_in_file_order():
    err = error("FROM a\nBOGUS\nRUN <<EOF\n")
    assert (err.line, err.message) == (2, "unknown instruction: BOGUS")


def test_errors_carry_the_path_given():
    err = error("FROM a\nNOPE", path="/abs/path/Containerfile")
    assert err.file == "/abs/path/Containerfile"
    assert str(err).startswith("/abs/path/Containerfile:2:1: unknown instruction: NOPE")
