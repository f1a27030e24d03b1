"""builder.cli.main: every failure is one message and a non-zero exit, never a traceback —
including a bug in lamina itself."""

from __future__ import annotations

import click
import pytest

from lamina.builder.cli import EXIT_INTERNAL, main
from lamina.builder.cli.app import cli
from lamina.builder.errors import BuildError


@pytest.fixture
def broken_command():
    @cli.command("test-broken")
    @click.argument("kind")
    def broken(kind: str) -> None:
        if kind == "bug":
            raise KeyError("no-such-thing")
        raise BuildError("the build cannot go on", file="Dockerfile", line=3, source_line="RUN x")

    yield
    cli.commands.pop("test-broken")


def test_internal_error_is_one_line_without_traceback(broken_command, capsys, monkeypatch):
    monkeypatch.delenv("LAMINA_DEBUG", raising=False)
    assert main(["test-broken", "bug"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("lamina: internal error: KeyError")
    assert "LAMINA_DEBUG=1" in err


def test_internal_error_traceback_on_request(broken_command, capsys, monkeypatch):
    monkeypatch.setenv("LAMINA_DEBUG", "1")
    assert main(["test-broken", "bug"]) == EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_build_error_names_file_and_line(broken_command, capsys):
    assert main(["test-broken", "user"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "lamina: Dockerfile:3: the build cannot go on"
    assert "RUN x" in err


def test_usage_error_exit_code(capsys):
    assert main(["build", "--no-such-flag", "."]) == 2
    assert "No such option" in capsys.readouterr().err
