"""Forms real Dockerfiles use that BuildKit accepts (issue 14), at the parser level:
bare RUN/CMD/ENTRYPOINT (BuildKit's parseMaybeJSON gives no node, and
parseShellDependentCommand an empty shell-form command line), `RUN []` still an
error, and RUN --mount values without target= (checked later, at planning)."""

from __future__ import annotations

import pytest

from lamina.grammar import DockerfileError, ast, dump, parse


@pytest.mark.parametrize("keyword, cls", [("RUN", ast.Run), ("CMD", ast.Cmd),
                                          ("ENTRYPOINT", ast.Entrypoint)])
def test_bare_command_is_an_empty_shell_form(keyword, cls):
    for line in (keyword, keyword + "   ", keyword.lower()):
        (_, inst) = parse(f"FROM a\n{line}\n").instructions
        assert isinstance(inst, cls)
        assert inst.command == ast.ShellForm("")


def test_bare_commands_dump_as_buildkit():
    # BuildKit's parser test files print a bare instruction as "(cmd)" (json/result)
    assert dump(parse("FROM a\nRUN\nCMD\nENTRYPOINT\n")) == \
        '(from "a")\n(run)\n(cmd)\n(entrypoint)\n'


def test_bare_run_keeps_its_flags():
    (_, run) = parse("FROM a\nRUN --network=none\n").instructions
    assert run.command == ast.ShellForm("") and run.flag("network") == "none"


def test_empty_exec_form_run_is_still_an_error():
    with pytest.raises(DockerfileError, match="RUN requires at least one argument"):
        parse("FROM a\nRUN []\n")


@pytest.mark.parametrize("text", [
    "RUN --mount=from=binaries cp * /out/",
    "RUN --mount=ro make",
    "RUN --mount=target=. go build ./...",
    "RUN --mount=type=bind,target=.,ro make",
    "RUN --mount=type=bind <<EOF\nls\nEOF",
    "RUN --mount=from=delve-src,src=/usr/src/delve,rw go build",
    "RUN --mount=type=bind,src=src shellcheck *.sh",
    "RUN --mount=ro --mount=type=cache,target=/root/.cache \\\n"
    "    # a comment inside the continuation\n    make",
    "RUN --mount=type=cache,from=seed,source=/cache,target=/root/.cache make",
    "RUN --mount=type=ssh,id=github,required=true git clone x",
])
def test_real_world_run_mount_forms_parse(text):
    df = parse(f"FROM a\n{text}\n")
    assert isinstance(df.instructions[1], ast.Run)
    assert df.instructions[1].flag_values("mount")
