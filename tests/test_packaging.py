"""`pip install .` into a fresh virtualenv gives a working `lamina` command, with the
grammar file packaged (a syntax error is reported from the installed copy, far from
this source tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    proc = subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env_dir


def _run(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(env_dir / "bin" / "lamina"), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_help_commands(installed: Path, tmp_path: Path) -> None:
    top = _run(installed, "--help", cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    assert "build" in top.stdout
    sub = _run(installed, "build", "--help", cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    for flag in ("--tag", "--file", "--build-arg", "--target", "--no-cache", "--iidfile"):
        assert flag in sub.stdout


def test_installed_copy_reports_syntax_errors(installed: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY --bogus=1 a /b\n")
    proc = _run(installed, "--root", str(tmp_path / "store"), "build", str(ctx), cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "Dockerfile:2" in proc.stderr
    assert "--bogus" in proc.stderr
    # the installed package, not this checkout, did the work
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import grammar; print(grammar.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(installed) in where
