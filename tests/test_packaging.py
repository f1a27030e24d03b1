"""The wheel of lamina installed into a fresh virtualenv gives a working `lamina`
command, with the grammar file packaged (a syntax error is reported from the
installed copy, far from this source tree), and it lives beside distributions named
`store`, `grammar` and `builder` (names other projects use): both keep working."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NEIGHBOURS = ("store", "grammar", "builder")


def _pip(env_dir: Path, *args: str) -> None:
    proc = subprocess.run([str(env_dir / "bin" / "pip"), *args, "-q", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def lamina_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("lamina-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory, lamina_wheel) -> Path:
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    _pip(env_dir, "install", str(lamina_wheel))
    return env_dir


def neighbour_wheel(where: Path, name: str) -> Path:
    """A minimal wheel of a distribution `name` with a top-level package `name`
    (PEP 427 by hand: no build tool, no index needed)."""
    dist_info = f"{name}-9.9.9.dist-info"
    files = {
        f"{name}/__init__.py": f"WHO = 'the {name} distribution'\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 9.9.9\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: lamina-tests\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n",
        f"{dist_info}/top_level.txt": f"{name}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    whl = where / f"{name}-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return whl


@pytest.fixture(scope="module")
def crowded(tmp_path_factory, lamina_wheel) -> Path:
    """A fresh venv with distributions store, grammar and builder, then lamina."""
    env_dir = tmp_path_factory.mktemp("crowded")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    wheels = tmp_path_factory.mktemp("neighbours")
    _pip(env_dir, "install", "--no-index", *[str(neighbour_wheel(wheels, n)) for n in NEIGHBOURS])
    _pip(env_dir, "install", str(lamina_wheel))
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


def _python(env_dir: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(env_dir / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_beside_store_grammar_builder_distributions(crowded: Path, tmp_path: Path) -> None:
    """Installed side by side, the other distributions' packages and lamina's stay apart."""
    proc = _python(crowded, "import store, grammar, builder, lamina.store.store, lamina.grammar, "
                            "lamina.builder.cli; print(store.WHO, grammar.WHO, builder.WHO, sep='|'); "
                            "print(lamina.grammar.parse('FROM scratch\\n').instructions[0].keyword)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["the store distribution|the grammar distribution|the builder distribution",
                                        "FROM"]
    listed = subprocess.run([str(crowded / "bin" / "pip"), "list", "--format=freeze"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert {"store==9.9.9", "grammar==9.9.9", "builder==9.9.9"} <= set(listed)
    assert any(l.startswith("lamina==") for l in listed)


@pytest.mark.root
def test_build_beside_other_distributions(crowded: Path, tmp_path: Path) -> None:
    """`lamina build` of FROM scratch + COPY works with store/grammar/builder installed."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello from the context\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /srv/hello.txt\n")
    root = tmp_path / "store"
    proc = _run(crowded, "--root", str(root), "build", "-t", "neighbours:1", str(ctx), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = _run(crowded, "--root", str(root), "images", "--format", "{{.Repository}}:{{.Tag}}", cwd=tmp_path)
    assert listed.stdout == "neighbours:1\n"
    out = tmp_path / "image.tar"
    proc = _run(crowded, "--root", str(root), "save", "--format", "docker", "-o", str(out), "neighbours:1",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = {}
    with tarfile.open(out) as archive:
        for member in archive.getmembers():
            if member.name.endswith(".tar") or member.name.startswith("blobs/"):
                data = archive.extractfile(member)
                if data is None:
                    continue
                try:
                    with tarfile.open(fileobj=io.BytesIO(data.read())) as layer:
                        for m in layer.getmembers():
                            if m.isfile():
                                found[m.name] = layer.extractfile(m).read()
                except tarfile.ReadError:
                    continue  # a JSON blob, not a layer
    assert found == {"srv/hello.txt": b"hello from the context\n"}
