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
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import lamina.grammar; print(lamina.grammar.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(installed) in where


def test_one_top_level_name(installed: Path, tmp_path: Path) -> None:
    """The wheel puts only `lamina` on sys.path: grammar/store/builder are names other
    distributions install, and `python -m lamina` runs the CLI."""
    site = subprocess.run([str(installed / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name in ("grammar", "store", "builder"):
        assert not (Path(site) / name).exists(), f"{name} installed at the top level"
        proc = subprocess.run([str(installed / "bin" / "python"), "-c", f"import {name}"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode != 0, f"`import {name}` works: a top-level name leaked"
    proc = subprocess.run([str(installed / "bin" / "python"), "-m", "lamina", "--help"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "build" in proc.stdout


def test_every_package_is_listed() -> None:
    """pyproject lists packages by hand (the folders are mapped under `lamina.`): a new
    subpackage that is not listed would be missing from the wheel."""
    import tomllib
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"lamina"} | {"lamina." + ".".join(p.parent.relative_to(REPO).parts)
                          for top in ("grammar", "store", "builder")
                          for p in (REPO / top).rglob("__init__.py")}
    assert found == listed
